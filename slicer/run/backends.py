"""Pick where and how chunks are gathered: numpy or torch on the CPU, or the GPU path.

Nothing here imports torch or triton at module load. The default CPU backend (numpy)
never imports torch unless a chunk casts; ``--device auto`` asks torch about CUDA only
where the machine shows a GPU driver, so a CPU-only run pays no torch import (a
second or more on small machines, a large share of shrinking a 1-8B model). The
kernel module is imported only when the triton backend is chosen.
"""
from __future__ import annotations

import glob
import importlib.util
import os
from dataclasses import dataclass

from .engine import Gather
from ..errors import SlicerError

DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "numpy", "torch", "triton")
# Device nodes of the GPU drivers torch.cuda can use (NVIDIA; ROCm; WSL's GPU bridge).
_GPU_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")


@dataclass(frozen=True)
class Backend:
    name: str  # "numpy", "torch" or "triton"
    device: str  # "cpu" or "cuda"
    gather: Gather
    arrays: str = "torch"  # how the engine types host memory for `gather` (host_arrays.py)


def gather_torch(src, index, out):
    """slicer.run.torch_gather.gather_torch, imported on first use (tests replace this name)."""
    from .torch_gather import gather_torch as gather

    return gather(src, index, out)


def gather_numpy(src, index, out):
    """The numpy backend: bits through numpy; a chunk that casts (torch tensors over the
    same bytes, see host_arrays.py) through torch, exactly as the torch backend does."""
    import numpy as np

    if isinstance(src, np.ndarray):
        from .numpy_gather import gather_numpy as gather

        return gather(src, index, out)
    import torch

    return gather_torch(src, [ix if isinstance(ix, range) else torch.from_numpy(ix) for ix in index], out)


def _triton_gather() -> Gather:
    try:
        from ..kernels.gather import can_fuse_cast, gather
    except ImportError as e:
        raise SlicerError(f"--backend triton needs triton: pip install 'weight-slicer[triton]' ({e})") from e

    import torch

    def gather_any_cast(src, index, out):
        if src.dim() == 0:  # the kernel wants rank >= 1: a scalar is a 1-element vector
            gather_any_cast(src.reshape(1), [range(0, 1)], out.view(1))
            return out
        if can_fuse_cast(src.dtype, out.dtype):
            return gather(src, index, out)
        # A cast the kernel does not fuse (e.g. fp64 -> bf16): gather the bits, cast after.
        moved = gather(src, index, torch.empty(out.shape, dtype=src.dtype, device=out.device))
        return out.copy_(moved)

    return gather_any_cast


def choose(device: str = "auto", backend: str = "auto") -> Backend:
    if device not in DEVICES:
        raise SlicerError(f"unknown device {device!r} (choose from {', '.join(DEVICES)})")
    if backend not in BACKENDS:
        raise SlicerError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if device != "cpu" and backend != "numpy":
        has_cuda = _has_cuda(ask_torch=device == "cuda")
        if device == "cuda" and not has_cuda:
            raise SlicerError("--device cuda asked, but torch sees no CUDA device (use --device cpu or auto)")
        if device == "auto":
            device = "cuda" if has_cuda else "cpu"
    elif backend == "numpy" and device == "cuda":
        raise SlicerError("--backend numpy gathers on the CPU; use --device cpu (or auto), or --backend torch/triton")
    device = "cpu" if device == "auto" else device
    if backend == "auto":
        backend = ("triton" if _has_triton() else "torch") if device == "cuda" else "numpy"
    if device == "cpu":
        if backend == "numpy":
            return Backend("numpy", "cpu", gather_numpy, arrays="numpy")
        if backend == "torch":
            return Backend("torch", "cpu", gather_torch)
        # On the CPU the kernel runs in Triton's interpreter; it must be on before the
        # kernel module is imported. Bit-exact, slow: meant for tests and checks.
        os.environ.setdefault("TRITON_INTERPRET", "1")
        kernel = _triton_gather()

        def interpreted(src, index, out):
            # The interpreter writes every argument's storage back after a launch, so
            # it must not see the read-only teacher map: give it a private copy.
            return kernel(src.clone(), index, out)

        return Backend("triton", "cpu", interpreted)
    from .cuda_gather import make_cuda_gather

    kernel = _triton_gather() if backend == "triton" else gather_torch
    return Backend(backend, "cuda", make_cuda_gather(kernel))


def _has_cuda(ask_torch: bool) -> bool:
    """Whether torch can use a GPU. Without a GPU driver's device node there is none, and
    torch is not imported to find that out; otherwise (or when asked) torch decides."""
    if not ask_torch and not any(glob.glob(pattern) for pattern in _GPU_NODES):
        return False
    import torch

    return torch.cuda.is_available()


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None
