"""The torch gather, fast paths included, equals the spec's ix_ on random bit patterns."""
from __future__ import annotations

import pytest
import torch

from slicer.run.torch_gather import gather_torch

from helpers import ALL_DTYPES, assert_bit_equal, gather, random_tensor


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape,index", [
    ((6, 10), [range(0, 6, 2), range(0, 10, 2)]),          # halving: read as pairs
    ((6, 11), [range(0, 6, 1), range(0, 10, 2)]),          # odd t: the pair of the last kept element exists
    ((6, 11), [range(0, 6, 1), range(1, 11, 2)]),          # odd start
    ((5, 9), [range(0, 5, 1), range(0, 9, 2)]),            # the last kept element has no partner
    ((4, 3, 8), [[0, 3], range(0, 3, 1), range(2, 8, 2)]),  # a gathered dim, then pairs
    ((7, 13), [[1, 2, 6], [0, 5, 12]]),                    # two gathered dims
    ((9,), [range(0, 9, 3)]),
    ((), []),
])
def test_gather_torch_equals_ix_on_bit_patterns(dtype, shape, index):
    gen = torch.Generator().manual_seed(len(shape) * 31 + sum(shape))
    src = random_tensor(shape, dtype, gen, bits=True)
    lists = [list(ix) for ix in index]
    want = gather(src, lists)
    ix = [i if isinstance(i, range) else torch.tensor(i, dtype=torch.int64) for i in index]
    out = torch.empty(want.shape, dtype=dtype)
    gather_torch(src, ix, out)
    assert_bit_equal(out, want, str(shape))


@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_pairs_on_unaligned_storage_fall_back_exactly(offset):
    """A tensor starting at an odd element cannot be read as pairs: same result anyway."""
    gen = torch.Generator().manual_seed(offset)
    base = random_tensor((offset + 4 * 10,), torch.bfloat16, gen, bits=True)
    src = base[offset:].view(4, 10)
    out = torch.empty(4, 5, dtype=torch.bfloat16)
    gather_torch(src, [range(0, 4), range(0, 10, 2)], out)
    assert_bit_equal(out, gather(src, [list(range(4)), list(range(0, 10, 2))]), "unaligned")
