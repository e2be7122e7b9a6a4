"""``--cache-dir``: byte ranges of remote files kept on disk between runs.

One folder per version of a remote file (its URL, size and ETag, hashed): ``data`` is a
sparse file the size of the remote one, holding the bytes fetched so far at their own
offsets; ``ranges`` lists them, one ``start end`` line each, appended only after the
bytes are written. A request is served from the cache when every byte it keeps is
there. Without --cache-dir nothing of a remote teacher is written to disk.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SlicerError

if TYPE_CHECKING:
    from .source import Pieces
    from .source import RemoteFile


class _Entry:
    def __init__(self, folder: Path, file: "RemoteFile"):
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / "file.json"
        if not meta.exists():
            meta.write_text(json.dumps({"url": file.url, "size": file.size, "etag": file.etag}) + "\n")
        self.fd = os.open(folder / "data", os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self.fd).st_size != file.size:
            os.ftruncate(self.fd, file.size)  # sparse: takes no space until written
        self.log = open(folder / "ranges", "a+", encoding="ascii")
        self.log.seek(0)
        self.starts: list[int] = []
        self.ends: list[int] = []
        for line in self.log:
            parts = line.split()
            if len(parts) == 2 and all(p.isdigit() for p in parts):  # a torn last line is ignored
                self._add(int(parts[0]), int(parts[1]))
        self.lock = threading.Lock()

    def _add(self, start: int, end: int) -> None:
        """Insert [start, end) into the sorted, disjoint intervals, merging neighbours."""
        i = bisect.bisect_left(self.ends, start)
        j = bisect.bisect_right(self.starts, end)
        if i < j:
            start, end = min(start, self.starts[i]), max(end, self.ends[j - 1])
        self.starts[i:j] = [start]
        self.ends[i:j] = [end]

    def covers(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self.starts, start) - 1
        return i >= 0 and self.ends[i] >= end


class RangeCache:
    def __init__(self, root: Path):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SlicerError(f"{self.root}: cannot create the cache folder: {e.strerror or e}") from e
        self._entries: dict[tuple, _Entry] = {}
        self._lock = threading.Lock()

    def _entry(self, file: "RemoteFile") -> _Entry:
        key = (file.url, file.size, file.etag)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]
                try:
                    entry = self._entries[key] = _Entry(self.root / digest, file)
                except OSError as e:
                    raise SlicerError(f"{self.root}: cannot use the cache: {e.strerror or e}") from e
            return entry

    def fill(self, file: "RemoteFile", start: int, pieces: "Pieces") -> bool:
        """Write the request's kept bytes into ``pieces`` if the cache has every one of them."""
        entry = self._entry(file)
        wanted = list(_kept(start, pieces))
        with entry.lock:
            if not all(entry.covers(a, a + len(dest)) for a, dest in wanted):
                return False
        for a, dest in wanted:
            if os.preadv(entry.fd, [dest], a) != len(dest):
                return False
        return True

    def store(self, file: "RemoteFile", start: int, pieces: "Pieces") -> None:
        entry = self._entry(file)
        try:
            for a, dest in _kept(start, pieces):
                os.pwrite(entry.fd, dest, a)
            with entry.lock:
                for a, dest in _kept(start, pieces):
                    entry.log.write(f"{a} {a + len(dest)}\n")
                    entry._add(a, a + len(dest))
                entry.log.flush()
        except OSError as e:
            raise SlicerError(f"{self.root}: cannot write the cache: {e.strerror or e}") from e


def _kept(start: int, pieces: "Pieces"):
    """(absolute offset, buffer) of every kept target of a request."""
    pos = start
    for dest, n in pieces.targets:
        if dest is not None and n:
            yield pos, dest[:n]
        pos += n
