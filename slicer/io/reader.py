"""Read spans of teacher tensors through short-lived memory maps, and notice a teacher
that changes while it is read.

A chunk maps only the byte span it needs and unmaps it when the chunk's tensors are
dropped, so pages touched through the map are file-backed and never pile up in the
process (even when the teacher lives on tmpfs, where mapped pages count as shared
memory). Only the pages of the rows a gather actually touches are faulted in.

A teacher file truncated under a map kills the process with SIGBUS inside C code,
where Python cannot catch it. So each teacher file is mapped only while this process
holds a Linux read lease on it (``F_SETLEASE``): another process that opens it for
writing or truncates it then waits (up to /proc/sys/fs/lease-break-time, 45 s by
default) until we let go, and the lease shows the waiting writer, which the reader
checks before every chunk and turns into one clear error. Where no lease can be had
(another user's file, NFS, another OS) the file is read with ``pread`` into memory
instead, where a truncation is a short read, never a signal. Before every chunk, and
once more at the end, ``fstat`` must still show the size, modification time and
inode the header was read with.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import signal
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import SlicerError
from .format import FileStamp, TensorInfo

_PAGE = mmap.ALLOCATIONGRANULARITY
_F_SETSIG = getattr(fcntl, "F_SETSIG", 10)  # Linux: the signal a lease break sends
# The lease break is polled, not handled: it signals SIGURG, whose default action is to
# do nothing (the default SIGIO would kill the process).
_LEASE_SIGNAL = signal.SIGURG
USE_LEASES = hasattr(fcntl, "F_SETLEASE")  # tests turn this off to take the pread path


class TeacherReader:
    streams_copies = False  # whole-tensor copies are done from fd(path) (a remote reader streams them)
    reads_rows = True  # map() and span() take rows=: the pread path reads only the kept ones

    def __init__(self, stamps: Mapping[Path, FileStamp] | None = None) -> None:
        self._fds: dict[Path, int] = {}
        self._leased: set[Path] = set()
        self._expected: dict[Path, FileStamp] = dict(stamps or {})

    def fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise SlicerError(f"{path}: cannot open: {e.strerror or e}") from e
            now = FileStamp.of(os.fstat(fd))
            before = self._expected.setdefault(path, now)
            if now != before:
                os.close(fd)
                raise SlicerError(f"{path}: teacher file changed since its header was read "
                                  f"({_difference(before, now)}); nothing was written, run again")
            self._fds[path] = fd
            if USE_LEASES and _take_lease(fd):
                self._leased.add(path)
        return fd

    def check(self, path: Path) -> None:
        """The teacher file is as its header was read, and nobody is waiting to write it."""
        fd = self.fd(path)
        if path in self._leased and fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK:
            raise SlicerError(f"{path}: another process opened the teacher file for writing during the run; "
                              "stopped before it could change what is read (nothing was written)")
        now = FileStamp.of(os.fstat(fd))
        if now != self._expected[path]:
            raise SlicerError(f"{path}: teacher file changed during the run ({_difference(self._expected[path], now)}); "
                              "nothing was written")

    def check_all(self) -> None:
        """At the end (and after a failure): every file read is unchanged."""
        for path in list(self._fds):
            self.check(path)

    def map(self, info: TensorInfo, first: int, count: int, prefetch: bool = False,
            rows: tuple[int, range | tuple[int, ...]] | None = None) -> np.ndarray:
        """The bytes of elements first..first+count-1 of a tensor: a read-only uint8 array
        over a private map, unmapped when the last view of it is dropped (or, for a file
        without a lease, over a copy read with pread). ``rows`` (the span's row count and
        the rows the gather keeps) lets the pread path read just those."""
        itemsize = info.itemsize
        begin = info.offset + first * itemsize
        nbytes = count * itemsize
        if count == 0:
            return np.empty(0, dtype=np.uint8)
        self.check(info.path)
        fd = self.fd(info.path)
        if info.path not in self._leased:
            return _pread(fd, info, begin, nbytes, rows)
        aligned = begin - begin % _PAGE
        try:
            mm = mmap.mmap(fd, begin + nbytes - aligned, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=aligned)
        except (OSError, ValueError) as e:
            raise SlicerError(f"{info.path}: cannot map tensor {info.name!r}: {e}") from e
        if prefetch:
            mm.madvise(mmap.MADV_WILLNEED)  # start readahead now: helps a cold cache
        # The array keeps `mm` alive; the map closes when the last view is dropped.
        return np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=begin - aligned)

    def span(self, info: TensorInfo, first: int, count: int, dtype, prefetch: bool = False,
             rows: tuple[int, range | tuple[int, ...]] | None = None):
        """The same elements as a 1-D torch tensor of ``dtype`` (imports torch)."""
        import torch

        # torch warns that a map is read-only: we only ever read through it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(self.map(info, first, count, prefetch, rows)).view(dtype)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)  # releases the lease: a waiting writer goes on
        self._fds.clear()
        self._leased.clear()

    def __enter__(self) -> "TeacherReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _take_lease(fd: int) -> bool:
    """A read lease on the file, or False (not ours, open for writing elsewhere, NFS...)."""
    try:
        fcntl.fcntl(fd, _F_SETSIG, _LEASE_SIGNAL)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError:
        return False
    return True


def _pread(fd: int, info: TensorInfo, begin: int, nbytes: int, rows) -> np.ndarray:
    """The span in anonymous memory. Where rows of a page or more are skipped, only the
    kept rows are read: the pages of the others are never touched, so never resident."""
    # Fresh anonymous pages, never reused heap: rows skipped stay untouched, and the
    # memory goes back to the system when the chunk is dropped.
    mm = mmap.mmap(-1, nbytes)
    view = memoryview(mm)
    for start, length in _pieces(nbytes, rows):
        done = 0
        while done < length:
            try:
                n = os.preadv(fd, [view[start + done:start + length]], begin + start + done)
            except OSError as e:
                raise SlicerError(f"{info.path}: cannot read tensor {info.name!r}: {e.strerror or e}") from e
            if n == 0:
                raise SlicerError(f"{info.path}: teacher file ended while reading tensor {info.name!r} "
                                  "(truncated during the run); nothing was written")
            done += n
    view.release()
    return np.frombuffer(mm, dtype=np.uint8)  # keeps the map alive


def _pieces(nbytes: int, rows) -> list[tuple[int, int]]:
    """(offset, length) runs of kept rows; the whole span where rows are small or all kept."""
    if rows is None or not rows[0]:
        return [(0, nbytes)]
    count, kept = rows
    row = nbytes // count
    if row < _PAGE or (isinstance(kept, range) and kept.step == 1):
        return [(0, nbytes)]
    runs: list[list[int]] = []
    for i in kept:
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return [(a * row, (b - a) * row) for a, b in runs]


def _difference(before: FileStamp, now: FileStamp) -> str:
    if now.size != before.size:
        return f"size {before.size} -> {now.size} bytes"
    if (now.ino, now.dev) != (before.ino, before.dev):
        return "replaced by another file"
    return "modified: its modification time changed"
