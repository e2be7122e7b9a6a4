"""A lean HTTP/1.1 client for plain range requests: keep-alive connections, one request at a time each.

Why not urllib3 (which this replaced for ``http(s)://`` teachers): a remote run at the
defaults makes one request per kept row where rows are small (tens of thousands for an
8B teacher), and each cost ~390 us of client CPU through urllib3 (pool-key normalising,
URL parsing, ``email``-module header parsing, socket timeouts set twice per request),
~200 us through ``http.client``, ~60 us here (measured with 3,000 4 kB ranges on
loopback; bench/RESULTS.md). Client CPU per request is what decides whether fetching
only the kept rows can beat downloading everything (docs/remote.md).

What it speaks is plain HTTP/1.1 (RFC 9112): a request line and headers; a response's
status line, headers and a body framed by Content-Length, chunked transfer coding, or
the connection's end. Nothing else: no redirects (``locations.py`` follows them), no
retries (the fetcher's), no content decoding (``Accept-Encoding: identity`` is sent),
no proxies (as before). A connection is reused only after its response was read to the
end; a reused connection that fails before any byte of an answer (the server closed
it while idle) is replaced once at once, as browsers and urllib3 do for idempotent requests.
"""
from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from functools import lru_cache
from urllib.parse import urlsplit

MAX_LINE = 64 << 10  # a status or header line longer than this is not an HTTP server's
MAX_HEADERS = 200


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
def _split(url: str) -> tuple[tuple[str, str, int], str, str]:
    """(origin, request target, Host header) of an absolute http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == (443 if scheme == "https" else 80) else f"{shown}:{port}"
    return (scheme, host, port), target, host_header


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
        self.file = sock.makefile("rb", buffering=1 << 16)
        self.used = 0  # responses read on it

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.sock.close()

    def _line(self) -> bytes:
        line = self.file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise HttpError("a response line longer than 64 kB")
        return line

    def exchange(self, request: bytes, head: bool) -> "Response":
        try:
            self.sock.sendall(request)
            line = self._line()
        except TimeoutError:
            raise
        except OSError as e:  # reset or broken pipe before any byte of the answer
            raise _Dropped(f"the connection dropped before the answer: {e}") from e
        while True:
            if not line:
                raise _Dropped("the server closed the connection before answering")
            try:
                version, status, reason = (line.decode("latin-1").rstrip("\r\n").split(" ", 2) + [""])[:3]
                code = int(status)
            except ValueError:
                raise HttpError(f"not an HTTP status line: {line[:80]!r}") from None
            if not version.startswith("HTTP/1."):
                raise HttpError(f"not an HTTP/1.x response: {line[:80]!r}")
            headers = Headers()
            for _ in range(MAX_HEADERS + 1):
                h = self._line()
                if h in (b"\r\n", b"\n"):
                    break
                if not h:
                    raise HttpError("the connection ended inside the response's headers")
                name, sep, value = h.decode("latin-1").partition(":")
                if not sep:
                    raise HttpError(f"a malformed header line: {h[:80]!r}")
                name, value = name.strip().lower(), value.strip()
                headers[name] = f"{dict.get(headers, name)}, {value}" if name in headers else value
            else:
                raise HttpError(f"more than {MAX_HEADERS} response headers")
            if 100 <= code < 200:  # an interim answer (e.g. 103 Early Hints): the real one follows
                line = self._line()
                continue
            return Response(self, code, reason, headers, head, version == "HTTP/1.0")


class _Dropped(HttpError):
    """The connection ended before the answer began: on a reused connection, the server had closed it."""


class Response:
    def __init__(self, conn: Connection, status: int, reason: str, headers: Headers, head: bool, http10: bool):
        self.conn: Connection | None = conn
        self.status, self.reason, self.headers = status, reason, headers
        tokens = {t.strip().lower() for t in (headers.get("Connection") or "").split(",")}
        self._keep = "close" not in tokens and (not http10 or "keep-alive" in tokens)
        self._chunked = "chunked" in (headers.get("Transfer-Encoding") or "").lower()
        length = headers.get("Content-Length")
        if head or status in (204, 304):
            self._left: int | None = 0
        elif self._chunked:
            self._left = None
        elif length is not None:
            try:
                self._left = int(length)
            except ValueError:
                raise HttpError(f"a malformed Content-Length: {length!r}") from None
        else:  # framed by the connection's end: it cannot be reused
            self._left, self._keep = None, False
        self.done = self._left == 0 and not self._chunked

    def stream(self, block: int) -> Iterator[bytes]:
        """The body in blocks of at most ``block`` bytes; raises HttpError if it breaks off."""
        f = self.conn.file
        try:
            if self._chunked:
                yield from self._chunks(f, block)
            elif self._left is None:  # until the connection closes
                while data := f.read1(block):
                    yield data
            else:
                while self._left:
                    data = f.read1(min(block, self._left))
                    if not data:
                        raise HttpError(f"the connection ended with {self._left} bytes of the body unread")
                    self._left -= len(data)
                    yield data
        except OSError as e:  # timed out, reset
            raise HttpError(f"reading the body failed: {e}") from e
        self.done = True

    def _chunks(self, f, block: int) -> Iterator[bytes]:
        while True:
            size_line = self.conn._line()
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError(f"a malformed chunk size: {size_line[:40]!r}") from None
            if size == 0:
                while self.conn._line() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return
            while size:
                data = f.read1(min(block, size))
                if not data:
                    raise HttpError("the connection ended inside a chunk")
                size -= len(data)
                yield data
            f.readline(3)  # the chunk's CRLF


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
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        conn = self._take(origin)
        reused = conn is not None
        for _ in range(2):
            if conn is None:
                conn = self._open(origin)
            try:
                return conn.exchange(request, head=method == "HEAD")
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
        """Return the response's connection to the pool if its body was read to the end; else close it."""
        conn, resp.conn = resp.conn, None
        if conn is None:
            return
        if resp.done and resp._keep:
            conn.used += 1
            with self._lock:
                self._idle.setdefault(conn.origin, []).append(conn)
        else:  # unread bytes would poison its next answer
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
