"""Gather one chunk on the CPU with torch: the fallback backend and the reference path.

``index`` holds, per dimension, a ``range`` (a strided view: no gather needed) or an
int64 tensor (a real gather). Elements move as same-width integers unless ``out`` has
another dtype, in which case the final copy casts.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

Index = range | torch.Tensor

# Halving the last dimension (uniform selection of s = t/2) is the most common case.
# A strided copy of every other element runs far below memory speed; reading each
# pair of elements as one integer of twice the width and keeping its low half (on a
# little-endian machine, the even element) is a plain contiguous narrowing copy.
_PAIR = {torch.uint8: torch.int16, torch.int16: torch.int32, torch.int32: torch.int64}
_LITTLE_ENDIAN = sys.byteorder == "little"


def gather_torch(src: torch.Tensor, index: Sequence[Index], out: torch.Tensor) -> torch.Tensor:
    """``out[...] = src[ix_(*index)]`` (cast to ``out.dtype``)."""
    view = _paired_view(src, index, out) if index else None
    if view is None:
        view = src[tuple(_slice(ix) for ix in index)]
    gathered = [(d, ix) for d, ix in enumerate(index) if not isinstance(ix, range)]
    if not gathered:
        out.copy_(view)  # narrows the pairs, if paired
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


def _slice(ix: Index) -> slice:
    return slice(ix.start, ix.stop, ix.step) if isinstance(ix, range) else slice(None)


def _paired_view(src: torch.Tensor, index: Sequence[Index], out: torch.Tensor) -> torch.Tensor | None:
    """``src`` sliced as ``index`` says, its last dimension (step 2) read as pairs."""
    last = index[-1]
    wide = _PAIR.get(src.dtype)
    if not (_LITTLE_ENDIAN and wide is not None and out.dtype == src.dtype and isinstance(last, range)
            and last.step == 2 and len(last) > 0 and src.stride(-1) == 1):
        return None
    lead = src[tuple(_slice(ix) for ix in index[:-1])]
    pairs = lead[..., last.start:last.start + 2 * len(last)]
    if pairs.shape[-1] != 2 * len(last):
        return None  # the last kept element has no partner inside the tensor
    try:
        return pairs.view(wide)  # needs an even storage offset and even strides
    except RuntimeError:
        return None
