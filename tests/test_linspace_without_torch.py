"""uniform_indices reproduces float32 torch.linspace without torch, bit for bit.

The float32 values of slicer.selection._linspace_f32 are compared with torch's own
(as int32 bit patterns, not as numbers), and the rounded index sets with the spec's
reference. bench/linspace_proof.py runs the exhaustive version (every s < t <= 3000).
"""
from __future__ import annotations

import random
import struct
import subprocess
import sys

import pytest
import torch

from slicer.selection import _linspace_f32, uniform_indices

from helpers import ref_uniform

# torch's non-vectorized CPU kernel (ATEN_CPU_CAPABILITY=default) rounds twice instead of
# once (no fused multiply-add) and so gives other floats; _linspace_f32 models the
# AVX2/AVX512 kernels torch dispatches to on x86-64 machines.
pytestmark = pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "DEFAULT",
                                reason="torch runs its non-FMA linspace kernel here")


def _torch_bits(t: int, s: int) -> bytes:
    return torch.linspace(0, t - 1, s, dtype=torch.float32).numpy().tobytes()


def _pairs() -> list[tuple[int, int]]:
    rng = random.Random(12)
    small = [(t, s) for t in range(3, 201) for s in range(2, t) if t % s]
    mid = [(t, s) for t, s in ((rng.randrange(201, 3001), 0) for _ in range(3000))]
    mid = [(t, rng.randrange(2, t)) for t, _ in mid]
    large = [(t, rng.randrange(2, t)) for t in (rng.randrange(3001, 10**6) for _ in range(60))]
    edges = [(8934, 2686), (11008, 5503), (128256, 64127), (10**6, 999_999), (10**6, 2), (1 << 24, 3)]
    return small + mid + large + edges


def test_linspace_floats_equal_torch_bit_for_bit():
    bad = [(t, s) for t, s in _pairs() if _linspace_f32(t - 1, s).tobytes() != _torch_bits(t, s)]
    assert not bad, f"{len(bad)} pairs differ from torch.linspace, e.g. {bad[:5]}"


def test_uniform_indices_equal_torch_round_of_linspace():
    bad = [(t, s) for t, s in _pairs()[::7] if uniform_indices(t, s) != ref_uniform(t, s)]
    assert not bad, f"{len(bad)} pairs differ, e.g. {bad[:5]}"


def test_a_twice_rounded_linspace_would_be_caught():
    # The model rounds step * i once (as the FMA does); rounding the product to float32
    # first and then the sum differs from torch, and the comparison above must see it.
    def twice_rounded(end: int, steps: int) -> bytes:
        f = lambda x: struct.unpack("f", struct.pack("f", x))[0]  # noqa: E731
        stop, step, half = f(end), f(f(end) / f(steps - 1)), steps // 2
        vals = [f(step * i) for i in range(half)] + [f(stop - f(step * (steps - 1 - i))) for i in range(half, steps)]
        return struct.pack(f"{steps}f", *vals)

    differ = [(t, s) for t, s in _pairs()[:3000] if twice_rounded(t - 1, s) != _torch_bits(t, s)]
    assert len(differ) > 100


def test_beyond_float32_integers_uniform_falls_back_to_torch():
    t, s = (1 << 24) + 3, 5
    assert uniform_indices(t, s) == ref_uniform(t, s)


def test_selection_imports_no_torch(subprocess_env):
    code = ("import sys; from slicer.selection import uniform_indices; uniform_indices(8934, 2686); "
            "uniform_indices(11008, 5503); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env)
