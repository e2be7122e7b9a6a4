"""Append a byte stream to a new file as fast as the disk takes it, hashing on the way.

Large outputs bypass the page cache (``O_DIRECT``): bytes are gathered into aligned
blocks that a background thread hashes (sha256) and writes while the next block fills.
Buffered writes of fresh pages can cost several times the disk's own speed (the kernel
must find free memory for every page, and on virtual machines that memory may have
been handed back to the host); direct writes skip that. Where the file system refuses
``O_DIRECT`` (tmpfs, some network file systems) the sink writes through the page cache.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import queue
import threading

import numpy as np

ALIGN = 4096  # O_DIRECT wants buffer, offset and length aligned to the logical block size
BLOCK_BYTES = 16 << 20
BLOCKS = 3  # one filling, one being hashed and written, one spare


class FileSink:
    """Write-only, append-only file. ``close()`` returns (size, sha256 hex or None)."""

    def __init__(self, path: os.PathLike, *, checksum: bool = True, direct: bool = True, block_bytes: int = BLOCK_BYTES):
        self.path = path
        self.size = 0
        self._hash = hashlib.sha256() if checksum else None
        self._fd = -1
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
            except OSError:
                self._fd = -1  # the file system refuses O_DIRECT: write through the page cache
        self.direct = self._fd >= 0
        if not self.direct:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            return
        block_bytes = max(ALIGN, block_bytes - block_bytes % ALIGN)
        self._free: queue.Queue = queue.Queue()
        for _ in range(BLOCKS):
            self._free.put(np.frombuffer(mmap.mmap(-1, block_bytes), dtype=np.uint8))  # page-aligned
        self._to_write: queue.Queue = queue.Queue()
        self._to_hash: queue.Queue = queue.Queue()
        self._pending: dict[int, int] = {}  # id(block) -> stages still using it
        self._lock = threading.Lock()
        self._block = self._free.get()
        self._fill = 0
        self._error: BaseException | None = None
        # Hashing and the (mostly waiting) direct write of a block run side by side.
        self._threads = [threading.Thread(target=self._stage, args=(q, fn), name=f"slicer-{name}", daemon=True)
                         for q, fn, name in ((self._to_write, self._write_block, "write"),
                                             (self._to_hash, self._hash_block, "hash"))]
        for t in self._threads:
            t.start()

    # -- the producer's side ------------------------------------------------------------

    def write(self, data) -> None:
        src = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        if not self.direct:
            self._write_buffered(src)
            return
        while src.size:
            n = min(src.size, self._block.size - self._fill)
            self._block[self._fill:self._fill + n] = src[:n]  # numpy copies without the GIL
            self._advance(n)
            src = src[n:]

    def copy_from(self, fd: int, offset: int, count: int) -> None:
        """Append ``count`` bytes of another file, read straight into the block."""
        while count:
            if self.direct:
                view = self._block[self._fill:self._fill + min(count, self._block.size - self._fill)]
            else:
                view = np.empty(min(count, 8 << 20), dtype=np.uint8)
            n = os.preadv(fd, [view], offset)
            if n == 0:
                raise OSError(0, "source file ended early")
            if self.direct:
                self._advance(n)
            else:
                self._write_buffered(view[:n])
            offset += n
            count -= n

    def _write_buffered(self, view: np.ndarray) -> None:
        if self._hash is not None:
            self._hash.update(view)
        self._write_all(view)
        self.size += view.size

    def _advance(self, n: int) -> None:
        self._fill += n
        self.size += n
        if self._fill == self._block.size:
            self._hand_over(final=False)

    def _hand_over(self, final: bool) -> None:
        self._check()
        item = (self._block, self._fill, final)
        with self._lock:
            self._pending[id(self._block)] = 2 if self._hash is not None else 1
        self._to_write.put(item)
        if self._hash is not None:
            self._to_hash.put(item)
        if not final:
            self._block = self._next_free()
            self._fill = 0

    def _next_free(self):
        while True:
            self._check()
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                pass

    def close(self) -> tuple[int, str | None]:
        """Flush, trim the alignment padding, close. Raises OSError if a write failed."""
        if self.direct:
            self._hand_over(final=True)
            self._stop()
            self._check()
        os.close(self._fd)
        self._fd = -1
        return self.size, self._hash.hexdigest() if self._hash is not None else None

    def abort(self) -> None:
        """Stop and close without flushing (the caller removes the file)."""
        if self.direct:
            self._error = self._error or InterruptedError("aborted")
            self._stop()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _stop(self) -> None:
        for q in (self._to_write, self._to_hash):
            q.put(None)
        for t in self._threads:
            t.join()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    # -- the hash and write threads -----------------------------------------------------

    def _stage(self, work: queue.Queue, fn) -> None:
        while (item := work.get()) is not None:
            block, n, final = item
            try:
                if self._error is None:
                    fn(block, n, final)
            except BaseException as e:  # noqa: BLE001 - re-raised in the producer
                self._error = e
            finally:
                with self._lock:
                    self._pending[id(block)] -= 1
                    free = self._pending[id(block)] == 0
                if free:
                    self._free.put(block)

    def _hash_block(self, block: np.ndarray, n: int, final: bool) -> None:
        self._hash.update(block[:n])  # releases the GIL

    def _write_block(self, block: np.ndarray, n: int, final: bool) -> None:
        padded = n + (-n % ALIGN)
        if padded > n:
            block[n:padded] = 0  # past the data: hashing reads only block[:n]
        self._write_all(block[:padded])
        if final and padded > n:
            os.ftruncate(self._fd, self.size)  # drop the padding the last block needed

    def _write_all(self, view: np.ndarray) -> None:
        mv = memoryview(view)
        while mv:
            mv = mv[os.write(self._fd, mv):]
