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


def _triton_gather():
    try:
        from .kernels.gather import gather
    except ImportError as e:
        raise SlicerError(f"--backend triton needs triton: pip install 'weight-slicer[triton]' ({e})") from e
    return gather


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
        return Backend("triton", "cpu", _triton_gather())
    from .cuda_gather import make_cuda_gather

    kernel = _triton_gather() if backend == "triton" else gather_torch
    return Backend(backend, "cuda", make_cuda_gather(kernel))


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None
