"""Pick where and how chunks are gathered: torch on the CPU, or the Triton kernel.

Nothing here imports triton at module load: the kernel module is imported only
when the triton backend is chosen, so everything works with triton absent.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

from .engine import Gather
from .errors import SlicerError
from .gather import gather_torch

DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "torch", "triton")


@dataclass(frozen=True)
class Backend:
    name: str  # "torch" or "triton"
    device: str  # "cpu" or "cuda"
    gather: Gather


def _triton_gather() -> Gather:
    try:
        from .kernels.gather import can_fuse_cast, gather
    except ImportError as e:
        raise SlicerError(f"--backend triton needs triton: pip install 'weight-slicer[triton]' ({e})") from e

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
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise SlicerError("--device cuda asked, but torch sees no CUDA device (use --device cpu or auto)")
    if device == "auto":
        device = "cuda" if has_cuda else "cpu"
    if backend == "auto":
        backend = "triton" if device == "cuda" and _has_triton() else "torch"
    if device == "cpu":
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


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None
