"""The GPU path's staging logic (kept rows up, gather, copy back), run on the CPU.

``make_cuda_gather(..., device="cpu", pin=False)`` takes every step of the GPU path
except the device itself, so its row selection and buffer reuse are checked here; on
a machine with a GPU the real thing runs too.
"""
from __future__ import annotations

import pytest
import torch

from slicer.cuda_gather import make_cuda_gather
from slicer.gather import gather_torch

from helpers import assert_bit_equal, gather, random_tensor

CASES = [
    ((37, 53), [range(0, 37, 3), range(1, 53, 2)]),
    ((37, 53), [[0, 5, 36], range(0, 53, 1)]),
    ((9, 4, 10), [[1, 2, 8], [0, 3], range(0, 10, 2)]),
    ((40,), [range(0, 40, 4)]),
]


def _run(gather_fn, shape, index, dtype, out_dtype, device="cpu"):
    src = random_tensor(shape, dtype, torch.Generator().manual_seed(sum(shape)))
    ix = [i if isinstance(i, range) else torch.tensor(i) for i in index]
    want = gather(src, [list(i) for i in index]).to(out_dtype)
    out = torch.empty(want.shape, dtype=out_dtype, device=device)
    gather_fn(src, ix, out)
    return out.cpu(), want


@pytest.mark.parametrize("shape,index", CASES)
@pytest.mark.parametrize("dtype,out_dtype", [(torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
                                             (torch.float8_e4m3fn, torch.bfloat16), (torch.int64, torch.int64)])
def test_staging_path_equals_ix(shape, index, dtype, out_dtype):
    staged = make_cuda_gather(gather_torch, device="cpu", pin=False)
    for _ in range(2):  # the second call reuses the staging buffers
        got, want = _run(staged, shape, index, dtype, out_dtype)
        assert_bit_equal(got, want, str(shape))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape,index", CASES)
def test_gpu_path_equals_ix(shape, index):
    from slicer.backends import choose

    backend = choose("cuda", "triton")
    for device in ("cpu", "cuda"):  # out in (pinned) host memory, or staying on the device
        got, want = _run(backend.gather, shape, index, torch.bfloat16, torch.bfloat16, device)
        assert_bit_equal(got, want, str(shape))
