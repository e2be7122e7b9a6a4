"""Corrections for what is cut: after a student is written, refit some of its linear maps so
that, fed the student's own inputs, they reproduce the teacher's outputs (ridge least squares,
layer by layer, streamed). Values change, never which members are kept.

The work is in ``refit`` (it imports torch); ``options`` (the CLI's) does not, so ``slicer
--help`` stays without torch.
"""
