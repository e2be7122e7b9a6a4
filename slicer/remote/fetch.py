"""Every network call of one remote teacher: retried with backoff, its bytes counted, cached on request.

A request's bytes are written where they belong as they arrive (:class:`Pieces`); if
the response breaks off, is short, or errs with a retryable status, the whole request
is made again from its first byte, so a span is never used half-filled. Files that
changed (:class:`~slicer.remote.source.Changed`), are missing or are refused fail at
once, as one line.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import SlicerError
from .cache import RangeCache
from .adaptive import Meter
from .options import RemoteOptions
from .ratelimit import RateLimited, RateLimits
from .source import Pieces, RemoteFile, Source, Transient

log = logging.getLogger("slicer")
T = TypeVar("T")
MAX_BACKOFF_S = 30.0
MAX_RATE_LIMIT_WAITS = 12  # per request: a service that keeps saying "wait" past this many windows is refusing


class Fetcher:
    def __init__(self, source: Source, options: RemoteOptions):
        self.source = source
        self.options = options
        self.cache = RangeCache(options.cache_dir) if options.cache_dir is not None else None
        self._lock = threading.Lock()
        self.bytes_fetched = 0  # response bytes received, retried ones included
        self.requests = 0
        self.retries = 0
        self.from_cache = 0  # bytes served by the cache instead of the network
        self.limits = RateLimits()
        self.meter = Meter()  # request cost and bandwidth, for adaptive coalescing

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, retried with exponential backoff (and jitter) while it raises Transient;
        a rate limit that states its wait is waited out instead (``RateLimits``)."""
        delay = self.options.backoff_s
        attempt = waits = 0
        while True:
            self.limits.pause()
            try:
                return fn()
            except RateLimited as e:
                waits += 1
                if waits > MAX_RATE_LIMIT_WAITS:
                    raise SlicerError(f"{what}: {e} (still rate limited after {MAX_RATE_LIMIT_WAITS} waits)") from e
                self.limits.hit(what, e.wait)
            except Transient as e:
                if attempt == self.options.retries:
                    raise SlicerError(f"{what}: {e} (gave up after {attempt + 1} attempts)") from e
                log.debug("%s: %s; retrying in %.2f s", what, e, delay)
                with self._lock:
                    self.retries += 1
                time.sleep(delay * (0.5 + random.random()))
                delay = min(2 * delay, MAX_BACKOFF_S)
                attempt += 1

    @property
    def resolves(self) -> int:
        locations = getattr(self.source, "locations", None)  # sources that follow redirects count them
        return locations.resolves if locations is not None else 0

    def stats(self) -> dict:
        """What the summary and --json report of the network: requests, resolves, rate-limit waits."""
        return {"requests": self.requests, "resolves": self.resolves, "retries": self.retries,
                "rate_limit_waits": self.limits.waits, "rate_limit_wait_s": round(self.limits.waited_s, 3),
                **self.meter.describe()}

    def fill(self, file: RemoteFile, start: int, end: int, pieces: Pieces, metered: bool = False) -> None:
        """Bytes ``start..end-1`` of ``file`` into ``pieces``: all of them, or an exception.
        ``metered``: the reader's requests, which the meter measures (not the headers' reads)."""
        if self.cache is not None and self.cache.fill(file, start, pieces):
            with self._lock:
                self.from_cache += sum(n for dest, n in pieces.targets if dest is not None)
            return

        def counted(data) -> None:
            pieces.write(data)
            n = memoryview(data).nbytes
            with self._lock:
                self.bytes_fetched += n
            if metered:
                self.meter.delivered(n)

        def attempt() -> None:
            pieces.reset()
            with self._lock:
                self.requests += 1
            self.source.read(file, start, end, counted)
            if pieces.filled != end - start:
                raise Transient(f"the response ended after {pieces.filled} of {end - start} bytes")
            if metered:
                self.meter.record(end - start)

        self.call(f"{file.url}: bytes {start}-{end - 1}", attempt)
        if self.cache is not None:
            self.cache.store(file, start, pieces)

    def read(self, file: RemoteFile, start: int, end: int) -> bytes:
        buf = bytearray(end - start)
        self.fill(file, start, end, Pieces([(memoryview(buf), end - start)]))
        return bytes(buf)
