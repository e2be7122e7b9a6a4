"""Helpers shared by the bench/bench_*.py suites (not itself a suite)."""
from __future__ import annotations


def report(benchmark, nbytes: int, **extra) -> None:
    """Record bytes moved and GB/s (bytes / median seconds) in the benchmark's extra_info."""
    benchmark.extra_info["bytes_moved"] = nbytes
    benchmark.extra_info.update(extra)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable: the body ran once, untimed
        benchmark.extra_info["gb_per_s"] = round(nbytes / stats.stats.median / 1e9, 3)
