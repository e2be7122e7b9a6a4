"""The numpy gather (the default CPU backend), fast paths included, equals the spec's
ix_ on random bit patterns of every width; so do whole runs through it, with casts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import slicer
from slicer.run.numpy_gather import gather_numpy

from helpers import ALL_DTYPES, assert_bit_equal, gather, random_tensor, read_output

CASES = [
    ((6, 10), [range(0, 6, 2), range(0, 10, 2)]),          # halving: read as pairs
    ((6, 11), [range(0, 6, 1), range(0, 10, 2)]),          # odd t: the pair of the last kept element exists
    ((6, 11), [range(0, 6, 1), range(1, 11, 2)]),          # odd start
    ((5, 9), [range(0, 5, 1), range(0, 9, 2)]),            # the last kept element has no partner
    ((4, 3, 8), [[0, 3], range(0, 3, 1), range(2, 8, 2)]),  # a gathered dim, then pairs
    ((7, 13), [[1, 2, 6], [0, 5, 12]]),                    # two gathered dims
    ((9, 12), [range(1, 9, 3), [0, 4, 5, 11]]),            # strided rows, gathered columns (a strided take)
    ((3, 5, 6), [range(0, 3, 2), [1, 4], range(1, 6, 2)]),  # gathered middle dim between strided ones
    ((9,), [range(0, 9, 3)]),
    ((9,), [[0, 8]]),
    ((), []),
]


def _numpy_bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]).numpy()


def _run(src: torch.Tensor, index) -> torch.Tensor:
    ix = [i if isinstance(i, range) else np.asarray(i, dtype=np.intp) for i in index]
    shape = tuple(len(i) for i in index)
    out = torch.empty(shape, dtype=src.dtype)
    gather_numpy(_numpy_bits(src), ix, _numpy_bits(out))  # writes through the view into `out`
    return out


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape,index", CASES)
def test_gather_numpy_equals_ix_on_bit_patterns(dtype, shape, index):
    gen = torch.Generator().manual_seed(len(shape) * 31 + sum(shape))
    src = random_tensor(shape, dtype, gen, bits=True)
    assert_bit_equal(_run(src, index), gather(src, [list(ix) for ix in index]), str(shape))


@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_pairs_on_unaligned_memory_are_exact(offset):
    """A tensor starting at an odd element: pairs straddle alignment, same bits anyway."""
    gen = torch.Generator().manual_seed(offset)
    base = random_tensor((offset + 4 * 10,), torch.bfloat16, gen, bits=True)
    raw = _numpy_bits(base).view(np.uint8)[2 * offset:]  # a uint8 view, as the teacher maps are
    out = np.empty((4, 5), np.uint16)
    gather_numpy(raw.view(np.uint16).reshape(4, 10), [range(0, 4), range(0, 10, 2)], out)
    want = gather(base[offset:].view(4, 10), [list(range(4)), list(range(0, 10, 2))])
    assert_bit_equal(torch.from_numpy(out.view(np.int16)).view(torch.bfloat16), want, "unaligned")


def test_gather_numpy_refuses_a_cast():
    with pytest.raises(ValueError, match="cast"):
        gather_numpy(np.zeros(4, np.uint16), [range(0, 4, 2)], np.zeros(2, np.uint32))


@st.composite
def _selection(draw):
    rank = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 9)) for _ in range(rank))
    index = []
    for t in shape:
        if draw(st.booleans()):
            start = draw(st.integers(0, t - 1))
            step = draw(st.integers(1, 3))
            index.append(range(start, t, step))
        else:
            index.append(sorted(draw(st.sets(st.integers(0, t - 1), min_size=1))))
    return shape, index, draw(st.sampled_from([torch.uint8, torch.bfloat16, torch.float32, torch.int64]))


@settings(max_examples=150, deadline=None)
@given(_selection())
def test_gather_numpy_equals_ix_on_any_selection(case):
    shape, index, dtype = case
    src = random_tensor(shape, dtype, torch.Generator().manual_seed(sum(shape)), bits=True)
    assert_bit_equal(_run(src, index), gather(src, [list(ix) for ix in index]), f"{shape} {index}")


@pytest.mark.parametrize("dtype", ["keep", "fp32", "fp16"])
def test_numpy_backend_writes_what_the_torch_backend_writes(ckpts, tmp_path, dtype):
    """Whole runs, casts included (a cast chunk goes through torch), byte for byte."""
    teacher, _ = ckpts.teacher("llama")
    template, _ = ckpts.template("llama")
    outs = {}
    for backend in ("numpy", "torch"):
        s = slicer.shrink(teacher, tmp_path / backend, template=template, dtype=dtype, backend=backend,
                          chunk_bytes=4096, device="cpu")
        assert s.backend == backend
        outs[backend] = read_output(tmp_path / backend)[0]
    assert outs["numpy"].keys() == outs["torch"].keys()
    for name, t in outs["torch"].items():
        assert_bit_equal(outs["numpy"][name], t, name)
