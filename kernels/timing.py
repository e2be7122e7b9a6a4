"""GPU timing for benchmarks, through Triton's ``do_bench`` (kept here: only kernels/ imports triton)."""
from __future__ import annotations

from collections.abc import Callable


def median_seconds(fn: Callable[[], object]) -> float:
    """Median seconds of ``fn`` on the GPU: do_bench flushes L2, synchronizes and repeats (~100 ms)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
