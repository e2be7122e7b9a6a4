"""How long a 429 or 503 asks the client to wait: ``Retry-After`` and the ``RateLimit`` headers. Pure.

The Hub answers a rate-limited call with 429 and the IETF draft's headers
(draft-ietf-httpapi-ratelimit-headers-09, as huggingface_hub >= 1.2 reads them):
``RateLimit: "api";r=0;t=55`` (nothing remaining, the window resets in 55 s) and
``RateLimit-Policy: "fixed window";"api";q=5000;w=300``. Object stores and CDNs send
``Retry-After`` (seconds, or an HTTP date) with a 429 or a 503. Waiting the stated time
is what the service asks; retrying on our own schedule only spends more of the window.
"""
from __future__ import annotations

import email.utils
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from .source import Transient

log = logging.getLogger("slicer")

# "api";r=0;t=55 -> r (remaining), t (seconds to the reset); the same pattern huggingface_hub reads
_RATELIMIT = re.compile(r"\"(?P<kind>[^\"]*)\"\s*;\s*r\s*=\s*(?P<r>\d+)\s*;\s*t\s*=\s*(?P<t>\d+)")
_POLICY = re.compile(r"q\s*=\s*(?P<q>\d+).*?w\s*=\s*(?P<w>\d+)")
MAX_WAIT_S = 3600.0  # a stated wait longer than this is not believed (a wrong clock, a broken proxy)


@dataclass(frozen=True)
class Wait:
    """A wait the service asked for: ``seconds``, and what it said (for the one log line)."""

    seconds: float
    status: int
    said: str  # e.g. 'RateLimit "api";r=0;t=55, policy q=5000;w=300' or 'Retry-After 30'


def _header(headers: Mapping[str, str], name: str) -> str | None:
    got = headers.get(name)
    if got is None:  # plain dicts (tests) are case-sensitive; HTTP libraries' header maps are not
        lower = name.lower()
        got = next((v for k, v in headers.items() if k.lower() == lower), None)
    return got


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After``: delta seconds or an HTTP date; None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def stated_wait(status: int, headers: Mapping[str, str], now: float | None = None) -> Wait | None:
    """The wait a 429 (RateLimit with nothing remaining, or Retry-After) or a 503 (Retry-After) states; else None."""
    if status not in (429, 503):
        return None
    if status == 429:
        rl = _header(headers, "RateLimit")
        m = _RATELIMIT.search(rl or "")
        if m and int(m.group("r")) == 0:
            said = f"RateLimit {rl.strip()}"
            policy = _POLICY.search(_header(headers, "RateLimit-Policy") or "")
            if policy:
                said += f" (policy: {policy.group('q')} requests per {policy.group('w')} s)"
            return Wait(min(float(m.group("t")), MAX_WAIT_S), status, said)
    raw = _header(headers, "Retry-After")
    seconds = retry_after(raw, now)
    if seconds is None:
        return None
    return Wait(min(seconds, MAX_WAIT_S), status, f"Retry-After {raw.strip()}")


def rate_limited(status: int, headers: Mapping[str, str]) -> "RateLimited | None":
    """The exception for a 429 / 503 that states its wait (a source raises it), else None."""
    wait = stated_wait(status, headers)
    return RateLimited(wait) if wait is not None else None


class RateLimited(Transient):
    """A 429 or 503 that said how long to wait: the fetcher waits that long (every request
    pauses, not only this one) instead of its own backoff, and counts it."""

    def __init__(self, wait: Wait):
        super().__init__(f"HTTP {wait.status}, {wait.said}")
        self.wait = wait


class RateLimits:
    """The run's rate-limit state, shared by its threads: a 429 / 503 with a stated wait
    pauses every request until then (the window is the service's, not one request's),
    is logged once (with its numbers; later ones at debug level) and counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until = 0.0  # time.monotonic() before which no request is sent
        self.waits = 0  # rate-limited answers waited out
        self.waited_s = 0.0  # seconds requests were held back, counted once per pause (not per thread)
        self._logged = False

    def hit(self, what: str, wait: Wait) -> None:
        now = time.monotonic()
        with self._lock:
            self.waits += 1
            until = now + wait.seconds
            if until > self._until:
                self.waited_s += until - max(now, self._until)
                self._until = until
            first, self._logged = not self._logged, True
        (log.warning if first else log.debug)(
            "%s: rate limited (HTTP %d, %s): waiting %.0f s as the service asks%s", what, wait.status, wait.said,
            wait.seconds, "" if not first else "; later waits are counted in the summary")

    def pause(self) -> None:
        """Sleep until the service's stated wait has passed (no-op when none is pending)."""
        while True:
            with self._lock:
                left = self._until - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 1.0))
