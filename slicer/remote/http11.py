"""A keep-alive HTTP/1.1 client for plain range requests, on h11: one request at a time per connection.

The protocol is h11's (the sans-IO HTTP/1.1 engine under httpx): it writes the requests and
parses the answers (status line, headers, interim 1xx answers, bodies framed by
Content-Length, chunked transfer coding or the connection's end, HEAD/204/304) and says
whether a connection may carry another request. This module only moves bytes between h11
and a socket, and keeps the idle connections.

Why not urllib3 (which this replaced for ``http(s)://`` teachers): a remote run at the
defaults makes one request per kept row where rows are small (tens of thousands for an
8B teacher), and each cost ~390 us of client CPU through urllib3 (pool-key normalising,
URL parsing, ``email``-module header parsing, socket timeouts set twice per request),
~140-165 us through h11 here (3,000 4 kB ranges on loopback, ``python bench/http_client.py``;
bench/RESULTS.md). Client CPU per request is what decides whether fetching only the kept rows
can beat downloading everything (docs/remote.md). Why h11 and not ``http.client``: a pooled
client on ``http.client`` measured the same CPU within noise, and ``http.client`` returns a 103
as the answer, reports a short body through ``read1`` only as an early end and takes a
non-numeric Content-Length for a body framed by the connection's end, so a client on it grows
protocol code of its own around it again. (The hand parser h11 replaced cost ~50-60 us,
but was a protocol implementation of slicer's own.)

Nothing beyond plain HTTP/1.1: no redirects (``locations.py`` follows them), no retries
(the fetcher's), no content decoding (``Accept-Encoding: identity`` is sent), no proxies
(as before). A connection is reused only after its answer was read to the end and h11
says both sides may go on (never an HTTP/1.0 server's: h11's rule); a reused connection
that fails before any byte of an answer (the server closed it while idle) is replaced once
at once, as browsers and urllib3 do for idempotent requests.
"""
from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from functools import lru_cache
from urllib.parse import urlsplit

import h11

MAX_HEAD = 64 << 10  # a response head longer than this is not an HTTP server's
RECV_BYTES = 64 << 10  # one recv: a small answer's head and body at once


class HttpError(Exception):
    """A transport failure: cannot connect, timed out, the connection dropped, a malformed response."""


class Refused(HttpError):
    """Nothing listens there (the connection was refused)."""


class Untrusted(HttpError):
    """The server's TLS certificate failed verification: no retry can change that."""


class Headers(dict):
    """Response headers, names lowercased; ``get`` takes any case. Repeated fields are joined with ", "."""

    def get(self, name: str, default=None):  # type: ignore[override]
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


@lru_cache(maxsize=256)
def _split(url: str) -> tuple[tuple[str, str, int], bytes, bytes]:
    """(origin, request target, Host header) of an absolute http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == (443 if scheme == "https" else 80) else f"{shown}:{port}"
    return (scheme, host, port), target.encode("latin-1"), host_header.encode("latin-1")


class _Dropped(HttpError):
    """The connection ended before the answer began: on a reused connection, the server had closed it."""


class Connection:
    def __init__(self, origin: tuple[str, str, int], timeout_s: float, tls: ssl.SSLContext | None):
        scheme, host, port = origin
        self.origin = origin
        try:
            sock = socket.create_connection((host, port), timeout=timeout_s)
        except ConnectionRefusedError as e:
            raise Refused(f"connection refused by {host}:{port}") from e
        except OSError as e:  # DNS, unreachable, timeout
            raise HttpError(f"cannot connect to {host}:{port}: {e}") from e
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request is one write; don't hold it back
            if scheme == "https":
                sock = (tls or ssl.create_default_context()).wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as e:
            sock.close()
            raise Untrusted(f"the certificate of {host}:{port} is not trusted: {e.verify_message}") from e
        except OSError as e:
            sock.close()
            raise HttpError(f"TLS with {host}:{port} failed: {e}") from e
        self.sock = sock
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.used = 0  # responses read on it

    def close(self) -> None:
        self.sock.close()

    def exchange(self, request: h11.Request) -> "Response":
        h = self.h11
        try:
            data = h.send(request) + h.send(h11.EndOfMessage())
        except h11.LocalProtocolError as e:  # a header value h11 will not send (say, a line break in it)
            raise HttpError(f"cannot send the request: {e}") from e
        answered = False  # any byte of the answer yet
        try:
            self.sock.sendall(data)
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    data = self.sock.recv(RECV_BYTES)
                    if not data and not answered:
                        raise _Dropped("the server closed the connection before answering")
                    answered = True
                    h.receive_data(data)
                elif type(event) is h11.Response:
                    return Response(self, event)
                elif type(event) is h11.ConnectionClosed:
                    raise HttpError("the connection ended inside the response's head")
                # else an interim answer (h11.InformationalResponse, e.g. 103 Early Hints): the real one follows
        except h11.RemoteProtocolError as e:
            raise HttpError(f"a malformed response (not HTTP/1.x?): {e}") from None
        except TimeoutError:
            raise
        except OSError as e:  # reset or broken pipe
            if answered:
                raise
            raise _Dropped(f"the connection dropped before the answer: {e}") from e


class Response:
    def __init__(self, conn: Connection, event: h11.Response):
        self.conn: Connection | None = conn
        self.status = event.status_code
        self.reason = event.reason.decode("latin-1")
        headers = Headers()
        for name, value in event.headers:  # h11 lowercases the names
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{dict.get(headers, key)}, {text}" if key in headers else text
        self.headers = headers
        self.done = False  # the body read to its end

    def stream(self, block: int) -> Iterator[bytes]:
        """The body in blocks of at most ``block`` bytes; raises HttpError if it breaks off."""
        conn = self.conn
        h, sock = conn.h11, conn.sock
        try:
            while True:
                event = h.next_event()
                kind = type(event)
                if event is h11.NEED_DATA:
                    h.receive_data(sock.recv(RECV_BYTES))  # b"": the connection's end (h11 decides what it means)
                elif kind is h11.Data:
                    data = event.data
                    if len(data) <= block:
                        yield data
                    else:
                        view = memoryview(data)
                        for i in range(0, len(data), block):
                            yield view[i:i + block]
                elif kind is h11.EndOfMessage:
                    self.done = True
                    return
                else:  # ConnectionClosed
                    raise HttpError("the connection ended inside the body")
        except h11.RemoteProtocolError as e:  # truncated (the server closed early), a malformed chunk
            raise HttpError(f"the body broke off: {e}") from None
        except OSError as e:  # timed out, reset
            raise HttpError(f"reading the body failed: {e}") from e

    def finished(self) -> bool:
        """Whether the body was read to its end; an empty body (HEAD, 204, 304, length 0) needs no reading."""
        if not self.done and self.conn is not None:
            try:  # h11 ends an empty body without more bytes; anything else means bytes were left unread
                self.done = type(self.conn.h11.next_event()) is h11.EndOfMessage
            except h11.ProtocolError:
                pass
        return self.done


class Pool:
    """Idle keep-alive connections per origin, shared by the run's threads."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._tls: ssl.SSLContext | None = None
        self.connections = 0  # opened, over the pool's life

    def request(self, method: str, url: str, headers: dict[str, str]) -> Response:
        """Send one request (no body) and read its answer's head; the caller reads the body
        (``Response.stream``) and hands the response back with :meth:`release`."""
        origin, target, host = _split(url)
        if origin[0] not in ("http", "https"):
            raise HttpError(f"not an http(s) URL: {url}")
        try:
            request = h11.Request(method=method, target=target,
                                  headers=[(b"Host", host), *((k.encode("latin-1"), v.encode("latin-1"))
                                                              for k, v in headers.items())])
        except (h11.LocalProtocolError, UnicodeEncodeError) as e:
            raise HttpError(f"cannot send the request: {e}") from e
        conn = self._take(origin)
        reused = conn is not None
        for _ in range(2):
            if conn is None:
                conn = self._open(origin)
            try:
                return conn.exchange(request)
            except _Dropped:
                conn.close()
                if not reused:
                    raise
                conn, reused = None, False  # the server closed it while idle: once more, on a new one
            except (OSError, HttpError) as e:
                conn.close()
                if isinstance(e, HttpError):
                    raise
                raise HttpError(f"the request failed: {e}") from e
        raise AssertionError("unreachable")

    def release(self, resp: Response) -> None:
        """Return the response's connection to the pool if its body was read to the end and h11
        lets it carry another request; else close it."""
        conn = resp.conn
        if conn is None:
            return
        done = resp.finished()
        resp.conn = None
        h = conn.h11
        if done and h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()
            conn.used += 1
            with self._lock:
                self._idle.setdefault(conn.origin, []).append(conn)
        else:  # unread bytes would poison its next answer; or "Connection: close", or framed by its end
            conn.close()

    def _take(self, origin) -> Connection | None:
        with self._lock:
            idle = self._idle.get(origin)
            return idle.pop() if idle else None

    def _open(self, origin) -> Connection:
        if origin[0] == "https" and self._tls is None:
            self._tls = ssl.create_default_context()
        conn = Connection(origin, self.timeout_s, self._tls)
        with self._lock:
            self.connections += 1
        return conn

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for c in conns:
                c.close()
