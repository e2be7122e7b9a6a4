"""Adaptive coalescing: bridge a gap when fetching it costs less time than another request, as measured.

A remote run is limited by one of two things: bytes (the bandwidth) or requests (each
costs client CPU, server time, or a round trip shared by the requests in flight). Which
one depends on the link, the server and the machine, and no fixed gap is right for all:
at 100 MB/s a 4 kB gap costs 41 us, at 1 GB/s 4 us, while a request here costs
0.1-1 ms (bench/remote.py --which gap). So the run measures both while it fetches:

* the cost of one request: its time to first byte divided by the requests in flight with
  it (Little's law), averaged per window; the lowest window's (where the link is saturated,
  a first byte also waits for the bytes ahead of it: that is bandwidth, counted below);
* ``bytes_per_s``: the most bytes delivered per second over a window (windows of large
  requests approach the bandwidth).

A request then costs ``request_s`` and a gap of g bytes ``g / bytes_per_s``: gaps up to
``bytes_per_s * request_s`` bytes are bridged, with no byte budget (where bandwidth limits,
that threshold is small and few bytes are bridged; where
requests limit, it is large). Until two windows are measured, the fixed rule applies
(``RemoteOptions.gap_bytes`` within the ``overfetch`` budget). Bridging makes requests
larger, so the measured bandwidth can only grow toward the link's: the rule explores
upward by itself. ``--coalesce-gap`` or ``--max-overfetch`` turn this off (fixed rule).
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

WINDOW_S = 0.1  # a window closes after this long...
WINDOW_REQUESTS = 16  # ...and at least this many requests (short windows catch bursts, not rates)
MIN_WINDOWS = 2  # measured windows before the measurement replaces the first guess
MAX_GAP_BYTES = 64 << 20  # never bridge more than this, whatever the measurement (a stalled window)


class Meter:
    """What a request costs and what the link delivers, measured as the run goes. Thread-safe.

    * Cost of one request: its time to first byte divided by the requests in flight with it
      (Little's law: k requests in flight, each waiting t before its bytes flow, complete at
      k / t per second; t holds the round trip, the server's and the client's work and any
      queueing for them). Averaged per window; the lowest window's mean is kept.
    * Bandwidth: the most bytes delivered per second over a window of wall time (windows of
      large requests approach the link's; small requests only ever underestimate it, which
      bridges less, never more).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._start: float | None = None
        self._n = 0
        self._bytes = 0
        self.windows = 0
        self.bytes_per_s = 0.0  # the best window's
        self._cost_sum = 0.0  # this window's requests' costs
        self._cost_n = 0
        self.request_s_min: float | None = None  # the lowest window's mean cost

    def record(self, nbytes: int, first_byte_s: float | None = None, in_flight: int = 1) -> None:
        """One request completed: ``nbytes`` response bytes, the first after ``first_byte_s``
        seconds, ``in_flight`` requests (this one included) in flight when it was sent."""
        now = self._clock()
        with self._lock:
            if first_byte_s is not None:
                self._cost_sum += first_byte_s / max(1, in_flight)
                self._cost_n += 1
            if self._start is None:  # the first completion starts the clock: its time was before
                self._start = now
                return
            self._n += 1
            self._bytes += nbytes
            elapsed = now - self._start
            if elapsed >= WINDOW_S and self._n >= WINDOW_REQUESTS:
                self.windows += 1
                self.bytes_per_s = max(self.bytes_per_s, self._bytes / elapsed)
                if self._cost_n:
                    # The lowest window: where the link is saturated, a first byte also waits for the
                    # bytes ahead of it, which is bandwidth, not what one more request costs.
                    mean = self._cost_sum / self._cost_n
                    self.request_s_min = mean if self.request_s_min is None else min(self.request_s_min, mean)
                self._start, self._n, self._bytes = now, 0, 0
                self._cost_sum, self._cost_n = 0.0, 0

    @property
    def request_s(self) -> float | None:
        """The measured cost of one request, in seconds of the run; None before a window."""
        with self._lock:
            return self.request_s_min

    def gap_worth_a_request(self) -> int | None:
        """Bytes that take as long to fetch as one request costs; None until measured."""
        cost = self.request_s
        with self._lock:
            if self.windows < MIN_WINDOWS or cost is None:
                return None
            return int(min(MAX_GAP_BYTES, self.bytes_per_s * cost))

    def describe(self) -> dict:
        cost = self.request_s
        return {"measured_bytes_per_s": round(self.bytes_per_s),
                "measured_request_us": round(cost * 1e6, 1) if cost is not None else None,
                "bridged_gap_bytes": self.gap_worth_a_request()}


class AdaptivePolicy:
    """What ``ranges.coalesce`` asks before each run of kept bytes: (gap, overfetch) now."""

    def __init__(self, meter: Meter, gap: int, overfetch: float):
        self.meter = meter
        self.gap = gap
        self.overfetch = overfetch

    def limits(self) -> tuple[int, float]:
        measured = self.meter.gap_worth_a_request()
        if measured is None:
            # Not measured yet (the first ~0.2 s): the fixed rule. Its requests are mostly one per
            # kept run, so the request rate is measured on small requests, where it means
            # something; bridging everything from the start, the "request rate" measured would only
            # be the bandwidth divided by the request size, and the rule would never bridge less.
            return self.gap, self.overfetch
        return measured, math.inf
