"""slicer/remote/http11.py (h11 on sockets) against scripted servers: the framings of RFC 9112, reuse, and failures."""
from __future__ import annotations

import socket
import threading

import pytest

from slicer.remote.http11 import HttpError, Pool, Refused


class Scripted:
    """A loopback server that answers each request it reads with the next scripted bytes
    (``None``: close the connection without answering; ``(bytes, "close")``: answer, then
    close). Records the requests."""

    def __init__(self, answers: list, connections: int = 4):
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.accepted = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, args=(connections,), daemon=True)
        self.thread.start()

    def _serve(self, connections: int) -> None:
        for _ in range(connections):
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                buf = b""
                while self.answers:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            break
                        buf += data
                    if b"\r\n\r\n" not in buf:
                        break
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    self.requests.append(head)
                    answer = self.answers.pop(0)
                    if answer is None:
                        break
                    if isinstance(answer, tuple):
                        conn.sendall(answer[0])
                        break
                    conn.sendall(answer)

    def close(self) -> None:
        self.sock.close()


def _get(pool: Pool, url: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    r = pool.request("GET", url, headers or {})
    body = b"".join(bytes(b) for b in r.stream(7))  # small blocks: bodies cross block boundaries
    pool.release(r)
    return r.status, body, r.headers


def test_framings_headers_and_reuse():
    body = bytes(range(256)) * 3
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:100], body[100:101], body[101:])) + b"0\r\nX-T: 1\r\n\r\n"
    srv = Scripted([
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-767/1000\r\nContent-Length: 768\r\n"
        b"Set-Thing: a\r\nset-thing: b\r\n\r\n" + body,
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked,
        b"HTTP/1.1 204 No Content\r\n\r\n",
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body, "close"),  # framed by the connection's end
    ])
    pool = Pool(5)
    try:
        status, got, headers = _get(pool, srv.url + "/f?x=1", {"Range": "bytes=0-767"})
        assert (status, got) == (206, body)
        assert headers.get("content-range") == headers.get("Content-Range") == "bytes 0-767/1000"
        assert headers.get("SET-THING") == "a, b"  # repeated fields joined
        assert srv.requests[0].split(b"\r\n")[:3] == [b"GET /f?x=1 HTTP/1.1", b"Host: 127.0.0.1:%d" % int(srv.url.rsplit(":", 1)[1]),
                                                       b"Range: bytes=0-767"]
        assert _get(pool, srv.url + "/f")[:2] == (200, body)  # 103 skipped, chunks joined, trailers read
        assert _get(pool, srv.url + "/f")[:2] == (204, b"")
        status, got, _ = _get(pool, srv.url + "/f")
        assert (status, got) == (200, body)
        assert srv.accepted == 1 and pool.connections == 1  # one keep-alive connection for all four
        assert pool._idle == {} or not any(pool._idle.values())  # "Connection: close": not reused
    finally:
        pool.close()
        srv.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_once():
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    srv = Scripted([ok, None, ok])  # the second request finds the first connection closed
    pool = Pool(5)
    try:
        assert _get(pool, srv.url + "/a")[:2] == (200, b"ok")
        assert _get(pool, srv.url + "/b")[:2] == (200, b"ok")
        assert srv.accepted == 2 and pool.connections == 2
    finally:
        pool.close()
        srv.close()


def test_an_unread_body_closes_the_connection_and_failures_are_http_errors():
    srv = Scripted([b"HTTP/1.1 500 Oops\r\nContent-Length: 5\r\n\r\nerror",
                    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "close")])  # and hangs up
    pool = Pool(5)
    try:
        r = pool.request("GET", srv.url + "/a", {})
        assert (r.status, r.reason) == (500, "Oops")
        pool.release(r)  # body unread: closed, not pooled
        assert not any(pool._idle.values())
        r = pool.request("GET", srv.url + "/b", {})
        with pytest.raises(HttpError, match="received 5 bytes, expected 10"):
            b"".join(r.stream(1 << 20))
        pool.release(r)
        srv.close()
        with pytest.raises(HttpError):
            pool.request("GET", srv.url + "/c", {})
    finally:
        pool.close()
        srv.close()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    with pytest.raises(Refused):
        Pool(5).request("GET", f"http://127.0.0.1:{port}/x", {})


def test_malformed_answers_are_refused():
    srv = Scripted([b"ICY 200 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"], connections=2)
    pool = Pool(5)
    try:
        with pytest.raises(HttpError, match="malformed response"):
            pool.request("GET", srv.url + "/a", {})
        with pytest.raises(HttpError, match="malformed response.*Content-Length"):
            pool.request("GET", srv.url + "/b", {})
    finally:
        pool.close()
        srv.close()


def test_an_answer_without_a_body_goes_back_to_the_pool_unread():
    # HEAD (its Content-Length is the file's, no body follows) and 304: reused without reading a body,
    # as http_source's stat does; a header value with a line break is refused before anything is sent.
    srv = Scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: \"e\"\r\n\r\n",
                    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    pool = Pool(5)
    try:
        r = pool.request("HEAD", srv.url + "/a", {})
        assert (r.status, r.headers.get("content-length"), r.headers.get("ETag")) == (200, "1000", '"e"')
        pool.release(r)
        r = pool.request("GET", srv.url + "/a", {})
        assert r.status == 304
        pool.release(r)
        with pytest.raises(HttpError):
            pool.request("GET", srv.url + "/a", {"X-Bad": "a\r\nInjected: 1"})
        assert _get(pool, srv.url + "/b")[:2] == (200, b"ok")
        assert srv.accepted == 1 and pool.connections == 1
        assert len(srv.requests) == 3 and srv.requests[0].startswith(b"HEAD /a HTTP/1.1")
    finally:
        pool.close()
        srv.close()
