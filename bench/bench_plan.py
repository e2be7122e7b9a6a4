"""Planning a checkpoint of 1000+ tensors from its headers alone.

    pytest bench/bench_plan.py --benchmark-only

The teacher is a SPARSE safetensors file: a hand-written header for a 120-layer
Llama-8B-shaped model (1083 tensors, ~30 GB on paper) and ``os.truncate`` to the
full size, so nothing is on disk; the template (half width, half depth) likewise.
``slicer.plan`` reads only the two headers. Bytes moved = header bytes parsed.
"""
from __future__ import annotations

import os

import pytest

pytest.importorskip("pytest_benchmark")

import slicer  # noqa: E402
from benchutil import report  # noqa: E402
from teachers import LlamaShape, build_header, total_bytes  # noqa: E402

TEACHER = LlamaShape(hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128, layers=120, vocab=128256)
STUDENT = LlamaShape(hidden=2048, intermediate=7168, heads=16, kv_heads=4, head_dim=128, layers=60, vocab=128256)


def sparse_checkpoint(path, shape: LlamaShape) -> int:
    """One model.safetensors: real header, zero (sparse) data. Returns the header's size."""
    tensors = shape.tensors()
    header = build_header(tensors)
    with open(path, "wb") as f:
        f.write(header)
    os.truncate(path, len(header) + total_bytes(tensors))
    return len(header)


@pytest.fixture(scope="module")
def sparse_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparse-plan")
    teacher, template = root / "teacher.safetensors", root / "template.safetensors"
    nbytes = sparse_checkpoint(teacher, TEACHER) + sparse_checkpoint(template, STUDENT)
    return teacher, template, nbytes


@pytest.mark.parametrize("layer_selection", ["first", "uniform"])
def test_plan_1000_tensors(benchmark, sparse_pair, layer_selection):
    benchmark.group = "plan, headers only"
    teacher, template, header_bytes = sparse_pair
    plan = benchmark(slicer.plan, teacher, template=template, layer_selection=layer_selection)
    assert len(plan.jobs) == len(STUDENT.tensors()) and len(TEACHER.tensors()) >= 1000
    report(benchmark, header_bytes, teacher_tensors=len(TEACHER.tensors()), student_tensors=len(plan.jobs),
           planned_bytes_to_read=plan.bytes_to_read, planned_bytes_to_write=plan.bytes_to_write)
