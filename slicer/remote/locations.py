"""Where each file's bytes are for this run: one resolve per file, then the URL it redirected to.

The Hub's ``/resolve/`` URL answers every range request with a redirect to its CDN (a
signed URL, valid about an hour, that serves ``Range``), and the Hub limits resolver
calls per 5-minute window (3,000 per IP anonymous, 5,000 with a free account). A run
that sent every range request to ``/resolve/`` made a resolve per request: a 405B
teacher's million requests waited hours for the window. So a source follows the
redirect once per file, keeps where it led (:class:`Locations`), and sends its range
requests there; it resolves again only when the CDN refuses the URL (403: expired), when
the URL is about to expire by its own ``Expires`` / ``X-Amz-Expires``, or when the CDN
redirects again. Presigned object-store URLs and mirrors behind plain HTTP redirect the
same way.

Credentials belong to the origin they were given for: :func:`same_origin` decides
whether a request may carry ``Authorization`` (a CDN or another host never gets it, as
browsers and httpx drop it on a cross-origin redirect).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urljoin, urlsplit

MAX_REDIRECTS = 5
RENEW_FRACTION = 0.1  # a signed URL is resolved again once less than this share of its life is left...
RENEW_MAX_S = 60.0  # ...or less than this many seconds, whichever comes first


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def same_origin(a: str, b: str) -> bool:
    """Same scheme, host and port: where credentials for ``a`` may also go."""
    return origin(a) == origin(b)


def redirect_target(base: str, location: str) -> str:
    """The absolute URL of a redirect's ``Location`` (relative ones are common on the Hub)."""
    return urljoin(base, location.strip())


def expires_at(url: str, now: float | None = None) -> float | None:
    """When a signed URL stops working (epoch seconds), from its query: CloudFront's ``Expires``,
    S3's ``X-Amz-Date`` + ``X-Amz-Expires``; None when it does not say."""
    query = {k.lower(): v[0] for k, v in parse_qs(urlsplit(url).query).items() if v}
    if query.get("expires", "").isdigit():
        return float(query["expires"])
    amz_date, amz_expires = query.get("x-amz-date"), query.get("x-amz-expires")
    if amz_date and amz_expires and amz_expires.isdigit():
        try:
            signed = time.mktime(time.strptime(amz_date, "%Y%m%dT%H%M%SZ")) - time.timezone
        except ValueError:
            return None
        return signed + float(amz_expires)
    return None


@dataclass(frozen=True)
class Location:
    """Where one file's range requests go: ``url`` (``redirected``: not the file's own URL)."""

    url: str
    redirected: bool
    got_at: float  # time.time() when resolved
    expires: float | None  # time.time() after which the URL no longer works, when it says

    def fresh(self, now: float) -> bool:
        if self.expires is None:
            return True
        life = self.expires - self.got_at
        return now < self.expires - min(RENEW_MAX_S, max(0.0, RENEW_FRACTION * life))


class Locations:
    """Per file (by name): where its bytes were found, shared by the run's threads.

    ``lookup(name, resolve)`` returns the file's location, calling ``resolve()`` (which
    makes the resolver request and returns the URL it redirected to, or None when the
    file's own URL serves the bytes) only when none is known or the known one is stale;
    threads asking for the same file meanwhile wait for that one resolve."""

    def __init__(self, resolver: bool = False) -> None:
        # resolver: every request to a file's own URL is a resolver call (the Hub's /resolve/, which it
        # rate-limits whether it redirects or not); else only those answered with a redirect count.
        self.resolver = resolver
        self._lock = threading.Lock()
        self._where: dict[str, Location] = {}
        self._file_locks: dict[str, threading.Lock] = {}
        self.resolves = 0  # resolver requests made (see ``resolver``)

    def known(self, name: str) -> Location | None:
        with self._lock:
            loc = self._where.get(name)
        return loc if loc is not None and loc.fresh(time.time()) else None

    def remember(self, name: str, url: str, redirected: bool) -> Location:
        now = time.time()
        loc = Location(url, redirected, now, expires_at(url, now) if redirected else None)
        with self._lock:
            self._where[name] = loc
        return loc

    def count_resolve(self) -> None:
        with self._lock:
            self.resolves += 1

    def forget(self, name: str, loc: Location) -> None:
        """The CDN refused ``loc``: resolve again, unless another thread already has."""
        with self._lock:
            if self._where.get(name) is loc:
                del self._where[name]

    def file_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._file_locks.setdefault(name, threading.Lock())

    def lookup(self, name: str, resolve: Callable[[], str | None], own_url: str) -> Location:
        loc = self.known(name)
        if loc is not None:
            return loc
        with self.file_lock(name):  # one resolve per file, however many threads want it
            loc = self.known(name)
            if loc is None:
                target = resolve()
                loc = self.remember(name, target if target is not None else own_url, target is not None)
        return loc

    def open(self, name: str, own_url: str, send: Callable[[str, bool], "Response"]) -> "Response":
        """The response to one range request for file ``name``, sent where its bytes are.

        ``send(url, credentials)`` makes the request (``credentials``: the source's
        Authorization may go with it) without following redirects. The first request for
        a file goes to its own URL and is its resolve: a redirect is followed and where it
        led remembered. Later requests go there directly; a 401/403 from a redirected URL
        (a signed URL that expired) or a new redirect from it resolves again."""
        refused = False
        while True:
            loc = self.known(name)
            if loc is not None:
                resp = send(loc.url, same_origin(loc.url, own_url))
                if resp.status in REDIRECTS:  # the CDN moved it: follow from there, remember the new place
                    target = redirect_target(loc.url, resp.headers.get("Location") or "")
                    resp.close()
                    resp, url = self._follow(target, own_url, send, MAX_REDIRECTS - 1)
                    self.remember(name, url, True)
                    return resp
                if resp.status in (401, 403) and loc.redirected and not refused:
                    resp.close()  # expired (or revoked): resolve again, once per request
                    self.forget(name, loc)
                    refused = True
                    continue
                return resp
            with self.file_lock(name):  # one resolve per file, however many threads want it
                if self.known(name) is not None:
                    continue  # another thread resolved it meanwhile
                resp, url = self._follow(own_url, own_url, send, MAX_REDIRECTS)
                if resp.status < 300:  # a 4xx/5xx says nothing about where the bytes are
                    self.remember(name, url, url != own_url)
                return resp

    def _follow(self, url: str, own_url: str, send, hops: int) -> tuple["Response", str]:
        for _ in range(hops + 1):
            resp = send(url, same_origin(url, own_url))
            if url == own_url and (self.resolver or resp.status in REDIRECTS):
                self.count_resolve()
            if resp.status not in REDIRECTS:
                return resp, url
            location = resp.headers.get("Location")
            resp.close()
            if not location:
                raise RedirectError(f"HTTP {resp.status} without a Location")
            url = redirect_target(url, location)
        raise RedirectError(f"more than {hops} redirects")


REDIRECTS = (301, 302, 303, 307, 308)


class RedirectError(Exception):
    """Redirects that lead nowhere (none of them, or too many): the source says it as one line."""


class Response:
    """What ``Locations.open`` needs of a response (each source wraps its HTTP library's)."""

    status: int
    headers: "Mapping[str, str]"

    def close(self) -> None: ...
