"""Chunking: any chunk budget, however small, gives the same exact student.

Tiny budgets force every split path: rows per chunk along dim 0, rows larger than the
budget (split along a later dimension, leading dims walked one index at a time), and
single elements. The reference is the spec's ix_ formula on the fully loaded teacher.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import slicer
from slicer.plan.chunks import chunks
from slicer.plan import Options, StudentTensor, build_plan
from slicer.io.checkpoint import Checkpoint

from helpers import assert_bit_equal, gather, ref_uniform, random_tensor

SHAPES = {  # teacher shape -> student shape: odd sizes, non-divisible (linspace) and strided sets
    "a.weight": ((37, 53), (11, 29)),
    "b.weight": ((9, 41, 34), (4, 41, 17)),  # identity middle dim, stride-2 last dim
    "c.weight": ((5, 3, 7, 11), (2, 3, 5, 4)),
    "d.bias": ((101,), (33,)),
    "e.scalar": ((), ()),
    "f.empty": ((0, 8), (0, 4)),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("chunks")
    gen = torch.Generator().manual_seed(7)
    teacher = {n: random_tensor(t, torch.bfloat16, gen, bits=True) for n, (t, _) in SHAPES.items()}
    template = {n: torch.zeros(s, dtype=torch.bfloat16) for n, (_, s) in SHAPES.items()}
    save_file(teacher, root / "teacher.safetensors")
    save_file(template, root / "template.safetensors")
    return root, teacher


def expected(teacher: dict) -> dict:
    return {n: gather(teacher[n], [ref_uniform(t, s) for t, s in zip(*SHAPES[n])]) for n in SHAPES}


@pytest.mark.parametrize("chunk_bytes", [1, 2, 7, 64, 1000, 32 << 20])
def test_any_chunk_budget_gives_the_exact_student(files, tmp_path, chunk_bytes):
    root, teacher = files
    slicer.shrink(root / "teacher.safetensors", tmp_path / "out", template=root / "template.safetensors",
                  chunk_bytes=chunk_bytes)
    got = load_file(tmp_path / "out" / "model.safetensors")
    for name, want in expected(teacher).items():
        assert_bit_equal(got[name], want, name)


@pytest.mark.parametrize("chunk_bytes", [2, 64, 1000])
def test_chunks_cover_each_output_once_in_order_within_budget(files, chunk_bytes):
    root, _ = files
    plan = build_plan(Checkpoint.open(root / "teacher.safetensors"),
                      [StudentTensor(n, s) for n, (_, s) in SHAPES.items()], Options())
    for job in plan.jobs:
        parts = list(chunks(job, chunk_bytes))
        elements = sum(torch.Size(c.out_shape).numel() for c in parts)
        assert elements == torch.Size(job.shape).numel(), job.name
        for c in parts:
            row = torch.Size(c.out_shape[1:]).numel() * 2
            assert row <= max(chunk_bytes, 2), (job.name, c)
            # the span starts at the first kept row: nothing before it is ever mapped
            first_kept = c.index[0][0] if c.index else 0
            assert first_kept == 0, (job.name, c)
