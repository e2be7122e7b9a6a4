"""Sample this process's anonymous memory (RssAnon + RssShmem) while work runs.

The kernel keeps no high-water mark for anonymous memory alone (VmHWM counts
file-backed pages too, which for a memory-mapped teacher is just page cache), so
a thread samples /proc/self/status.
"""
from __future__ import annotations

import threading
from pathlib import Path

_STATUS = Path("/proc/self/status")


def anon_bytes() -> int:
    """RssAnon + RssShmem of this process now, in bytes (0 where /proc is missing)."""
    try:
        text = _STATUS.read_text()
    except OSError:
        return 0
    total = 0
    for line in text.splitlines():
        if line.startswith(("RssAnon:", "RssShmem:")):
            total += int(line.split()[1]) * 1024
    return total


class PeakSampler:
    """Context manager: ``peak`` is the largest sample seen (sampled every ``interval`` s)."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = anon_bytes()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slicer-memory", daemon=True)

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, anon_bytes())

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, anon_bytes())
