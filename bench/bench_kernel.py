"""Triton gather vs a chain of torch.index_select, side by side, in GB/s.

    pytest bench/bench_kernel.py --benchmark-only

On a GPU: weight-sized shapes. Without one the kernel runs under the Triton
interpreter (tiny shapes; its numbers say nothing about the GPU, they only keep the
suite runnable). GB/s counts the bytes moved: the selected elements read from src
plus the output written, divided by the median time.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("pytest_benchmark")

from slicer.kernels import gather as kg  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"


def _case(name, shape, dtype, make_index, out_dtype=None):
    return pytest.param(shape, dtype, make_index, out_dtype or dtype, id=name)


def _half_rows_random_cols(shape):
    g = torch.Generator().manual_seed(0)
    return [range(0, shape[0], 2), torch.randperm(shape[1], generator=g)[: shape[1] // 2].sort().values]


def _identity(shape):
    return [range(s) for s in shape]


def _heads(shape):
    # (heads, head_dim, hidden): keep every other head, the first half of hidden
    return [range(0, shape[0], 2), range(shape[1]), range(shape[2] // 2)]


if ON_GPU:
    CASES = [
        _case("mlp-bf16-half-half", (11008, 4096), torch.bfloat16, _half_rows_random_cols),
        _case("mlp-bf16-identity", (11008, 4096), torch.bfloat16, _identity),
        _case("mlp-bf16-to-fp32", (11008, 4096), torch.bfloat16, _half_rows_random_cols, torch.float32),
        _case("mlp-fp8-to-bf16", (11008, 4096), torch.float8_e4m3fn, _half_rows_random_cols, torch.bfloat16),
        _case("attn-heads-bf16", (32, 128, 4096), torch.bfloat16, _heads),
        _case("embed-fp32-half-half", (32000, 4096), torch.float32, _half_rows_random_cols),
    ]
else:
    CASES = [
        _case("bf16-half-half", (256, 512), torch.bfloat16, _half_rows_random_cols),
        _case("bf16-to-fp32", (256, 512), torch.bfloat16, _half_rows_random_cols, torch.float32),
        _case("heads-bf16", (8, 16, 256), torch.bfloat16, _heads),
    ]


def _make(shape, dtype):
    """Weight-like values (no NaN/inf to make a cast's speed atypical)."""
    if dtype.is_floating_point:
        return (torch.randn(shape) * 0.02).to(dtype).to(DEVICE)
    return torch.randint(-100, 100, shape).to(dtype).to(DEVICE)


def _as_tensor(ix):
    if isinstance(ix, range):
        return torch.arange(ix.start, ix.start + len(ix) * ix.step, ix.step, device=DEVICE)
    return ix.to(DEVICE)


def _sync():
    if ON_GPU:
        torch.cuda.synchronize()


def _report(benchmark, src, out, interpreted=False):
    moved = out.numel() * (src.element_size() + out.element_size())
    benchmark.extra_info["bytes_moved"] = moved
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gb_per_s"] = round(moved / benchmark.stats.stats.median / 1e9, 3)
    device = torch.cuda.get_device_name() if ON_GPU else "cpu"
    benchmark.extra_info["device"] = device + (" (triton interpreter)" if interpreted else "")


@pytest.mark.parametrize("shape,dtype,make_index,out_dtype", CASES)
def test_triton_gather(benchmark, shape, dtype, make_index, out_dtype):
    benchmark.group = f"gather {'x'.join(map(str, shape))} {dtype} -> {out_dtype}"
    src = _make(shape, dtype)
    index = [ix if isinstance(ix, range) else ix.to(DEVICE) for ix in make_index(shape)]
    out = torch.empty([len(ix) for ix in index], dtype=out_dtype, device=DEVICE)

    def run():
        kg.gather(src, index, out)
        _sync()

    benchmark(run)
    _report(benchmark, src, out, interpreted=not ON_GPU)


@pytest.mark.parametrize("shape,dtype,make_index,out_dtype", CASES)
def test_torch_index_select_chain(benchmark, shape, dtype, make_index, out_dtype):
    benchmark.group = f"gather {'x'.join(map(str, shape))} {dtype} -> {out_dtype}"
    src = _make(shape, dtype)
    index = [_as_tensor(ix) for ix in make_index(shape)]
    out = torch.empty([len(ix) for ix in index], dtype=out_dtype, device=DEVICE)
    # torch cannot index_select every dtype (fp8): move same-width integers, cast after
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[src.element_size()]

    def run():
        t = src.view(ints)
        for d, ix in enumerate(index):
            t = t.index_select(d, ix)
        out.copy_(t.view(dtype))  # copy_ casts when out_dtype differs
        _sync()

    benchmark(run)
    _report(benchmark, src, out)
