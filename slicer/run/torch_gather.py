"""Gather one chunk on the CPU with torch: the fallback backend and the reference path.

``index`` holds, per dimension, a ``range`` (a strided view: no gather needed) or an
int64 tensor (a real gather). Elements move as same-width integers; when ``out`` has
another dtype, one final copy casts.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from ..io.format import BITS_DTYPE

Index = range | torch.Tensor

# Halving the last dimension (uniform selection of s = t/2) is the most common case.
# A strided copy of every other element runs far below memory speed; reading each
# pair of elements as one integer of twice the width and keeping its low half (on a
# little-endian machine, the even element) is a plain contiguous narrowing copy.
_PAIR = {torch.uint8: torch.int16, torch.int16: torch.int32, torch.int32: torch.int64}
_LITTLE_ENDIAN = sys.byteorder == "little"


def gather_torch(src: torch.Tensor, index: Sequence[Index], out: torch.Tensor) -> torch.Tensor:
    """``out[...] = src[ix_(*index)]`` (cast to ``out.dtype``)."""
    if src.dtype != out.dtype:  # move the bits, then cast once
        moved = torch.empty(out.shape, dtype=src.dtype, device=out.device)
        gather_torch(src, index, moved)
        return out.copy_(moved)
    # Same-width integers: some kernels (gather on fp16) would touch NaN payloads.
    _gather_bits(src.view(BITS_DTYPE[src.element_size()]), index, out.view(BITS_DTYPE[out.element_size()]))
    return out


def _gather_bits(src: torch.Tensor, index: Sequence[Index], out: torch.Tensor) -> None:
    view = _paired_view(src, index, out) if index else None
    if view is None:
        view = src[tuple(_slice(ix) for ix in index)]
    gathered = [(d, ix) for d, ix in enumerate(index) if not isinstance(ix, range)]
    if not gathered:
        out.copy_(view)  # narrows the pairs, if paired
        return
    # Gather the most selective dimension first: later steps then touch fewer bytes.
    gathered.sort(key=lambda d_ix: len(d_ix[1]) / max(view.shape[d_ix[0]], 1))
    for d, ix in gathered[:-1]:
        view = _select(view, d, ix)
    d, ix = gathered[-1]
    if out.dtype == view.dtype:
        _select(view, d, ix, out=out)
    else:  # read as pairs: narrow at the end
        out.copy_(_select(view, d, ix))


def _select(view: torch.Tensor, d: int, ix: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``view.index_select(d, ix)``, fast on strided views too.

    Rows (d == 0) are whole blocks: index_select copies them. For an inner dimension
    index_select first makes a non-contiguous view contiguous (a temporary the size
    of the view, and slow); gather with the index broadcast over the other dims
    reads the view in place.
    """
    if d == 0:
        return torch.index_select(view, 0, ix, out=out) if out is not None else view.index_select(0, ix)
    shape = list(view.shape)
    shape[d] = len(ix)
    index = ix.view([1] * d + [-1] + [1] * (view.dim() - d - 1)).expand(shape)
    return torch.gather(view, d, index, out=out) if out is not None else torch.gather(view, d, index)


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
