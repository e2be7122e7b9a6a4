"""Adaptive coalescing: keep the byte budget while bandwidth limits, bridge gaps while requests do.

A remote run is limited by one of two things: bytes (the bandwidth) or requests (each
costs client CPU, server time, or a round trip shared by the requests in flight). The two
overlap (while the link carries some requests' bytes, others are being made), so a stretch
of kept runs fetched one request each takes about max(bytes / bandwidth, requests x c),
c the cost of one request: requests limit exactly where the requests are shorter than
``bandwidth x c`` bytes. Which one limits depends on the link, the server, the machine
and the rows: at 100 MB/s a 4 kB gap takes 41 us, at 1 GB/s 4 us, while a request costs
20 us-1 ms (bench/remote.py --which gap). So the run measures both (:class:`Meter`):

* ``bytes_per_s``: the run's requests until ``PROBE_REQUESTS`` of them are done bridge every
  gap up to ``PROBE_GAP_BYTES``, in requests of at most ``PROBE_REQUEST_BYTES`` (those in
  flight meanwhile too: a few MB in all); alone on the link, they show its bandwidth, counted
  from the first byte to the last request's end; then the best window's rate, if higher. Small requests
  alone would only show how fast requests go, and every later rule would take that for
  the link;
* c: over windows of >= 0.1 s (the first: any) and >= 32 requests of small requests (at most
  ``COST_MAX_REQUEST_BYTES`` on average), the window's time per request less the time one
  request's bytes take at that bandwidth; a moving average over such windows. Where the
  requests limit, the time per request is c; where the link does, what is left is small.
  Until a window has measured it, c is taken to be ``ASSUMED_REQUEST_S``.

:class:`AdaptivePolicy` then decides before each kept run: where the fixed rule's recent
requests (or, where it made none, the recent kept runs) are shorter than ``bandwidth x c``
bytes, requests limit and gaps up to that many bytes are bridged
(each takes less time as bytes than it saves as a request), with no byte budget; else the
bandwidth limits and the fixed rule applies (``RemoteOptions.gap_bytes`` within the
``overfetch`` budget, at most 1.1x the kept bytes): more requests cost nothing there.
``--coalesce-gap`` or ``--max-overfetch`` turn this off (the fixed rule only).
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

WINDOW_S = 0.1  # a window closes after this long...
WINDOW_REQUESTS = 32  # ...and at least this many requests (short windows catch bursts, not rates)
MAX_GAP_BYTES = 64 << 20  # never bridge more than this, whatever the measurement (a stalled window)
COST_WEIGHT = 0.5  # a window's cost per request in the moving average
COST_MAX_REQUEST_BYTES = 1 << 20  # windows of larger requests on average say nothing of a request's cost
RUNS_HORIZON_BYTES = 4 << 20  # kept runs further back than about this many kept bytes weigh little
PROBE_REQUESTS = 8  # the run's first requests...
PROBE_GAP_BYTES = 1 << 20  # ...bridge gaps up to this long...
PROBE_REQUEST_BYTES = 512 << 10  # ...in requests of at most this many bytes (4 MB or so): they show the bandwidth
# What a request is taken to cost until a window of small requests has measured it: about what one
# cost on loopback on a quiet machine with http11's hand parser, before h11 (bench/RESULTS.md); through
# h11 one costs more, so this errs toward keeping the budget. Where it makes the rule keep the budget,
# the budget's small requests measure the real cost at once; where it bridges, requests would cost at
# least this much more than their bytes take anyway.
ASSUMED_REQUEST_S = 100e-6


class Meter:
    """What a request costs and what the link delivers, measured as the run goes (module
    docstring). Thread-safe: ``delivered`` as bytes arrive, ``record`` as requests complete."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._probe_n = 0
        self._probing = True
        self._first_byte: float | None = None
        self._start: float | None = None  # the current window's
        self._n = 0  # requests completed in it
        self._bytes = 0  # bytes delivered in it (or, during the probe, since the first request)
        self.windows = 0
        self.bytes_per_s = 0.0  # the probe's, or the best window's
        self.request_s_avg: float | None = None  # the cost windows' moving average

    def delivered(self, nbytes: int) -> None:
        """``nbytes`` of a metered request's response arrived (rates count bytes as they arrive:
        counted as requests complete, large ones finishing together would look like a burst)."""
        with self._lock:
            if self._first_byte is None:
                self._first_byte = self._clock()
            self._bytes += nbytes

    def record(self, nbytes: int) -> None:
        """A metered request of ``nbytes`` completed."""
        now = self._clock()
        with self._lock:
            if self._probing:  # the first requests and their company: the link's bandwidth
                self._probe_n += 1
                # From the first byte (a first request's wait is a request's cost, not bandwidth)
                if self._probe_n >= PROBE_REQUESTS and self._first_byte is not None and now > self._first_byte:
                    self.bytes_per_s = max(self.bytes_per_s, self._bytes / (now - self._first_byte))
                    self._start, self._n, self._bytes = now, 0, 0  # windows begin after the probe
                    self._probing = False
                return
            if self._start is None:
                self._start, self._n, self._bytes = now, 0, 0
                return
            self._n += 1
            elapsed = now - self._start
            # The first window closes on its requests alone: a short run needs its first cost soon.
            if (elapsed >= WINDOW_S or self.windows == 0) and self._n >= WINDOW_REQUESTS:
                self.windows += 1
                self.bytes_per_s = max(self.bytes_per_s, self._bytes / elapsed)
                if self._bytes <= COST_MAX_REQUEST_BYTES * self._n:
                    cost = max(0.0, (elapsed - self._bytes / self.bytes_per_s) / self._n)
                    avg = self.request_s_avg
                    self.request_s_avg = cost if avg is None else (1 - COST_WEIGHT) * avg + COST_WEIGHT * cost
                self._start, self._n, self._bytes = now, 0, 0

    @property
    def request_s(self) -> float | None:
        """The measured cost of one request, in seconds of the run; None before a window."""
        with self._lock:
            return self.request_s_avg

    def measured(self) -> tuple[float, float] | None:
        """(bytes per second, seconds per request) once the probe has measured the bandwidth, else
        None; until a window has measured a request's cost, ``ASSUMED_REQUEST_S``."""
        with self._lock:
            if not self.bytes_per_s:
                return None
            return self.bytes_per_s, self.request_s_avg if self.request_s_avg is not None else ASSUMED_REQUEST_S

    def probing(self) -> bool:
        with self._lock:
            return self._probing

    def gap_worth_a_request(self) -> int | None:
        """Bytes that take as long to fetch as one request costs; None until measured."""
        m = self.measured()
        return None if m is None else int(min(MAX_GAP_BYTES, m[0] * m[1]))

    def describe(self) -> dict:
        cost = self.request_s  # None: never measured (the assumed cost decided)
        return {"measured_bytes_per_s": round(self.bytes_per_s),
                "measured_request_us": round(cost * 1e6, 1) if cost is not None else None,
                "bridged_gap_bytes": self.gap_worth_a_request()}


class AdaptivePolicy:
    """What ``ranges.coalesce`` asks before each run of kept bytes: (gap, overfetch) now, and
    ``max_bytes`` (None: the caller's) (module docstring). Used by one thread at a time."""

    def __init__(self, meter: Meter, gap: int, overfetch: float):
        self.meter = meter
        self.gap = gap
        self.overfetch = overfetch
        self.max_bytes: int | None = PROBE_REQUEST_BYTES
        self._runs = 0.0  # recent kept runs, decaying with the bytes kept after them (RUNS_HORIZON_BYTES)
        self._run_bytes = 0.0
        self._budget_requests = 0.0  # the same for the requests made by the fixed rule
        self._budget_bytes = 0.0
        self._bridging = False  # the last decision
        self.decisions = {"probe": 0, "unmeasured": 0, "budget": 0, "bridge": 0}  # runs decided each way

    def request_bytes(self) -> float:
        """What one request of the fixed rule would fetch here: the mean of its recent requests
        (runs merged within the budget), or of the recent kept runs where it has made none."""
        if self._budget_requests >= 1:
            return self._budget_bytes / self._budget_requests
        return self._run_bytes / self._runs if self._runs else 0.0

    def issued(self, nbytes: int) -> None:
        """``ranges.coalesce`` made a request of ``nbytes``."""
        if not self._bridging:
            keep = math.exp(-nbytes / RUNS_HORIZON_BYTES)
            self._budget_requests = self._budget_requests * keep + 1
            self._budget_bytes = self._budget_bytes * keep + nbytes

    def limits(self, run_bytes: int = 0) -> tuple[int, float]:
        if run_bytes:
            keep = math.exp(-run_bytes / RUNS_HORIZON_BYTES)
            self._runs = self._runs * keep + 1
            self._run_bytes = self._run_bytes * keep + run_bytes
        if self.meter.probing():  # the probe's requests: every gap under 1 MB bridged, 512 kB each
            self.decisions["probe"] += 1
            self._bridging = True
            return PROBE_GAP_BYTES, math.inf
        self.max_bytes = None
        worth = self.meter.gap_worth_a_request()
        self._bridging = worth is not None and self.request_bytes() < worth
        if worth is None:  # the probe's answers are still on their way: the fixed rule
            self.decisions["unmeasured"] += 1
            return self.gap, self.overfetch
        if self._bridging:  # requests limit: bridge what takes less time than a request
            self.decisions["bridge"] += 1
            return worth, math.inf
        self.decisions["budget"] += 1  # the bandwidth limits: the byte budget
        return self.gap, self.overfetch
