"""Execute a plan: chunks read, gathered (numpy, torch, or the GPU path) and written.

``engine`` drives the pipeline; ``backends`` picks the gather; ``numpy_gather``,
``torch_gather`` and ``cuda_gather`` (with the Triton kernel in ``slicer.kernels``) move
the elements; ``dequant`` dequantizes FP8 / MXFP4 in the gather; ``host_arrays`` types host
memory; ``memory`` samples this process's memory.
"""
