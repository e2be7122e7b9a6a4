"""Gather one chunk on the CPU with numpy: the default CPU backend, no torch needed.

The same contract as ``slicer.run.torch_gather.gather_torch`` for elements moved as bits:
``index`` holds, per dimension, a ``range`` (a strided view: no gather needed) or an
integer array (a real gather); ``src`` and ``out`` are same-width unsigned integer
arrays of one width, so no value is ever interpreted and NaN payloads survive. Casts
are not done here (numpy has no bfloat16 or float8): the engine hands a chunk that
needs one to torch.

Why numpy: it moves same-width integers through strided views as fast as torch does
(faster on the narrowing copy below), and importing it costs a tenth of torch's import,
which on a 1-8B model is a large share of the whole run.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

Index = range | np.ndarray

# Halving the last dimension (uniform selection of s = t/2) is the most common case. A
# strided copy of every other element is slow; reading each pair of elements as one
# unsigned integer of twice the width and keeping its low half (on a little-endian
# machine, the even element) is a contiguous narrowing copy. Unsigned, so the narrowing
# is reduction modulo 2**bits, defined for every value.
_PAIR = {np.dtype(np.uint8): np.uint16, np.dtype(np.uint16): np.uint32, np.dtype(np.uint32): np.uint64}
_LITTLE_ENDIAN = sys.byteorder == "little"
BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def gather_numpy(src: np.ndarray, index: Sequence[Index], out: np.ndarray) -> np.ndarray:
    """``out[...] = src[ix_(*index)]`` for same-width integer arrays."""
    if src.dtype.itemsize != out.dtype.itemsize:
        raise ValueError(f"numpy gather moves bits: {src.dtype} -> {out.dtype} is a cast")
    src, out = src.view(BITS[src.dtype.itemsize]), out.view(BITS[out.dtype.itemsize])
    view = _paired_view(src, index) if index else None
    if view is None:
        view = src[tuple(_slice(ix) for ix in index)]
    gathered = [(d, ix) for d, ix in enumerate(index) if not isinstance(ix, range)]
    if not gathered:
        np.copyto(out, view, casting="unsafe")  # narrows the pairs, if paired
        return out
    # Gather the most selective dimension first: later steps then touch fewer bytes.
    gathered.sort(key=lambda d_ix: len(d_ix[1]) / max(view.shape[d_ix[0]], 1))
    for d, ix in gathered[:-1]:
        view = _take(view, d, ix)
    d, ix = gathered[-1]
    if view.dtype == out.dtype:
        _take(view, d, ix, out)
    else:  # read as pairs: narrow at the end
        np.copyto(out, _take(view, d, ix), casting="unsafe")
    return out


def _take(view: np.ndarray, d: int, ix: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``view`` indexed by ``ix`` along ``d``, block copies where the blocks are whole.

    ``mode="clip"``: the index sets are checked when planned, and numpy's default mode
    ("raise") first gathers into a temporary so that a bad index leaves ``out`` alone:
    twice the copying. (A strided ``view`` is made contiguous first, by numpy: a
    temporary of at most one chunk's span; numpy's advanced indexing would walk the
    strides instead, at a twentieth of the speed.)
    """
    return np.take(view, ix, axis=d, out=out, mode="clip")


def _slice(ix: Index) -> slice:
    return slice(ix.start, ix.stop, ix.step) if isinstance(ix, range) else slice(None)


def _paired_view(src: np.ndarray, index: Sequence[Index]) -> np.ndarray | None:
    """``src`` sliced as ``index`` says, its last dimension (step 2) read as pairs."""
    last = index[-1]
    wide = _PAIR.get(src.dtype)
    if not (_LITTLE_ENDIAN and wide is not None and isinstance(last, range) and last.step == 2 and len(last) > 0
            and src.strides[-1] == src.itemsize):
        return None
    lead = src[tuple(_slice(ix) for ix in index[:-1])]
    pairs = lead[..., last.start:last.start + 2 * len(last)]
    if pairs.shape[-1] != 2 * len(last):
        return None  # the last kept element has no partner inside the tensor
    try:
        return pairs.view(wide)  # needs the last dimension contiguous
    except ValueError:
        return None
