"""The GPU path for one chunk: copy the kept rows up, gather on the device, copy back.

Only the rows that dimension 0 keeps cross the bus: they are gathered on the host
into a pinned staging buffer (a strided or indexed copy of whole rows), copied to
the device, and the device kernel selects the other dimensions (and casts, if
asked) into a device buffer that is copied back into the caller's output.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .engine import Gather
from .errors import SlicerError
from .safetensors_format import BITS_DTYPE


def make_cuda_gather(kernel: Gather, device: str = "cuda", *, pin: bool = True) -> Gather:
    """``pin=False`` and ``device="cpu"`` run the same staging logic without a GPU (tests)."""
    staging: dict[str, torch.Tensor] = {}

    def pinned(name: str, nbytes: int) -> torch.Tensor:
        buf = staging.get(name)
        if buf is None or buf.numel() < nbytes:
            buf = staging[name] = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
        return buf[:nbytes]

    def gather(src: torch.Tensor, index: Sequence, out: torch.Tensor) -> torch.Tensor:
        rows = index[0] if index else None
        kept = src.shape if rows is None else (len(rows), *src.shape[1:])
        up = pinned("up", math.prod(kept) * src.element_size()).view(src.dtype).view(kept)
        if rows is None:
            up.copy_(src)
        elif isinstance(rows, range):
            up.copy_(src[rows.start:rows.stop:rows.step])
        else:  # gathered straight into pinned memory, as bits (index_select knows no fp8)
            bits = BITS_DTYPE[src.element_size()]
            torch.index_select(src.view(bits), 0, rows, out=up.view(bits))
        try:
            dev_src = up.to(device, non_blocking=True)
            rest = [range(0, len(rows), 1)] if rows is not None else []
            rest += [ix if isinstance(ix, range) else ix.to(device, non_blocking=True) for ix in index[1:]]
            if out.is_cuda:  # the streaming API: the result stays on the device
                kernel(dev_src, rest, out)
                torch.cuda.current_stream().synchronize()  # `up` is free again after this
                return out
            dev_out = torch.empty(out.shape, dtype=out.dtype, device=device)
            kernel(dev_src, rest, dev_out)
            if out.is_pinned():  # the engine's pool: copy straight into it
                out.copy_(dev_out)  # synchronizes: `up` is free again after this
                return out
            down = pinned("down", out.numel() * out.element_size()).view(out.dtype).view(out.shape)
            down.copy_(dev_out)
        except torch.cuda.OutOfMemoryError as e:
            raise SlicerError("CUDA out of memory; lower the chunk size (--chunk-mb) or use --device cpu") from e
        out.copy_(down)
        return out

    return gather
