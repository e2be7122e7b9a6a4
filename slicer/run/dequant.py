"""Dequantize in the gather: FP8 block scales and MXFP4 packed experts, as transformers does (torch, CPU).

Used by the engine (a job with a ``Dequant``) and by ``verify`` alike, through a ``read`` function
``(tensor, first element, count) -> 1-D same-width integers``: both read only the teacher span the kept
elements need, and the arithmetic is transformers' own, op for op, so the values are bit-identical to
what ``from_pretrained`` would dequantize:

- FP8 (``Fp8Dequantize._dequantize_one``): ``float32(w) * float32(scale_inv[r // b0, c // b1])``, cast
  once to the output dtype. E8M0 scales as F8_E8M0 convert to float32; as U8 they are
  ``2 ** (byte - 127)``.
- MXFP4 (``_convert_moe_packed_tensors``): element 2j of a group is the low nibble of byte j, 2j+1 the
  high one, looked up in the E2M1 table in the output dtype, then ``torch.ldexp`` by ``byte - 127`` of
  its group's scale; the logical tensor is [E, G*32, R] (the last two dims swapped).

Temporaries are a few times the selected elements (float32 values and scales): the engine sizes its
dequantizing chunks by ``BYTES_PER_ELEMENT``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..plan.quantized import MX_BYTES, MX_GROUP, Dequant
from ..io.format import DTYPES, TensorInfo

Read = Callable[[TensorInfo, int, int], torch.Tensor]
BYTES_PER_ELEMENT = 16  # temporaries per selected element, at most (float32 values and scales, indices)

# The E2M1 values of the 16 nibbles (transformers' FP4_VALUES).
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def values(read: Read, dq: Dequant, source: TensorInfo, index: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``dequantized(source)[ix_(*index)]`` in ``dtype``; ``index``: the teacher indices of every dimension
    (int64), in the logical tensor's dimensions (for MXFP4, [experts, inputs, outputs])."""
    if dq.format == "fp8":
        return fp8(read, source, dq.scale, dq.block, index, dtype)
    return mxfp4(read, dq.packed, dq.scale, index, dtype)


def fp8(read: Read, weight: TensorInfo, scale: TensorInfo, block: tuple[int, int] | None,
        index: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    q = select(read, weight, weight.shape, index).view(DTYPES[weight.dtype].torch_dtype)
    if math.prod(scale.shape) == 1:
        s = _as_float32(read(scale, 0, 1), scale.dtype).reshape(())
    elif block is None:  # per-tensor scales of a packed tensor: [*lead, 1, 1]
        lead = [*index[:-2], torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)]
        s = _as_float32(select(read, scale, scale.shape, lead), scale.dtype)
    else:
        rank = len(index)
        blocks = [*index[:-2], index[rank - 2] // block[0], index[rank - 1] // block[1]]
        s = _as_float32(select(read, scale, scale.shape, blocks), scale.dtype)
    out = q.to(torch.float32).mul_(s)
    return out if dtype == torch.float32 else out.to(dtype)


def mxfp4(read: Read, blocks: TensorInfo, scales: TensorInfo, index: Sequence[torch.Tensor],
          dtype: torch.dtype) -> torch.Tensor:
    e, c, r = index  # logical [experts, G*32 inputs, R outputs] = stored [experts, R, G*32] transposed
    experts, rows, groups, _ = blocks.shape
    packed = select(read, blocks, (experts, rows, groups * MX_BYTES), [e, r, c // 2])
    high = (c % 2 == 1).view(1, 1, -1)
    nibbles = torch.where(high, packed >> 4, packed & 0x0F).to(torch.int64)
    exps = select(read, scales, (experts, rows, groups), [e, r, c // MX_GROUP]).to(torch.int32) - 127
    lut = torch.tensor(FP4_VALUES, dtype=dtype)
    out = lut[nibbles]
    torch.ldexp(out, exps, out=out)
    return out.transpose(1, 2)


def select(read: Read, info: TensorInfo, shape: Sequence[int], index: Sequence[torch.Tensor]) -> torch.Tensor:
    """``stored[ix_(*index)]`` as same-width integers, ``info`` viewed as ``shape``; reads one span: the
    leading single indices fixed, the first other dimension from its smallest to its largest index, the
    rest whole."""
    rank = len(shape)
    strides = [math.prod(shape[d + 1:]) for d in range(rank)]
    k = 0
    while k < rank - 1 and len(index[k]) == 1:
        k += 1
    base = sum(int(index[d][0]) * strides[d] for d in range(k))
    lo, hi = int(index[k].min()), int(index[k].max())
    out = read(info, base + lo * strides[k], (hi - lo + 1) * strides[k]).view(hi - lo + 1, *shape[k + 1:])
    for d in range(k, rank):  # whole dimensions stay views: only real selections copy
        ix = index[d] - lo if d == k else index[d]
        if len(ix) != out.shape[d - k] or not torch.equal(ix, torch.arange(len(ix))):
            out = out.index_select(d - k, ix)
    return out.reshape([len(ix) for ix in index])


def _as_float32(bits: torch.Tensor, dtype: str) -> torch.Tensor:
    if dtype == "U8":  # E8M0 exponents stored as bytes (transformers: 2 ** (byte - 127))
        return (bits.view(torch.uint8).to(torch.float32) - 127.0).exp2()
    return bits.view(DTYPES[dtype].torch_dtype).to(torch.float32)
