"""Magnitude scores (data-free): the norm of the teacher weights bound to each axis member.

Measured next to uniform and importance by bench/importance_quality.py (written as a scores
file and applied with ``--method importance --scores``): it was worse than uniform on both
real teachers, so slicer ships no ``--method magnitude`` (see docs/importance.md).

For every tensor of the teacher's own plan and every dimension, the squared weights are
summed over the other dimensions and grouped by the axis members the dimension's layout
names (``members.element_members``); derived axes are handed down to their leaves, and a
member's score is the square root of its total: the L2 norm of every weight that moves with
it. One tensor (in row blocks) in memory at a time.
"""
from __future__ import annotations

import math

import torch

from slicer.io.checkpoint import Checkpoint
from slicer.importance.members import element_members, hand_down
from slicer.importance.scores import Scores, teacher_files
from slicer.io.reader import TeacherReader
from slicer.io.format import DTYPES

ROW_BLOCK_BYTES = 64 << 20


def magnitude_scores(ckpt: Checkpoint) -> Scores:
    from slicer.importance.scoring import identity_plan

    plan = identity_plan(ckpt)
    table = plan.axes
    sums: dict[str, torch.Tensor] = {}
    with TeacherReader() as reader:
        for job in plan.jobs:
            maps = [{n: m for n, m in element_members(table, layout).items() if table[n].kind != "flat"}
                    for layout in job.layouts]
            if not any(maps) or not DTYPES[job.source.dtype].floating:
                continue
            per_dim = _squares_per_dim(job.source, reader, [bool(m) for m in maps])
            for d, by_axis in enumerate(maps):
                for name, members in by_axis.items():
                    keep = members >= 0
                    add = torch.zeros(table[name].t, dtype=torch.float64).index_add_(0, members[keep], per_dim[d][keep])
                    sums[name] = sums[name] + add if name in sums else add
    vectors = {name: v.sqrt() for name, v in hand_down(table, sums).items()}
    meta = {"teacher": teacher_files(ckpt), "statistic": "magnitude: L2 norm of every teacher weight bound to the member"}
    return Scores(vectors, meta, f"magnitude scores of {ckpt.path}")


def magnitude_file(teacher, path) -> str:
    from slicer.importance.scores import save

    return save(path, magnitude_scores(Checkpoint.open(teacher)))


def _squares_per_dim(info, reader: TeacherReader, wanted: list[bool]) -> list[torch.Tensor | None]:
    """For each wanted dimension d: the sum of squares over all other dimensions, [shape[d]]."""
    shape = info.shape
    rows = shape[0] if shape else 1
    row_numel = math.prod(shape[1:]) if len(shape) > 1 else 1
    block = max(1, ROW_BLOCK_BYTES // max(1, row_numel * info.itemsize))
    out = [torch.zeros(n, dtype=torch.float64) if w else None for n, w in zip(shape, wanted)]
    dtype = DTYPES[info.dtype].torch_dtype
    for start in range(0, rows, block):
        n = min(block, rows - start)
        x = reader.span(info, start * row_numel, n * row_numel, dtype).view(n, *shape[1:]).double().pow(2)
        for d, acc in enumerate(out):
            if acc is None:
                continue
            others = [k for k in range(len(shape)) if k != d]
            got = x.sum(dim=others) if others else x
            if d == 0:
                acc[start:start + n] += got
            else:
                acc += got
    return out
