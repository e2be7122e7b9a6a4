"""Index-set computations: uniform_indices for big t/s, and a Selector over a Llama-sized plan.

    pytest bench/bench_selection.py --benchmark-only

Bytes moved = the int64 indices produced (8 bytes each), so GB/s says how fast index
sets come out; they are computed once per (t, s) per run, so this is never the
bottleneck, but the linspace path must stay cheap for a 128256-row vocabulary.
"""
from __future__ import annotations

import pytest

pytest.importorskip("pytest_benchmark")

from benchutil import report  # noqa: E402
from slicer.axes import Chooser, flat_axis  # noqa: E402
from slicer.selection import uniform_indices  # noqa: E402
from teachers import LlamaShape  # noqa: E402

# (t, s): the strided path (t % s == 0) and the float32-linspace path.
UNIFORM = [
    pytest.param(128256, 64128, id="vocab-128256-half-strided"),
    pytest.param(53248, 14336, id="ffn-405b-to-8b-linspace"),
    pytest.param(16384, 4096, id="hidden-405b-to-8b-strided"),
    pytest.param(128256, 100000, id="vocab-128256-100000-linspace"),
    pytest.param(1 << 20, (1 << 20) - 3, id="1M-linspace"),
]


@pytest.mark.parametrize("t,s", UNIFORM)
def test_uniform_indices(benchmark, t, s):
    benchmark.group = "uniform_indices"
    out = benchmark(uniform_indices, t, s)
    assert len(out) == s
    report(benchmark, 8 * s, path="strided" if t % s == 0 else "linspace")


LLAMA_405B = LlamaShape(hidden=16384, intermediate=53248, heads=128, kv_heads=8, head_dim=128, layers=126,
                        vocab=128256)
LLAMA_8B = LlamaShape(hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128, layers=32, vocab=128256)


def for_tensor(chooser, name, tshape, sshape):
    return [chooser.leaf(flat_axis(t, s), f"{name}/{d}") for d, (t, s) in enumerate(zip(tshape, sshape))]


@pytest.mark.parametrize("method", ["uniform", "consecutive", "random"])
def test_chooser_llama_405b_to_8b(benchmark, method):
    """Index sets of every tensor of an 8B student taken from a 405B teacher (same-named
    layers, as a first-N layer map gives them), every dimension flat: a fresh Chooser each
    round, so the per-(t, s) cache fills once per round as in a real run."""
    benchmark.group = "Chooser 405B -> 8B"
    teacher = dict(LLAMA_405B.tensors())
    pairs = [(name, teacher[name], shape) for name, shape in LLAMA_8B.tensors()]

    def run():
        sel = Chooser(method, seed=0)
        return sum(ix.s for name, t, s in pairs for ix in for_tensor(sel, name, t, s)), len(sel.sets)

    total, distinct = benchmark(run)
    # bytes: the distinct index sets materialized (int64), what the run really computes
    sel = Chooser(method, seed=0)
    for name, t, s in pairs:
        for_tensor(sel, name, t, s)
    report(benchmark, 8 * sum(ix.s for ix in sel.sets.values()), tensors=len(pairs), distinct_sets=distinct,
           indices_handed_out=total)
