"""Chunks: a tensor job's work cut into spans of teacher rows that fit a byte budget. Pure.

The engine reads and gathers one chunk at a time; the remote reader plans its requests
from the same chunks, so both walk a tensor in the same order.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator

from ..io.format import DTYPES
from .build import TensorJob


@dataclass(frozen=True)
class Chunk:
    """A block of one tensor: a span of teacher elements and what to take from it."""

    first: int  # first teacher element of the span
    span_shape: tuple[int, ...]  # the span viewed as a tensor
    index: tuple[range | tuple[int, ...], ...]  # per span dimension, relative to the span
    out_shape: tuple[int, ...]

    @property
    def count(self) -> int:
        return math.prod(self.span_shape)

    @property
    def dense(self) -> bool:
        """Most of the span is wanted: worth asking the kernel to read it ahead."""
        return self.span_shape[0] <= 4 * self.out_shape[0] if self.out_shape else True


def chunks(job: TensorJob, budget: int) -> Iterator[Chunk]:
    """Split a job into chunks whose teacher rows and output each fit in ``budget`` bytes.

    Chunks follow the output's row-major order, so their outputs are written back to
    back. Usually the split is along dimension 0; a tensor whose single rows are
    larger than the budget is split along the first dimension where they fit, the
    leading dimensions walked one index at a time.
    """
    tshape, sshape, index = job.source.shape, job.shape, job.index
    if math.prod(sshape) == 0:
        return
    if not sshape:  # a scalar
        yield Chunk(0, (), (), ())
        return
    rank = len(sshape)
    in_size, out_size = job.source.itemsize, DTYPES[job.dtype].itemsize
    tstrides = [math.prod(tshape[d + 1:]) for d in range(rank)]
    k = next(d for d in range(rank) if max(tstrides[d] * in_size, math.prod(sshape[d + 1:]) * out_size) <= budget or d == rank - 1)
    row_bytes = max(tstrides[k] * in_size, math.prod(sshape[k + 1:]) * out_size, 1)
    rows = max(1, budget // row_bytes)
    inner = tuple(ix.part(0, ix.s) for ix in index[k + 1:])
    for lead in itertools.product(*(range(sshape[d]) for d in range(k))):
        base = sum(index[d].part(i, i + 1)[0] * tstrides[d] for d, i in enumerate(lead))
        for a in range(0, sshape[k], rows):
            b = min(a + rows, sshape[k])
            part = index[k].part(a, b)
            lo, hi = part[0], part[-1]
            rel = range(part.start - lo, part.stop - lo, part.step) if isinstance(part, range) else tuple(i - lo for i in part)
            yield Chunk(base + lo * tstrides[k], (hi - lo + 1, *tshape[k + 1:]), (rel, *inner), (b - a, *sshape[k + 1:]))
