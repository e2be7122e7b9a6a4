"""The Triton gather against an independent torch reference: bits must match exactly.

Without a GPU the kernel runs under the Triton interpreter, which must be switched on
before the module defining the kernel is imported. Sizes are modest: the interpreter
runs every program in Python.
"""

import importlib
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

from slicer.kernels import gather as kg  # noqa: E402

if not torch.cuda.is_available() and not kg.is_available("cpu"):
    # imported earlier in this session without the interpreter: define the kernel again
    kg = importlib.reload(kg)
    if not kg.is_available("cpu"):
        pytest.skip("no GPU and the Triton interpreter is off (TRITON_INTERPRET)", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# numpy (hence the interpreter) warns when a float32 -> float16 cast overflows to inf
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")

_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

ALL_DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.int16,
    torch.float16,
    torch.bfloat16,
    torch.int32,
    torch.float32,
    torch.int64,
    torch.float64,
]

CASTS = [
    (torch.bfloat16, torch.float16),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.bfloat16),
    (torch.float16, torch.float32),
    (torch.float32, torch.bfloat16),
    (torch.float32, torch.float16),
    (torch.float8_e4m3fn, torch.bfloat16),
    (torch.float8_e4m3fn, torch.float32),
    (torch.float8_e4m3fn, torch.float16),
    (torch.float8_e5m2, torch.bfloat16),
    (torch.float8_e5m2, torch.float32),
    (torch.float8_e5m2, torch.float16),
]


# ---------------------------------------------------------------- helpers


def bits(t: torch.Tensor) -> torch.Tensor:
    """Same-width integer view: torch.equal on it compares bits (NaN == NaN, -0 != +0)."""
    return t.view(_INT[t.element_size()])


def random_tensor(shape, dtype, device=DEVICE, seed=0) -> torch.Tensor:
    """Random bit patterns (every float class: normals, subnormals, inf, NaN)."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool().to(device)
    n = 1
    for s in shape:
        n *= s
    itemsize = torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(-128, 128, (n * itemsize,), dtype=torch.int8, generator=g)
    return raw.view(dtype).reshape(shape).to(device)


def as_index_tensor(ix, device=DEVICE) -> torch.Tensor:
    if isinstance(ix, range):
        return torch.arange(ix.start, ix.start + len(ix) * ix.step, ix.step, dtype=torch.int64, device=device)
    return ix


def reference(src: torch.Tensor, index, out_dtype=None) -> torch.Tensor:
    """src[ix_(*index)] with torch advanced indexing (on an integer view: torch cannot
    index every dtype), then torch's own .to() for a cast."""
    n = src.dim()
    idx = [as_index_tensor(ix, src.device).reshape([-1] + [1] * (n - 1 - d)) for d, ix in enumerate(index)]
    picked = bits(src)[tuple(idx)].view(src.dtype)
    return picked if out_dtype is None or out_dtype == src.dtype else picked.to(out_dtype)


def run_gather(src, index, out_dtype=None) -> torch.Tensor:
    out = torch.empty([len(ix) for ix in index], dtype=out_dtype or src.dtype, device=src.device)
    assert kg.gather(src, index, out) is out
    return out


def assert_bits_equal(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert torch.equal(bits(out), bits(ref))


def assert_cast_equal(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Bits equal wherever the value is a number; NaN exactly where torch has NaN (NaN
    payloads are not portable: torch's own CPU paths disagree on float32 -> bfloat16)."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    nan = ref.isnan()
    assert torch.equal(out.isnan(), nan)
    assert torch.equal(bits(out)[~nan], bits(ref)[~nan])


def randperm(n, k, seed=0, device=DEVICE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k].to(device)


# ---------------------------------------------------------------- availability


def test_is_available_where_the_kernel_can_run():
    assert kg.is_available()
    assert kg.is_available(DEVICE)
    if not torch.cuda.is_available():
        assert not kg.is_available("cuda")


# ---------------------------------------------------------------- dtypes (bits moved unchanged)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_every_dtype_is_copied_bit_for_bit(dtype):
    # 1823 x 781: odd sizes; rows by a range, columns by a shuffled tensor
    src = random_tensor((1823, 781), dtype)
    index = [range(5, 1823, 37), randperm(781, 97)]
    assert_bits_equal(run_gather(src, index), reference(src, index))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.uint16, torch.uint32, torch.uint64], ids=str)
def test_other_dtypes_of_supported_width_are_copied(dtype):
    src = random_tensor((37, 29), dtype)
    index = [randperm(37, 11), range(1, 29, 3)]
    assert_bits_equal(run_gather(src, index), reference(src, index))


# ---------------------------------------------------------------- ranks and index kinds


def _index_sets(shape, kinds, seed=0):
    """One index set per dim: 'r' a strided range, 't' a shuffled tensor subset."""
    out = []
    for d, (size, kind) in enumerate(zip(shape, kinds)):
        k = max(1, (size * 2) // 3)
        if kind == "r":
            step = 2 if size > 3 else 1
            out.append(range(size % 2, size, step))
        else:
            out.append(randperm(size, k, seed=seed + d))
    return out


@pytest.mark.parametrize(
    "shape,kinds",
    [
        ((1000,), "r"),
        ((1000,), "t"),
        ((1823, 781), "rr"),
        ((1823, 781), "tt"),
        ((1823, 781), "tr"),
        ((9, 41, 341), "rrr"),
        ((9, 41, 341), "ttt"),
        ((9, 41, 341), "rtr"),
        ((9, 41, 341), "trt"),
        ((5, 7, 11, 67), "rrrr"),
        ((5, 7, 11, 67), "tttt"),
        ((5, 7, 11, 67), "trtr"),
        ((5, 7, 11, 67), "rtrt"),
    ],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v,
)
def test_ranks_1_to_4_with_ranges_and_tensors_mixed(shape, kinds):
    src = random_tensor(shape, torch.bfloat16, seed=len(shape))
    index = _index_sets(shape, kinds)
    assert_bits_equal(run_gather(src, index), reference(src, index))


def test_rank_5_is_reduced_by_merging_contiguous_identity_dims():
    # (2, 3) and (5, 6) are full ranges over contiguous dims: 5 dims -> 3
    src = random_tensor((2, 3, 8, 5, 6), torch.float16)
    index = [range(2), range(3), randperm(8, 5), range(5), range(6)]
    assert_bits_equal(run_gather(src, index), reference(src, index))


def test_rank_6_with_size_one_selections_and_a_consecutive_run():
    # dims 0 and 4 select one element each (dropped); dims 1, 2 merge (a consecutive
    # run over full rows); dims 3 and 5 are gathers: 6 dims -> 3
    src = random_tensor((3, 4, 10, 6, 2, 9), torch.int32)
    index = [range(1, 2), range(1, 3), range(10), randperm(6, 4), range(1, 2), randperm(9, 5)]
    assert_bits_equal(run_gather(src, index), reference(src, index))


def test_rank_5_that_cannot_be_reduced_is_refused():
    src = random_tensor((2, 3, 4, 5, 6), torch.float32)
    index = [torch.arange(s, device=DEVICE) for s in src.shape]
    out = torch.empty(src.shape, dtype=src.dtype, device=DEVICE)
    with pytest.raises(ValueError, match="dimensions"):
        kg.gather(src, index, out)


# ---------------------------------------------------------------- selection sizes


@pytest.mark.parametrize("as_tensor", [False, True], ids=["ranges", "tensors"])
def test_identity_selection_copies_the_whole_tensor(as_tensor):
    src = random_tensor((9, 41, 341), torch.bfloat16)
    index = [range(s) for s in src.shape]
    if as_tensor:
        index = [as_index_tensor(ix) for ix in index]
    assert_bits_equal(run_gather(src, index), src)


@pytest.mark.parametrize("as_tensor", [False, True], ids=["ranges", "tensors"])
def test_single_element_selection(as_tensor):
    src = random_tensor((9, 41, 341), torch.float32)
    index = [range(8, 9), range(40, 41), range(17, 18)]
    if as_tensor:
        index = [as_index_tensor(ix) for ix in index]
    out = run_gather(src, index)
    assert out.shape == (1, 1, 1)
    assert torch.equal(bits(out).flatten(), bits(src[8, 40, 17]).flatten())


def test_strided_ranges_with_large_steps_and_offsets():
    src = random_tensor((1823, 781), torch.int16)
    index = [range(1822, 1823), range(3, 781, 389)]
    assert_bits_equal(run_gather(src, index), reference(src, index))


@pytest.mark.parametrize(
    "shape,index",
    [
        ((10, 20), [range(0), range(20)]),
        ((10, 20), [range(10), range(3, 3)]),
        ((10, 20), [torch.empty(0, dtype=torch.int64), range(20)]),
        ((0, 20), [range(0), range(20)]),
    ],
    ids=["empty-range", "empty-range-last", "empty-tensor", "empty-src"],
)
def test_empty_output_is_a_no_op(shape, index):
    src = random_tensor(shape, torch.float32)
    index = [ix.to(DEVICE) if isinstance(ix, torch.Tensor) else ix for ix in index]
    out = torch.empty([len(ix) for ix in index], dtype=src.dtype, device=DEVICE)
    assert kg.gather(src, index, out) is out


# ---------------------------------------------------------------- non-contiguous sources


def test_transposed_source():
    base = random_tensor((781, 1823), torch.bfloat16)
    src = base.t()  # (1823, 781), strides (1, 1823)
    index = [randperm(1823, 64), range(0, 781, 5)]
    assert_bits_equal(run_gather(src, index), reference(src, index))


def test_strided_slice_source():
    base = random_tensor((300, 400), torch.float8_e4m3fn)
    src = base[1::3, 2::2]  # strides (1200, 2), storage offset 402
    index = [range(0, src.shape[0], 2), randperm(src.shape[1], 50)]
    assert_bits_equal(run_gather(src, index), reference(src, index))


def test_broadcast_source_with_zero_stride():
    src = random_tensor((1, 333), torch.int64).expand(50, 333)
    index = [randperm(50, 7), range(1, 333, 4)]
    assert_bits_equal(run_gather(src, index), reference(src, index))


def test_as_strided_view_over_a_raw_byte_block():
    # what the engine hands over: bf16 rows of a tensor inside a block of file bytes,
    # starting at an odd element offset, rows padded (row pitch 100 > 91 columns)
    block = random_tensor((2 * 7 + 2 * 100 * 40,), torch.uint8)
    src = torch.as_strided(block.view(torch.bfloat16), (40, 91), (100, 1), storage_offset=7)
    index = [randperm(40, 13), randperm(91, 33, seed=1)]
    assert_bits_equal(run_gather(src, index), reference(src, index))


def test_non_contiguous_source_with_fused_cast():
    src = random_tensor((64, 200), torch.float32).t()[::3]  # (67, 64), strides (3, 200)
    index = [randperm(67, 20), range(1, 64, 2)]
    assert_cast_equal(run_gather(src, index, torch.bfloat16), reference(src, index, torch.bfloat16))


# ---------------------------------------------------------------- 64-bit offsets


def _huge_uninitialized_bytes(n):
    """n bytes of address space; pages stay uncommitted until written."""
    try:
        return torch.empty(n, dtype=torch.uint8, device=DEVICE)
    except (RuntimeError, MemoryError) as exc:  # pragma: no cover - depends on the host
        pytest.skip(f"cannot reserve {n} bytes: {exc}")


@pytest.mark.parametrize("as_tensor", [False, True], ids=["range", "tensor"])
def test_source_offsets_beyond_2_pow_31_use_64_bit_arithmetic(as_tensor):
    # A (3, 64) view with row stride 2**30 + 8: the stride fits in int32 but row 2
    # starts at element 2**31 + 16, so coordinate * stride must be computed in int64
    # (with int32 offsets the last-dim case reads 2 GiB before the block and crashes).
    # Only the touched pages are committed (torch.empty does not write them), and the
    # interpreter uses CPU storages in place, without a copy.
    stride = 2**30 + 8
    block = _huge_uninitialized_bytes(2 * stride + 64)
    rows = [block[r * stride : r * stride + 64] for r in range(3)]
    for r, row in enumerate(rows):
        row.copy_(torch.arange(64, dtype=torch.uint8) + 64 * r)
    picked = [2, 0] if as_tensor else [0, 1, 2]
    sel = torch.tensor(picked, device=DEVICE) if as_tensor else range(3)

    # strided rows (row offsets)
    src = torch.as_strided(block, (3, 64), (stride, 1))
    cols = randperm(64, 64) if as_tensor else range(64)
    out = run_gather(src, [sel, cols])
    assert torch.equal(out, torch.stack([rows[r] for r in picked])[:, as_index_tensor(cols)])

    # the last dim strided by the same amount (column offsets)
    out = run_gather(torch.as_strided(block, (3,), (stride,)), [sel])
    assert out.tolist() == [64 * r for r in picked]


# ---------------------------------------------------------------- fused casts


def _cast_source(dtype):
    """Every bit pattern of an 8/16-bit type, as a (256, n) matrix; random bits plus
    rounding ties for float32."""
    if dtype.itemsize == 1:
        return torch.arange(-128, 128, dtype=torch.int16).to(torch.int8).view(dtype).reshape(16, 16).to(DEVICE)
    if dtype.itemsize == 2:
        return torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype).reshape(256, 256).to(DEVICE)
    g = torch.Generator().manual_seed(3)
    raw = torch.randint(-(2**31), 2**31 - 1, (256 * 256,), dtype=torch.int64, generator=g).to(torch.int32)
    hi = torch.randint(0, 2**15, (3, 4096), dtype=torch.int32, generator=g) << 16
    raw[:4096] = hi[0] | 0x8000  # exact bf16 ties: round to even
    raw[4096:8192] = hi[1] | 0x7FFF  # just below a tie
    raw[8192:12288] = hi[2] | 0x1000  # float16 ties for exponents in its range
    return raw.view(torch.float32).reshape(256, 256).to(DEVICE)


@pytest.mark.parametrize("src_dtype,out_dtype", CASTS, ids=lambda d: str(d).removeprefix("torch."))
def test_fused_cast_matches_torch_to(src_dtype, out_dtype):
    src = _cast_source(src_dtype)
    whole = [range(s) for s in src.shape]
    assert_cast_equal(run_gather(src, whole, out_dtype), src.to(out_dtype))
    # and fused with a gather
    index = [randperm(src.shape[0], src.shape[0] // 2), range(1, src.shape[1], 3)]
    assert_cast_equal(run_gather(src, index, out_dtype), reference(src, index, out_dtype))


@pytest.mark.parametrize("src_dtype,out_dtype", CASTS[:6], ids=lambda d: str(d).removeprefix("torch."))
def test_fused_cast_of_ordinary_weights_is_torch_equal(src_dtype, out_dtype):
    g = torch.Generator().manual_seed(5)
    src = (torch.randn(1823, 781, generator=g) * 0.02).to(src_dtype).to(DEVICE)
    index = [range(0, 1823, 4), randperm(781, 300)]
    assert torch.equal(run_gather(src, index, out_dtype), reference(src, index, out_dtype))


@pytest.mark.parametrize(
    "src_dtype,out_dtype",
    [
        (torch.int8, torch.float32),
        (torch.float32, torch.int32),
        (torch.float32, torch.float8_e4m3fn),
        (torch.bfloat16, torch.float8_e5m2),
        (torch.float64, torch.float32),
        (torch.float32, torch.float64),
        (torch.bool, torch.uint8),
    ],
    ids=str,
)
def test_unsupported_cast_is_refused(src_dtype, out_dtype):
    src = torch.zeros(4, 4, dtype=src_dtype, device=DEVICE)
    out = torch.empty(4, 4, dtype=out_dtype, device=DEVICE)
    with pytest.raises(ValueError, match="no fused cast"):
        kg.gather(src, [range(4), range(4)], out)


# ---------------------------------------------------------------- input validation


def _bad_call(**change):
    call = dict(
        src=torch.zeros(6, 8, device=DEVICE),
        index=[range(6), range(8)],
        out=torch.empty(6, 8, device=DEVICE),
    )
    call.update(change)
    return call


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(index=[range(6)]), "one index set per src dimension"),
        (dict(index=[range(0, 7), range(8)]), "reaches 6"),
        (dict(index=[range(5, -1, -1), range(8)]), "step >= 1"),
        (dict(index=[range(3), range(8)]), r"out.shape\[0\] is 6"),
        (dict(index=[torch.arange(6, device=DEVICE, dtype=torch.int32), range(8)]), "int64"),
        (dict(index=[torch.arange(6, device=DEVICE).reshape(2, 3), range(8)]), "1-D"),
        (dict(index=[[0, 1, 2, 3, 4, 5], range(8)]), "range or a 1-D int64 tensor"),
        (dict(out=torch.empty(8, 6, device=DEVICE).t()), "contiguous"),
        (dict(src=torch.zeros((), device=DEVICE), index=[], out=torch.empty((), device=DEVICE)), "at least one"),
        (dict(src=torch.zeros(6, 8, dtype=torch.complex128, device=DEVICE),
              out=torch.empty(6, 8, dtype=torch.complex128, device=DEVICE)), "itemsize 16"),
    ],
    ids=["rank", "range-past-end", "negative-step", "length", "int32-index", "2d-index", "list-index",
         "non-contiguous-out", "rank-0", "complex128"],
)  # fmt: skip
def test_bad_input_is_refused_before_any_work(change, match):
    with pytest.raises((ValueError, TypeError), match=match):
        kg.gather(**_bad_call(**change))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA index tensors are not bounds-checked")
def test_index_tensor_out_of_bounds_is_refused_on_cpu():
    with pytest.raises(ValueError, match=r"values in \[1, 6\] but src dim 0 has size 6"):
        kg.gather(**_bad_call(index=[torch.arange(7)[1:], range(8)]))


# ---------------------------------------------------------------- GPU only


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float32, torch.int64], ids=str)
def test_gpu_large_gather_matches_index_select(dtype):
    src = random_tensor((4099, 5003), dtype, device="cuda")
    index = [randperm(4099, 2048, device="cuda"), range(1, 5003, 2)]
    assert_bits_equal(run_gather(src, index), reference(src, index))


@needs_gpu
@pytest.mark.gpu
def test_gpu_output_beyond_2_pow_31_elements():
    # 2**31 + 2 * 4096 int8 output elements: output offsets need int64 too
    rows, cols = 2**19 + 2, 4096
    src = torch.empty(rows, cols, dtype=torch.int8, device="cuda")
    src[:, :2] = torch.arange(rows, device="cuda").reshape(-1, 1).to(torch.int8)
    out = run_gather(src, [range(rows), range(cols)])
    assert torch.equal(out[-3:, :2], src[-3:, :2])
    del out, src


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("src_dtype,out_dtype", CASTS, ids=lambda d: str(d).removeprefix("torch."))
def test_gpu_fused_cast_matches_torch_to(src_dtype, out_dtype):
    src = _cast_source(src_dtype).cuda()
    index = [randperm(src.shape[0], src.shape[0] // 2, device="cuda"), range(1, src.shape[1], 3)]
    assert_cast_equal(run_gather(src, index, out_dtype), reference(src, index, out_dtype))
