"""The CPU gather paths of slicer.run.torch_gather.gather_torch: identity copy, strided view,
explicit gather, and a gather with a cast; beside a plain contiguous copy_.

    pytest bench/bench_gather_cpu.py --benchmark-only

GB/s = (bytes read + bytes written) / median time, bytes read being the kept elements
(out.numel() x source itemsize), bytes written the output's bytes. Elements move as
same-width integers (int16 for bf16), as the engine passes them, except for the cast.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from benchutil import report  # noqa: E402
from slicer.run.torch_gather import gather_torch  # noqa: E402
from slicer.selection import uniform_indices  # noqa: E402

N = 4096  # a 4096x4096 bf16 weight: 33.5 MB, about a chunk (32 MB) of the engine


def _src(dtype=torch.int16, shape=(N, N)):
    t = torch.empty(shape, dtype=dtype)
    t.view(torch.uint8).fill_(0x3C)  # every page touched, a finite bf16 (no NaN in the cast)
    return t


def _explicit(t, s):
    return torch.tensor(uniform_indices(t, s), dtype=torch.int64)


CASES = {
    # name: (index builder, out shape, out dtype)
    "identity-copy": (lambda: [range(N), range(N)], (N, N), torch.int16),
    "strided-half-half": (lambda: [range(0, N, 2), range(0, N, 2)], (N // 2, N // 2), torch.int16),
    "rows-strided-cols-half": (lambda: [range(N), range(0, N // 2)], (N, N // 2), torch.int16),
    # 4096 -> 3000 is not a progression: uniform_indices takes the linspace path.
    "explicit-rows-cols": (lambda: [_explicit(N, 3000), _explicit(N, 3000)], (3000, 3000), torch.int16),
    "strided-rows-explicit-cols": (lambda: [range(0, N, 2), _explicit(N, 3000)], (N // 2, 3000), torch.int16),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gather_torch(benchmark, name):
    make_index, out_shape, out_dtype = CASES[name]
    benchmark.group = "gather_torch 4096x4096 16-bit"
    src, index = _src(), make_index()
    out = torch.empty(out_shape, dtype=out_dtype)
    benchmark(gather_torch, src, index, out)
    report(benchmark, out.numel() * (src.element_size() + out.element_size()), out_shape=list(out_shape))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16], ids=["bf16-to-fp32", "bf16-to-fp16"])
def test_gather_torch_cast(benchmark, out_dtype):
    benchmark.group = "gather_torch 4096x4096 with cast"
    src = _src(torch.bfloat16)
    index = [range(0, N, 2), _explicit(N, 3000)]
    out = torch.empty((N // 2, 3000), dtype=out_dtype)
    benchmark(gather_torch, src, index, out)
    report(benchmark, out.numel() * (src.element_size() + out.element_size()))


@pytest.mark.parametrize("mb", [8, 32])
def test_copy_baseline(benchmark, mb):
    """The floor of any gather on this machine: a contiguous copy_ of as many bytes."""
    benchmark.group = "copy_ baseline"
    n = (mb << 20) // 2
    src, out = _src(shape=(n,)), torch.empty(n, dtype=torch.int16)
    benchmark(out.copy_, src)
    report(benchmark, 2 * out.numel() * 2)
