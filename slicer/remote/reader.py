"""The engine's reader for a remote teacher: fetches ahead of it, a few requests in flight.

It knows every span the engine will ask for, in order (:func:`ranges.plan_spans`), so a
few worker threads pull the coalesced requests one after another and fill span
buffers while the engine gathers earlier ones. Each buffer is the size of its span
(a fresh anonymous map: the pages of unkept rows are never touched, so never resident), and
only its kept rows are fetched; the gather reads nothing else. What is fetched but not
yet used stays under ``ahead`` bytes, so memory stays flat whatever the model.
"""
from __future__ import annotations

import collections
import mmap
import threading
import time
from collections.abc import Iterable, Iterator

import numpy as np

from ..errors import SlicerError
from ..io.format import TensorInfo
from .adaptive import AdaptivePolicy, Profile
from .source import Pieces
from .ranges import Request, Span, coalesce, copy_spans

WAIT_S = 0.1  # waits wake this often, so Ctrl-C and errors are noticed
CLOSE_WAIT_S = 2.0  # at most this long for the workers to finish their requests when the run ends


class _Buffer:
    __slots__ = ("span", "array", "view", "charged", "pending", "sealed")

    def __init__(self, span: Span):
        self.span = span
        # A fresh anonymous map, not the allocator's memory: pages of unkept rows are never
        # touched, so never resident, and the whole span goes back to the system when the
        # engine drops it (heap memory freed by another thread's arena would stay resident).
        self.view = memoryview(mmap.mmap(-1, span.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
        self.array = np.frombuffer(self.view, dtype=np.uint8)  # numpy: the CPU path never imports torch
        self.charged = 0  # bytes of requests written into it (what it holds in memory)
        self.pending = 0  # requests issued for it and not done
        self.sealed = False  # every request it needs has been issued

    @property
    def ready(self) -> bool:
        return self.sealed and self.pending == 0


class RemoteReader:
    """Hands the engine span buffers in plan order; the interface of ``TeacherReader``."""

    streams_copies = True  # whole-tensor copies come as buffers (copy_blocks), not from a file descriptor

    def __init__(self, folder, spans: Iterable[Span], chunk_bytes: int, profile: Profile | None = None):
        self.folder = folder
        options = folder.options
        self.chunk_bytes = chunk_bytes
        policy = (AdaptivePolicy(folder.fetcher.meter, options.gap_bytes, options.overfetch, profile)
                  if options.adaptive else None)
        self._requests: Iterator[Request] = coalesce(spans, options.gap_bytes, options.max_request_bytes, options.overfetch,
                                                     policy)
        self._limit = options.ahead(chunk_bytes)
        self._cond = threading.Condition()
        self._queue: collections.deque[_Buffer] = collections.deque()  # registered, in plan order
        self._buffers: dict[int, _Buffer] = {}  # id(span) -> its buffer, while registered
        self._ahead = 0
        self._exhausted = False
        self._stopped = False
        self._error: BaseException | None = None
        self.files_read: set = set()
        self._workers = [threading.Thread(target=self._work, name=f"slicer-fetch-{i}", daemon=True)
                         for i in range(options.requests)]
        for w in self._workers:
            w.start()

    # -- the engine's side -------------------------------------------------------------

    def map(self, info: TensorInfo, first: int, count: int, prefetch: bool = False, rows=None) -> np.ndarray:
        """Elements first..first+count-1 of a tensor (its kept rows filled), as uint8 bytes:
        the local reader's ``map`` (``rows``: this reader already fetches only the kept rows)."""
        if count == 0:
            return np.empty(0, dtype=np.uint8)
        itemsize = info.itemsize
        return self._take(info.path, info.offset + first * itemsize, count * itemsize)

    def span(self, info: TensorInfo, first: int, count: int, dtype, prefetch: bool = False):
        """Elements first..first+count-1 of a tensor as a 1-D torch tensor of ``dtype``, fetched
        now, outside the plan's order (imports torch). Dequantized jobs read their weights and
        scales this way: their spans depend on the quantization layout, so they are not among
        the prefetched ones (``ranges.plan_spans``)."""
        import torch

        start = info.offset + first * info.itemsize
        with self._cond:
            self.files_read.add(info.path)
        data = self.folder.fetcher.read(self.folder.remote_file(info.path), start, start + count * info.itemsize)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype) if data else torch.empty(0, dtype=dtype)

    def copy_blocks(self, info: TensorInfo) -> Iterator[np.ndarray]:
        """A tensor kept whole, as byte blocks of at most a chunk each, in order."""
        for span in copy_spans(info.path, info.offset, info.nbytes, self.chunk_bytes):
            yield self._take(span.file, span.offset, span.nbytes)

    def _take(self, file, offset: int, nbytes: int) -> np.ndarray:
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                if self._queue and self._queue[0].ready:
                    buf = self._queue.popleft()
                    break
                if not self._queue and self._exhausted:
                    raise SlicerError(f"{file}: internal error: the remote reader has no more spans")
                if not any(w.is_alive() for w in self._workers):
                    raise SlicerError(f"{file}: internal error: the remote reader's workers stopped")
                self._cond.wait(WAIT_S)
            del self._buffers[id(buf.span)]
            self._ahead -= buf.charged
            self._cond.notify_all()
        span = buf.span
        if (span.file, span.offset, span.nbytes) != (file, offset, nbytes):
            raise SlicerError(f"{file}: internal error: the remote reader is out of step with the engine "
                              f"(has bytes {span.offset}+{span.nbytes}, asked for {offset}+{nbytes})")
        return buf.array

    # -- the workers' side ----------------------------------------------------------------

    def _work(self) -> None:
        try:
            self._fetch_requests()
        except BaseException as e:  # noqa: BLE001 - never die silently: the engine would wait forever
            with self._cond:
                self._error = self._error or e
                self._cond.notify_all()

    def _fetch_requests(self) -> None:
        while True:
            with self._cond:
                while not self._may_issue():
                    if self._stopped or self._error is not None or self._exhausted:
                        return
                    self._cond.wait(WAIT_S)
                try:
                    req = next(self._requests, None)
                except BaseException as e:  # noqa: BLE001 - e.g. a bug in planning: shown in the engine
                    self._error = self._error or e
                    self._cond.notify_all()
                    return
                if req is None:
                    self._exhausted = True
                    self._cond.notify_all()
                    return
                targets = self._issue(req)
            try:
                self.folder.fetcher.fill(self.folder.remote_file(req.file), req.start, req.end, Pieces(targets),
                                         metered=True)
            except BaseException as e:  # noqa: BLE001 - re-raised in the engine's thread
                with self._cond:
                    self._error = self._error or e
                    self._cond.notify_all()
                return
            finally:
                del targets  # views of span buffers: a waiting worker must not keep a used span alive
            with self._cond:
                for span, _, _ in req.pieces:
                    if span is not None:
                        self._buffers[id(span)].pending -= 1
                self._cond.notify_all()

    def _may_issue(self) -> bool:
        if self._stopped or self._error is not None or self._exhausted:
            return False
        # Below the limit, or the oldest span still needs requests (else nothing could finish).
        return self._ahead < self._limit or not self._queue or not self._queue[0].sealed

    def _issue(self, req: Request) -> list[tuple[memoryview | None, int]]:
        """Register the request's spans (buffers allocated on first use); its write targets."""
        self.files_read.add(req.file)
        targets = []
        for span, off, n in req.pieces:
            if span is None:
                targets.append((None, n))
                continue
            buf = self._buffers.get(id(span))
            if buf is None:
                buf = self._buffers[id(span)] = _Buffer(span)
                self._queue.append(buf)
            buf.pending += 1
            buf.charged += n
            self._ahead += n
            targets.append((buf.view[off:off + n], n))
        for span in req.seals:
            self._buffers[id(span)].sealed = True
        return targets

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        deadline = time.monotonic() + CLOSE_WAIT_S
        for w in self._workers:  # a request in flight ends at its timeout; the threads are daemons
            w.join(timeout=max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "RemoteReader":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if exc_type is None and self._error is None:
            # Stores that cannot refuse a changed file per request are checked once more.
            self.folder.check_unchanged(self.files_read)
