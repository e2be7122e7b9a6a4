"""One progress bar for every worker: the bytes of the shards in a staging folder.

Workers on other machines write their shards into shared storage, so the driver
counts what has landed there (``NAME.incomplete`` while written, ``NAME`` when done)
instead of collecting callbacks from every process.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

POLL_S = 0.5


class StagingProgress:
    """A tqdm bar on stderr, updated from the sizes of the shard files ``sizes`` (name -> planned bytes)."""

    def __init__(self, staging: Path, sizes: dict[str, int], desc: str = "shrink"):
        from tqdm import tqdm

        self.staging = Path(staging)
        self.sizes = dict(sizes)
        self.bar = tqdm(total=sum(self.sizes.values()), unit="B", unit_scale=True, unit_divisor=1000, desc=desc,
                        file=sys.stderr, dynamic_ncols=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="slicer-progress", daemon=True)
        self._thread.start()

    def written(self) -> int:
        total = 0
        for name, size in self.sizes.items():
            for path in (self.staging / name, self.staging / (name + ".incomplete")):
                try:
                    total += min(os.stat(path).st_size, size)
                    break
                except OSError:
                    continue
        return total

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            self._show()

    def _show(self) -> None:
        n = self.written()
        if n > self.bar.n:
            self.bar.update(n - self.bar.n)
        done = sum(1 for name in self.sizes if (self.staging / name).exists())
        self.bar.set_postfix_str(f"{done}/{len(self.sizes)} shards", refresh=False)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._show()
        self.bar.close()
