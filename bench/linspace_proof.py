"""Exhaustive check: slicer's torch-free float32 linspace equals torch.linspace, bit for bit.

slicer.selection.uniform_indices rounds ``torch.linspace(0, t - 1, s, dtype=float32)``
on the CPU, which it reproduces without torch (selection._linspace_f32). This compares
float32 bit patterns (not numbers):

  1. the shipped function against torch for every 2 <= s < t <= --shipped-max (1000);
  2. a numpy replica of the same arithmetic (float64 products and differences, one
     rounding to float32) against torch for every 2 <= s < t <= --t-max (3000), all s
     of one t at once; and the replica against the shipped function on a sample;
  3. the shipped function and uniform_indices against torch for --random pairs with
     t up to 10**6.

It also counts how often torch's non-vectorized kernel (two roundings, no fused
multiply-add: what ATEN_CPU_CAPABILITY=default runs) would give other floats or other
indices, to show the check can tell them apart. Minutes on 2 cores.

    python bench/linspace_proof.py [--t-max 3000] [--shipped-max 1000] [--random 500]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slicer.selection import _linspace_f32, uniform_indices  # noqa: E402

F32 = np.float32


def torch_bits(t: int, s: int) -> np.ndarray:
    return torch.linspace(0, t - 1, s, dtype=torch.float32).numpy().view(np.uint32)


def replica_all_s(t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one t, every s in 2..t-1 concatenated: (float32 bits, the two-rounding bits, s per element)."""
    s = np.arange(2, t, dtype=np.int64)
    end = F32(t - 1)
    step = (end / (s - 1).astype(F32)).astype(F32)  # float32 division, correctly rounded
    lengths = s
    starts = np.cumsum(lengths) - lengths
    total = int(lengths.sum())
    steps_per = np.repeat(s, lengths)
    i = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
    st = np.repeat(step, lengths)
    low = i < steps_per // 2
    k = np.where(low, i, steps_per - 1 - i).astype(np.float64)
    prod = st.astype(np.float64) * k
    once = np.where(low, prod, np.float64(end) - prod).astype(F32)  # exact, then one rounding (FMA)
    p32 = (st * k.astype(F32)).astype(F32)
    twice = np.where(low, p32, end - p32).astype(F32)  # rounded product, then rounded sum
    return once.view(np.uint32), twice.view(np.uint32), steps_per


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--t-max", type=int, default=3000)
    ap.add_argument("--shipped-max", type=int, default=1000)
    ap.add_argument("--random", type=int, default=500)
    args = ap.parse_args(argv)
    cap = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, CPU kernel {cap}")
    t0 = time.perf_counter()
    bad_shipped = pairs = 0
    for t in range(3, args.shipped_max + 1):
        for s in range(2, t):
            pairs += 1
            if np.frombuffer(_linspace_f32(t - 1, s).tobytes(), np.uint32).tobytes() != torch_bits(t, s).tobytes():
                bad_shipped += 1
    print(f"1. shipped vs torch, every 2 <= s < t <= {args.shipped_max}: {pairs} pairs, {bad_shipped} differ "
          f"({time.perf_counter() - t0:.0f} s)")

    t0 = time.perf_counter()
    bad_replica = pairs = elements = twice_differs = index_differs = 0
    for t in range(3, args.t_max + 1):
        once, twice, steps = replica_all_s(t)
        ref = np.concatenate([torch_bits(t, s) for s in range(2, t)])
        pairs += t - 2
        elements += ref.size
        if not np.array_equal(once, ref):
            bad_replica += len(np.unique(steps[once != ref]))
        twice_differs += len(np.unique(steps[twice != ref]))
        r_ref = np.rint(ref.view(F32))
        index_differs += len(np.unique(steps[np.rint(twice.view(F32)) != r_ref]))
    print(f"2. replica vs torch, every 2 <= s < t <= {args.t_max}: {pairs} pairs, {elements} floats, "
          f"{bad_replica} pairs differ ({time.perf_counter() - t0:.0f} s)")
    print(f"   (two roundings, as the non-FMA kernel: floats differ in {twice_differs} pairs, "
          f"rounded indices in {index_differs})")
    rng = random.Random(0)
    sample = [(t, rng.randrange(2, t)) for t in (rng.randrange(3, args.t_max + 1) for _ in range(300))]
    bad_vs_shipped = 0
    for t, s in sample:
        once, _, steps = replica_all_s(t)
        if once[steps == s].tobytes() != _linspace_f32(t - 1, s).tobytes():
            bad_vs_shipped += 1
    print(f"   replica vs shipped on {len(sample)} sampled pairs: {bad_vs_shipped} differ")

    t0 = time.perf_counter()
    bad_big = bad_idx = 0
    for _ in range(args.random):
        t = rng.randrange(3, 10**6 + 1)
        s = rng.randrange(2, t)
        if _linspace_f32(t - 1, s).tobytes() != torch_bits(t, s).tobytes():
            bad_big += 1
        want = torch.round(torch.linspace(0, t - 1, s, dtype=torch.float32)).to(torch.int64).tolist()
        if t % s and uniform_indices(t, s) != want:
            bad_idx += 1
    print(f"3. {args.random} random pairs, t <= 10**6: floats differ in {bad_big}, uniform_indices in {bad_idx} "
          f"({time.perf_counter() - t0:.0f} s)")
    ok = not (bad_shipped or bad_replica or bad_vs_shipped or bad_big or bad_idx)
    print("all equal" if ok else "DIFFERENCES FOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
