"""Adaptive coalescing: the fewest bytes whose time stays near the fastest choice's, measured as the run goes.

Bytes cost something beyond time: egress is metered, the Hub's bandwidth and a shared link
are other people's too. So the rule is explicit: of the ways to fetch the plan's kept runs,
take the **fewest bytes whose predicted time T stays within** ``T_fast + SHARE_OF_SAVING x
(T_all - T_fast)``, T_fast the fastest way's predicted time and T_all that of downloading
every file the run reads: at most half the time saved over downloading everything is spent
on fetching fewer bytes, and never more than the download would take. Where bridging every
gap is as slow as the download (gaps as large as the rows kept), T_all = T_fast and the
rule is simply the fastest way's fewest bytes.

The ways (:class:`Profile`, from the plan, before the first request): bridging every gap
between consecutive kept runs of a file up to a threshold g, for g each size of gap the plan
has, and none. The plan knows every kept run, so each way's bytes B(g) (the kept bytes and
those gaps) and requests R(g) (one per unbridged run, at least one per ``max_request_bytes``)
are sums over the sorted gaps.
A way's time T = B / bandwidth + R x c, c what a request costs the run (client CPU, the
server's, a round trip shared by the requests in flight). The sum, not the max: the link
carries some requests' bytes while others are made, but on the loopback bench the fixed
rule's 30,224 small requests took about the sum (a max, or a smooth max between, predicted
runs of many small requests several seconds too fast, and chose them: bench/RESULTS.md,
2026-12-07 third pass). So bridging a class of gaps is all or nothing by time (each gap of g
bytes saves c and costs g / bandwidth), and the share of the saving is what lets a threshold
with fewer bytes be chosen where it is not the fastest. The chosen g goes to
``ranges.coalesce`` as the gap, with no byte budget. (Bridging part of a class of gaps through
a budget was tried: coalesce spends a budget in plan order, on whichever gaps come first, so
the bench run made ~12,000 requests where ~100 were predicted, and fetched other bytes than
chosen; RESULTS.md.)

Bandwidth and c come from :class:`Meter`, and the choice is made again whenever they move,
though a way stays while its time and bytes are within ``STICK`` of the new bound and of the
new choice's bytes (a run that flips between ways as c wavers around a gap's time pays for both):

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
  Until a window has measured it, c is taken to be ``ASSUMED_REQUEST_S``: low on purpose,
  so the first choice fetches few bytes in small requests, which measure c at once (a
  choice that bridges everything makes no small requests and would never correct a c
  assumed too high).

``--coalesce-gap`` or ``--max-overfetch`` turn this off (the fixed rule only:
``RemoteOptions.gap_bytes`` within the ``overfetch`` budget, at most 1.1x the kept bytes).
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable

import numpy as np

WINDOW_S = 0.1  # a window closes after this long...
WINDOW_REQUESTS = 32  # ...and at least this many requests (short windows catch bursts, not rates)
MAX_GAP_BYTES = 64 << 20  # never bridge more than this, whatever the measurement (nor count it a way)
COST_WEIGHT = 0.5  # a window's cost per request in the moving average
COST_MAX_REQUEST_BYTES = 1 << 20  # windows of larger requests on average say nothing of a request's cost
SHARE_OF_SAVING = 0.5  # of the time saved over downloading everything, at most this share buys fewer bytes
STICK = 0.1  # a new measurement changes the way only if the current one is now over the bound, or over the
#               fewest bytes within it, by more than this
FRONTIER_POINTS = 2048  # thresholds considered at most (sampled evenly over the sizes of gap the plan has)
PROBE_REQUESTS = 8  # the run's first requests...
PROBE_GAP_BYTES = 1 << 20  # ...bridge gaps up to this long...
PROBE_REQUEST_BYTES = 512 << 10  # ...in requests of at most this many bytes (4 MB or so): they show the bandwidth
# What a request is taken to cost until a window of small requests has measured it: about what one
# cost on loopback on a quiet machine with http11's hand parser, before h11 (bench/RESULTS.md); through
# h11 one costs more, so this errs toward fewer bytes in more requests, whose windows measure the real
# cost at once (a choice that bridged everything would make no small requests to measure it by).
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
        self.chosen: dict = {}  # the policy's last choice and its predictions (AdaptivePolicy), for the summary

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
                "bridged_gap_bytes": self.gap_worth_a_request(), **self.chosen}


class Profile:
    """The plan's kept runs as :func:`ranges.coalesce` sees them (pure): the kept bytes, the runs,
    the gaps between consecutive runs of a file (sorted), the bytes of the files read. ``ways()``:
    bytes and requests when the k smallest gaps are bridged, for k sampled from 0 to all."""

    def __init__(self, kept: int, runs: int, gaps: np.ndarray, file_bytes: int, max_bytes: int):
        self.kept, self.runs, self.file_bytes, self.max_bytes = kept, runs, file_bytes, max_bytes
        self.gaps = np.sort(np.asarray(gaps, dtype=np.int64))
        m = len(self.gaps)
        # The ways: every gap up to a threshold bridged, for each size of gap the plan has (where a
        # class of equal gaps ends), and none; FRONTIER_POINTS of them at most, evenly over the classes.
        ends = np.append(np.flatnonzero(np.diff(self.gaps)) + 1, m) if m else np.empty(0, np.int64)
        if len(ends) > FRONTIER_POINTS:
            ends = ends[np.unique(np.linspace(0, len(ends) - 1, FRONTIER_POINTS).round().astype(np.int64))]
        self.k = np.concatenate(([0], ends)).astype(np.int64)
        bridged = np.concatenate(([0], np.cumsum(self.gaps)))[self.k]
        self.bytes = kept + bridged
        self.requests = np.maximum(runs - self.k, np.ceil(self.bytes / max_bytes))

    @classmethod
    def of(cls, spans: Iterable, file_size: Callable[[Hashable], int], max_bytes: int) -> "Profile":
        """From the spans the reader will fetch (``ranges.plan_spans``), in order."""
        gaps: list[int] = []
        kept = runs = 0
        files: set = set()
        prev_file, prev_end = None, -1
        for span in spans:
            files.add(span.file)
            base = span.offset
            for rel, length in span.runs:
                start = base + rel
                if span.file == prev_file and prev_end <= start <= prev_end + MAX_GAP_BYTES:
                    gaps.append(start - prev_end)
                prev_file, prev_end = span.file, start + length
                kept += length
                runs += 1
        return cls(kept, runs, np.array(gaps, dtype=np.int64), sum(file_size(f) for f in files), max_bytes)

    def choose(self, bytes_per_s: float, request_s: float, current: int | None = None) -> tuple[int, float, int, dict]:
        """(gap, overfetch) for ``coalesce`` by the module's rule, the way's index (``current`` for the
        next call: a way still within ``STICK`` of the bound is kept), and what was predicted."""
        t = self.bytes / bytes_per_s + self.requests * request_s
        fastest = float(t.min())
        t_all = self.file_bytes / bytes_per_s
        bound = fastest + SHARE_OF_SAVING * max(0.0, t_all - fastest)
        i = int(np.argmax(t <= bound * (1 + 1e-9)))  # the first (fewest bytes) within the bound
        if current is not None and t[current] <= bound * (1 + STICK) and self.bytes[i] * (1 + STICK) >= self.bytes[current]:
            i = current  # within STICK of the bound and of the fewest bytes: no change worth its cost
        k = int(self.k[i])
        gap, overfetch = (int(self.gaps[k - 1]), math.inf) if k else (0, 0.0)  # every gap up to ``gap``, no budget
        return gap, overfetch, i, {"chosen_gap_bytes": gap,  # every gap up to it bridged (0: none), no budget
                                   "predicted_bytes_ratio": round(float(self.bytes[i]) / max(1, self.kept), 4),
                                   "predicted_s": round(float(t[i]), 3), "predicted_fastest_s": round(fastest, 3),
                                   "predicted_download_all_s": round(t_all, 3)}


class AdaptivePolicy:
    """What ``ranges.coalesce`` asks before each run of kept bytes: (gap, overfetch) now, and
    ``max_bytes`` (None: the caller's) (module docstring). Used by one thread at a time."""

    def __init__(self, meter: Meter, gap: int, overfetch: float, profile: Profile | None = None):
        self.meter = meter
        self.gap = gap
        self.overfetch = overfetch
        self.profile = profile
        self.max_bytes: int | None = PROBE_REQUEST_BYTES
        self._measured: tuple[float, float] | None = None  # what the current choice was made for
        self._choice: tuple[int, float] = (gap, overfetch)
        self._way: int | None = None  # the chosen way's index in the profile
        self.decisions = {"probe": 0, "unmeasured": 0, "chosen": 0, "choices": 0}  # runs decided each way

    def issued(self, nbytes: int) -> None:
        """``ranges.coalesce`` made a request of ``nbytes`` (nothing to learn from it here)."""

    def limits(self, run_bytes: int = 0) -> tuple[int, float]:
        if self.meter.probing():  # the probe's requests: every gap under 1 MB bridged, 512 kB each
            self.decisions["probe"] += 1
            return PROBE_GAP_BYTES, math.inf
        self.max_bytes = None
        measured = self.meter.measured()
        if measured is None or self.profile is None:  # the probe's answers are still on their way: the fixed rule
            self.decisions["unmeasured"] += 1
            return self.gap, self.overfetch
        if measured != self._measured:  # a new window moved the measurement: choose again
            self._measured = measured
            gap, overfetch, self._way, said = self.profile.choose(*measured, self._way)
            self._choice = (gap, overfetch)
            self.meter.chosen = said
            self.decisions["choices"] += 1
        self.decisions["chosen"] += 1
        return self._choice
