"""Triton strided gather: ``out[...] = src[ix_(index[0], ..., index[n-1])]``, optionally cast.

The one place in the project that imports triton. ``gather`` selects, per dimension,
either an affine set of coordinates (a python ``range``: folded into a strided view of
``src``, no memory traffic for the index) or an arbitrary one (a 1-D int64 tensor:
loaded by the kernel), and writes the outer product of those sets into a contiguous
``out``. ``src`` may have any strides (a non-contiguous view over an mmap'd block).

Elements travel as same-width integers, so every dtype (bool, fp8, bf16, ...) is moved
bit for bit, also under the CPU interpreter (``TRITON_INTERPRET=1``), which has no
bf16 arithmetic. A fused cast (bf16 / fp16 / fp32 out; those and fp8 in) is done on
the bits as well, with the same round-to-nearest-even as torch's ``.to()``: bit-equal
to torch for every number; a NaN stays a NaN of the same sign, but its payload bits may
differ from torch's (torch's own CPU and CUDA paths disagree there).

Kernel layout: the output is seen as a (rows, cols) matrix, rows = output dims 0..2
flattened, cols = the last output dim; each program does one BLOCK_R x BLOCK_C tile,
so the column offsets (one vector per tile) are shared by every row, and the row
offsets (one vector per tile) by every column. Ranks above 4 are reduced by dropping
size-1 range dims and merging adjacent range dims that are contiguous in ``src``.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

try:  # the engine's torch path must work without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None

__all__ = ["is_available", "gather"]

_MAX_RANK = 4

# Same-width integer views: the kernel moves bits, never values, unless a cast is asked.
_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

# Fused casts: dtype -> constexpr code of the kernel (0 means "no cast").
_CAST_IN = {
    torch.float32: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.float8_e4m3fn: 4,
    torch.float8_e5m2: 5,
}
_CAST_OUT = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3}

# Tile sizes. On a GPU a tile of ~4K elements keeps the int64 addresses in registers
# (4 warps -> 32 elements per thread) and BLOCK_C <= 1024 keeps rows coalesced. The
# interpreter pays per program, not per element: few big tiles.
_GPU_MAX_BLOCK_C, _GPU_TILE, _GPU_NUM_WARPS = 1024, 4096, 4
_CPU_MAX_BLOCK_C, _CPU_TILE = 1 << 14, 1 << 16

if triton is not None:

    @triton.jit
    def _quiet(b):
        """Set the quiet bit of float32 NaN bits, keeping sign and payload, as torch's
        float16 conversions (and GPUs) do; numpy, hence the interpreter, does not."""
        return tl.where((b & 0x7FFFFFFF) > 0x7F800000, b | 0x400000, b)

    @triton.jit
    def _to_f32_bits(x, KIND: tl.constexpr):
        """Raw bits of a KIND element (int8/16/32 tensor) -> float32 bits (uint32). Exact."""
        if KIND == 1:  # float32
            b = x.to(tl.uint32, bitcast=True)
        elif KIND == 2:  # float16: every value is a float32 value
            b = _quiet(x.to(tl.float16, bitcast=True).to(tl.float32).to(tl.uint32, bitcast=True))
        elif KIND == 3:  # bfloat16: the high half of a float32
            b = x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16
        elif KIND == 4:  # float8_e4m3fn: bias 7, no inf, S.1111.111 is NaN
            u = x.to(tl.uint8, bitcast=True).to(tl.uint32)
            sign = (u & 0x80) << 24
            e = (u >> 3) & 0xF
            m = u & 0x7
            normal = sign | ((e + 120) << 23) | (m << 20)
            # subnormal: m * 2^-9, exact in float32 (m < 8)
            sub = (m.to(tl.float32) * 0.001953125).to(tl.uint32, bitcast=True) | sign
            b = tl.where(e == 0, sub, normal)
            b = tl.where((u & 0x7F) == 0x7F, sign | 0x7FF00000, b)  # NaN bits as torch's
        else:  # float8_e5m2: the high byte of a float16
            h = x.to(tl.uint8, bitcast=True).to(tl.uint16) << 8
            b = _quiet(h.to(tl.float16, bitcast=True).to(tl.float32).to(tl.uint32, bitcast=True))
        return b

    @triton.jit
    def _from_f32_bits(b, KIND: tl.constexpr):
        """float32 bits (uint32) -> raw bits of a KIND element, round to nearest even."""
        if KIND == 1:  # float32
            y = b.to(tl.int32, bitcast=True)
        elif KIND == 2:  # float16: hardware / numpy rounding is RNE
            y = _quiet(b).to(tl.float32, bitcast=True).to(tl.float16).to(tl.int16, bitcast=True)
        else:  # bfloat16, as c10::round_to_nearest_even: NaN -> 0x7FC0
            r = (b + (((b >> 16) & 1) + 0x7FFF)) >> 16
            r = tl.where((b & 0x7FFFFFFF) > 0x7F800000, 0x7FC0, r)
            y = r.to(tl.uint16).to(tl.int16, bitcast=True)
        return y

    @triton.jit(do_not_specialize=["gather0", "gather1", "gather2"])
    def _gather_kernel(
        src_ptr,  # integer view of the (sliced) source, any strides
        out_ptr,  # integer view of the contiguous output, shape (n0, n1, n2, n3)
        idx0_ptr,  # int64 index vectors; a dummy where the dim is not gathered
        idx1_ptr,
        idx2_ptr,
        idx3_ptr,
        n1,
        n2,
        n3,
        n_rows,  # n0 * n1 * n2
        n_col_blocks,  # cdiv(n3, BLOCK_C): program p does row block p // n_col_blocks
        stride0,  # source strides, in elements
        stride1,
        stride2,
        stride3,
        gather0,  # 1: source coordinate = idx{d}[i], 0: = i
        gather1,
        gather2,
        GATHER3: tl.constexpr,  # the last dim: compile-time, so a contiguous row stays provably contiguous
        ROW_ALIGN: tl.constexpr,  # every row offset is a multiple of this (lets the GPU vectorize rows)
        IN_KIND: tl.constexpr,  # 0: no cast (bits copied)
        OUT_KIND: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)
        rows = (pid // n_col_blocks) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)  # [BLOCK_R]
        cols = (pid % n_col_blocks) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)  # [BLOCK_C]
        row_mask = rows < n_rows
        col_mask = cols < n3

        # row -> (i0, i1, i2) -> source coordinates -> one int64 offset per row
        i2 = rows % n2
        i1 = (rows // n2) % n1
        i0 = rows // n2 // n1
        # a masked-off load reads nothing: range dims (gather{d} == 0) never touch idx{d}_ptr
        c0 = tl.where(gather0 != 0, tl.load(idx0_ptr + i0, mask=rows < n_rows * gather0, other=0), i0)
        c1 = tl.where(gather1 != 0, tl.load(idx1_ptr + i1, mask=rows < n_rows * gather1, other=0), i1)
        c2 = tl.where(gather2 != 0, tl.load(idx2_ptr + i2, mask=rows < n_rows * gather2, other=0), i2)
        row_off = tl.multiple_of(c0 * stride0 + c1 * stride1 + c2 * stride2, ROW_ALIGN)

        if GATHER3:
            c3 = tl.load(idx3_ptr + cols, mask=col_mask, other=0)
        else:
            c3 = cols
        col_off = c3 * stride3

        mask = row_mask[:, None] & col_mask[None, :]
        x = tl.load(src_ptr + (row_off[:, None] + col_off[None, :]), mask=mask)
        if IN_KIND != 0:
            x = _from_f32_bits(_to_f32_bits(x, IN_KIND), OUT_KIND)
        tl.store(out_ptr + (rows[:, None] * n3 + cols[None, :]), x, mask=mask)

    _INTERPRET = type(_gather_kernel).__name__ == "InterpretedFunction"
else:  # pragma: no cover
    _INTERPRET = False

_DUMMY_INDEX: dict[torch.device, torch.Tensor] = {}


def is_available(device: torch.device | str | None = None) -> bool:
    """Whether ``gather`` can run: triton importable and something to run it on.

    With ``device`` given: a CUDA device needs a GPU, a CPU device needs the Triton
    interpreter (``TRITON_INTERPRET=1`` set before this module was imported; slow,
    for tests). Without it: a GPU is present or the interpreter is on.
    """
    if triton is None:
        return False
    if device is None:
        return torch.cuda.is_available() or _INTERPRET
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "cpu":
        return _INTERPRET
    return False


def can_fuse_cast(src_dtype: torch.dtype, out_dtype: torch.dtype) -> bool:
    """Whether ``gather`` can cast from ``src_dtype`` to ``out_dtype`` in the kernel."""
    return src_dtype == out_dtype or (src_dtype in _CAST_IN and out_dtype in _CAST_OUT)


def gather(src: torch.Tensor, index: Sequence[torch.Tensor | range], out: torch.Tensor) -> torch.Tensor:
    """Write ``src[ix_(index[0], ..., index[n-1])]`` into ``out`` (cast to ``out.dtype``) and return ``out``.

    src: rank 1..n, any strides, on CUDA (or CPU under the Triton interpreter).
    index[d]: a ``range`` (start >= 0, step >= 1: a strided view, the fast path) or a
        1-D int64 tensor on src.device (gathered); ``len(index[d]) == out.shape[d]``.
        Index tensors on CUDA are not bounds-checked (that would cost a device sync).
    out: contiguous, on src.device. Same dtype as src: bits are copied unchanged (any
        dtype of itemsize 1/2/4/8). Otherwise a fused cast to bf16/fp16/fp32 from
        bf16/fp16/fp32/float8_e4m3fn/float8_e5m2, rounding like torch's ``.to()``.
    """
    in_kind, out_kind = _check(src, index, out)
    if out.numel() == 0:
        return out

    # Integer views: the kernel sees bits only (same strides, same storage offset).
    src_i = src.view(_INT_VIEW[src.element_size()])
    out_i = out.view(_INT_VIEW[out.element_size()])

    # Ranges become a strided view: start folds into the data pointer, step into the stride.
    view = src_i[tuple(_as_slice(ix) for ix in index)]
    dims = _reduce_dims(
        [(len(ix), view.stride(d), None if isinstance(ix, range) else ix) for d, ix in enumerate(index)]
    )
    if len(dims) > _MAX_RANK:
        raise ValueError(
            f"gather supports {_MAX_RANK} dimensions after merging contiguous range dims, got {len(dims)} "
            f"(src shape {tuple(src.shape)}, strides {src.stride()}); reshape src or split the call"
        )
    dims = [(1, 0, None)] * (_MAX_RANK - len(dims)) + dims
    (n0, s0, x0), (n1, s1, x1), (n2, s2, x2), (n3, s3, x3) = dims
    n_rows = n0 * n1 * n2

    block_r, block_c, num_warps = _tile(n_rows, n3, src.device)
    grid = (triton.cdiv(n_rows, block_r) * triton.cdiv(n3, block_c),)
    dummy = _dummy_index(src.device)
    idx = [dummy if x is None else x for x in (x0, x1, x2, x3)]
    with _device_guard(src.device):
        _gather_kernel[grid](
            view, out_i,
            idx[0], idx[1], idx[2], idx[3],
            n1, n2, n3, n_rows, triton.cdiv(n3, block_c),
            s0, s1, s2, s3,
            int(x0 is not None), int(x1 is not None), int(x2 is not None),
            GATHER3=x3 is not None,
            ROW_ALIGN=_row_align(s0, s1, s2),
            IN_KIND=in_kind, OUT_KIND=out_kind,
            BLOCK_R=block_r, BLOCK_C=block_c,
            num_warps=num_warps,
        )  # fmt: skip
    return out


def _check(src: torch.Tensor, index: Sequence[torch.Tensor | range], out: torch.Tensor) -> tuple[int, int]:
    """Validate everything before any work; return the kernel's (IN_KIND, OUT_KIND)."""
    if triton is None:
        raise RuntimeError("slicer.kernels.gather needs triton: pip install 'weight-slicer[triton]'")
    if not isinstance(src, torch.Tensor) or not isinstance(out, torch.Tensor):
        raise TypeError("gather(src, index, out): src and out must be torch tensors")
    if not is_available(src.device):
        raise RuntimeError(
            f"the Triton gather cannot run on {src.device}: it needs a CUDA tensor, or a CPU tensor with "
            "TRITON_INTERPRET=1 set before slicer.kernels.gather is imported (slow: tests only); "
            "use the torch gather instead"
        )
    if src.layout != torch.strided or out.layout != torch.strided:
        raise ValueError(f"gather: src and out must be dense (strided) tensors, got {src.layout} and {out.layout}")
    n = src.dim()
    if n < 1:
        raise ValueError("gather: src must have at least one dimension")
    if out.device != src.device:
        raise ValueError(f"gather: out is on {out.device} but src is on {src.device}; put both on one device")
    if not out.is_contiguous():
        raise ValueError(f"gather: out must be contiguous (shape {tuple(out.shape)}, strides {out.stride()})")
    if len(index) != n or out.dim() != n:
        raise ValueError(
            f"gather: src has {n} dims but index has {len(index)} entries and out has {out.dim()} dims; "
            "give one index set per src dimension"
        )

    for d, ix in enumerate(index):
        size = src.shape[d]
        if isinstance(ix, range):
            if ix.step < 1 or ix.start < 0:
                raise ValueError(f"gather: index[{d}] = {ix} must have start >= 0 and step >= 1")
            if len(ix) and ix[-1] >= size:
                raise ValueError(f"gather: index[{d}] = {ix} reaches {ix[-1]} but src dim {d} has size {size}")
        elif isinstance(ix, torch.Tensor):
            if ix.dim() != 1 or ix.dtype != torch.int64:
                raise ValueError(
                    f"gather: index[{d}] must be a 1-D int64 tensor, got {ix.dtype} of shape {tuple(ix.shape)}"
                )
            if ix.device != src.device:
                raise ValueError(f"gather: index[{d}] is on {ix.device} but src is on {src.device}")
            if not ix.is_contiguous():
                raise ValueError(f"gather: index[{d}] must be contiguous (call .contiguous())")
            if ix.device.type == "cpu" and ix.numel() and (int(ix.min()) < 0 or int(ix.max()) >= size):
                raise ValueError(
                    f"gather: index[{d}] holds values in [{int(ix.min())}, {int(ix.max())}] "
                    f"but src dim {d} has size {size}"
                )
        else:
            raise TypeError(f"gather: index[{d}] must be a range or a 1-D int64 tensor, got {type(ix).__name__}")
        if len(ix) != out.shape[d]:
            raise ValueError(f"gather: index[{d}] selects {len(ix)} elements but out.shape[{d}] is {out.shape[d]}")

    if src.dtype == out.dtype:
        if src.element_size() not in _INT_VIEW:
            raise ValueError(f"gather: dtype {src.dtype} (itemsize {src.element_size()}) is not supported")
        return 0, 0
    if src.dtype not in _CAST_IN or out.dtype not in _CAST_OUT:
        raise ValueError(
            f"gather: no fused cast from {src.dtype} to {out.dtype}; supported: "
            "{bfloat16, float16, float32, float8_e4m3fn, float8_e5m2} -> {bfloat16, float16, float32}"
        )
    return _CAST_IN[src.dtype], _CAST_OUT[out.dtype]


def _as_slice(ix: torch.Tensor | range) -> slice:
    if not isinstance(ix, range):
        return slice(None)
    return slice(ix.start, ix.start + (len(ix) - 1) * ix.step + 1, ix.step)


def _reduce_dims(
    dims: list[tuple[int, int, torch.Tensor | None]],
) -> list[tuple[int, int, torch.Tensor | None]]:
    """Drop size-1 range dims, merge adjacent range dims that are contiguous with each other.

    dims: (size, source stride, index tensor or None for a range already applied as a view).
    Merging (a, s*b) and (b, s) gives (a*b, s): one offset instead of two, whatever the rank.
    """
    reduced: list[tuple[int, int, torch.Tensor | None]] = []
    for size, stride, idx in dims:
        if idx is None and size == 1:
            continue  # its one coordinate is already in the view's data pointer
        if idx is None and reduced and reduced[-1][2] is None and reduced[-1][1] == stride * size:
            reduced[-1] = (reduced[-1][0] * size, stride, None)
            continue
        reduced.append((size, stride, idx))
    return reduced or [(1, 0, None)]


def _tile(n_rows: int, n_cols: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps) for a (n_rows, n_cols) output."""
    if device.type == "cuda" and not _INTERPRET:
        max_c, tile, num_warps = _GPU_MAX_BLOCK_C, _GPU_TILE, _GPU_NUM_WARPS
    else:
        max_c, tile, num_warps = _CPU_MAX_BLOCK_C, _CPU_TILE, 1
    block_c = min(triton.next_power_of_2(n_cols), max_c)
    block_r = min(triton.next_power_of_2(n_rows), max(1, tile // block_c))
    block_c = min(triton.next_power_of_2(n_cols), max(block_c, tile // block_r))  # few rows: wider tiles
    return block_r, block_c, num_warps


def _row_align(*row_strides: int) -> int:
    """The largest power of two (<= 16 elements) dividing every row stride, hence every
    row offset: with the data pointer's own alignment, which Triton detects, it decides
    whether a contiguous row can be loaded with vector instructions."""
    align = 16
    for stride in row_strides:
        while stride % align:
            align //= 2
    return align


def _dummy_index(device: torch.device) -> torch.Tensor:
    """A valid int64 pointer for the index slots of range dims (never read: loads are masked)."""
    dummy = _DUMMY_INDEX.get(device)
    if dummy is None:
        dummy = _DUMMY_INDEX[device] = torch.zeros(1, dtype=torch.int64, device=device)
    return dummy


def _device_guard(device: torch.device):
    """Launch on src's GPU, not the current one (Triton launches on the current device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
