"""Gather one chunk on the CPU with torch: the fallback backend and the reference path.

``index`` holds, per dimension, a ``range`` (a strided view: no gather needed) or an
int64 tensor (a real gather). Elements move as same-width integers unless ``out`` has
another dtype, in which case the final copy casts.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

Index = range | torch.Tensor


def gather_torch(src: torch.Tensor, index: Sequence[Index], out: torch.Tensor) -> torch.Tensor:
    """``out[...] = src[ix_(*index)]`` (cast to ``out.dtype``)."""
    view = src[tuple(slice(ix.start, ix.stop, ix.step) if isinstance(ix, range) else slice(None) for ix in index)]
    gathered = [(d, ix) for d, ix in enumerate(index) if not isinstance(ix, range)]
    if not gathered:
        out.copy_(view)
        return out
    # Gather the most selective dimension first: later steps then touch fewer bytes.
    gathered.sort(key=lambda d_ix: len(d_ix[1]) / max(view.shape[d_ix[0]], 1))
    for d, ix in gathered[:-1]:
        view = view.index_select(d, ix)
    d, ix = gathered[-1]
    if out.dtype == view.dtype:
        torch.index_select(view, d, ix, out=out)
    else:
        out.copy_(view.index_select(d, ix))
    return out
