"""How the engine types host memory for a backend's gather: numpy or torch, same bytes.

Host memory (teacher maps, the output pool) is always numpy ``uint8`` arrays; a
backend sees it typed its way. ``"numpy"`` (the default CPU backend) sees same-width
unsigned integers and never imports torch, except for a chunk that casts (numpy has
no bfloat16 or float8), which it sees as torch tensors over the same bytes and
gathers with torch. ``"torch"`` (the torch and Triton backends) always sees torch
tensors: same-width signed integers, or the real dtypes when casting.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import SlicerError
from .numpy_gather import BITS
from ..io.format import DTYPES

ARRAYS = ("numpy", "torch")


class HostArrays:
    def __init__(self, kind: str):
        if kind not in ARRAYS:
            raise ValueError(f"unknown host array kind {kind!r}")
        self.kind = kind

    def typed(self, raw: np.ndarray, dtype: str, cast: bool):
        """``raw`` (uint8) as elements of ``dtype``: its bits, or its values when ``cast``."""
        if self.kind == "numpy" and not cast:
            return raw.view(BITS[DTYPES[dtype].itemsize])
        return torch_view(raw, dtype, cast)

    def index(self, indices):
        """An explicit index set, as the gather wants it."""
        if self.kind == "numpy":
            return np.asarray(indices, dtype=np.intp)
        import torch

        return torch.tensor(indices, dtype=torch.int64)


def torch_view(raw, dtype: str, cast: bool = True):
    """A torch tensor over the bytes of ``raw`` (a uint8 numpy array or torch tensor):
    ``dtype``'s values, or its bits."""
    import torch

    from ..io.format import BITS_DTYPE

    dt = torch_dtype(dtype) if cast else BITS_DTYPE[DTYPES[dtype].itemsize]
    with warnings.catch_warnings():  # a teacher map is read-only: torch warns, we only read it
        warnings.simplefilter("ignore", UserWarning)
        return (torch.from_numpy(raw) if isinstance(raw, np.ndarray) else raw).view(dt)


def torch_dtype(name: str):
    """The torch dtype of a safetensors dtype name (imports torch)."""
    dt = DTYPES[name].torch_dtype
    if dt is None:
        raise SlicerError(f"this torch build has no {name} type, so it cannot be cast")
    return dt
