"""A loopback HTTP server for remote-teacher tests and benchmarks: ranges, faults, a Hub stand-in.

Serves files under a root folder on 127.0.0.1 (a free port), HTTP/1.1 with keep-alive,
single ``Range`` requests (206 + Content-Range), strong ETags (size and mtime) with
``If-Match`` (412 when the file changed), HEAD. Counts the body bytes it sends. Can be
throttled to a total bandwidth shared by all connections (a token bucket), and can
inject faults into chosen requests: a connection dropped mid-body, a short body, a
5xx, a slow response, a hook that runs before the answer (to change a file between
plan and read), auth failures.

``hub=`` turns it into a stand-in for the Hugging Face Hub's endpoints that
huggingface_hub uses to read a model (point ``HF_ENDPOINT`` at it):
``/api/models/{repo}/revision/{rev}`` (the file list with sizes, blob ids and LFS
hashes, the commit) and ``/{repo}/resolve/{rev}/{path}``, which answers small files
itself and redirects ``.safetensors`` to ``/cdn/...`` as the Hub redirects LFS files to
its CDN. Private repositories want ``Authorization: Bearer <token>`` (401 otherwise,
with the Hub's ``X-Error-Code`` headers), gated ones answer 403.

The CDN URLs are signed and expire (``cdn_ttl``; 403 after, as CloudFront's and S3's
presigned URLs do), with the expiry in the URL (``Expires=``) or opaque; they may point
at another server (``cdn_url``: another host, which must never see the token). The
server counts resolves, and ``resolve_window=(calls, seconds)`` enforces the Hub's
resolver limit: a resolve over it gets 429 with the Hub's ``RateLimit`` and
``RateLimit-Policy`` headers. ``redirect_weights`` does the same for plain mode (a
presigning front or a mirror): weights redirect to signed ``/signed/...`` URLs.

Nothing here imports slicer.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

SLICE = 64 << 10
BUCKET_SLACK_S = 0.0005
_SECRET = "stand-in-cdn-key"


@dataclass
class Fault:
    """Applied to requests whose path contains ``match`` and that carry a Range (data reads),
    skipping the first ``skip`` of them, then ``times`` times (-1: always).

    kind: "drop" (close after ``after`` body bytes), "short" (send ``after`` bytes with a
    Content-Length that says so, a truncating proxy), "status" (answer ``status``),
    "delay" (sleep ``seconds`` first), "hook" (call ``hook(path)`` first, then answer; with
    ``pass_handler``, ``hook(path, handler)``).
    """

    kind: str
    match: str = ""
    skip: int = 0
    times: int = 1
    after: int = 0
    status: int = 500
    seconds: float = 0.0
    hook: object = None
    headers: dict = field(default_factory=dict)  # sent with a "status" answer (Retry-After, RateLimit)
    ranged_only: bool = True
    pass_handler: bool = False  # "hook": call hook(path, handler) (the request's headers, client_address)
    seen: int = 0
    fired: int = 0


@dataclass
class Repo:
    root: Path
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    token: str | None = None  # private: this bearer token is needed
    gated: bool = False


class _Bucket:
    """Total bandwidth shared by every connection."""

    def __init__(self, rate: float | None):
        self.rate = rate
        self.lock = threading.Lock()
        self.next_free = time.perf_counter()

    def take(self, n: int) -> None:
        if not self.rate:
            return
        with self.lock:
            now = time.perf_counter()
            start = max(now, self.next_free)
            self.next_free = start + n / self.rate
            wait = self.next_free - now
        if wait > BUCKET_SLACK_S:  # shorter waits are carried in next_free: the rate holds, a sleep each would not
            time.sleep(wait)


@dataclass
class Stats:
    bytes_sent: int = 0
    requests: int = 0
    ranged_requests: int = 0
    resolves: int = 0  # hub mode: requests to /resolve/
    cdn_requests: int = 0  # requests to signed CDN URLs (hub mode's /cdn/, redirect_weights' /signed/)
    refused: int = 0  # hub mode: CDN requests refused (expired or badly signed URLs), 403
    rate_limited: int = 0  # hub mode: resolves answered 429 by the resolver window
    proxied: list = field(default_factory=list)  # paths of requests in absolute form (sent to it as a proxy)
    resolved: list = field(default_factory=list)  # the path of every resolve
    authorized: list = field(default_factory=list)  # paths of requests that carried an Authorization header
    by_path: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, n: int) -> None:
        with self.lock:
            self.bytes_sent += n
            self.by_path[path] = self.by_path.get(path, 0) + n

    def reset(self) -> None:
        with self.lock:
            self.bytes_sent = self.requests = self.ranged_requests = 0
            self.resolves = self.refused = self.rate_limited = self.cdn_requests = 0
            self.by_path, self.authorized, self.resolved, self.proxied = {}, [], [], []


def etag_of(path: Path) -> str:
    st = path.stat()
    return '"' + hashlib.sha1(f"{st.st_size}-{st.st_mtime_ns}-{st.st_ino}".encode()).hexdigest()[:16] + '"'


class _QuietServer(http.server.ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops the SYNs of a client opening 16 connections at once,
    # which then wait the kernel's 1 s SYN retry: a stall no real server causes.
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:  # a client that hung up (a timeout test)
        pass


class RangeServer:
    def __init__(self, root: Path | None = None, *, bandwidth: float | None = None, hub: dict[str, Repo] | None = None,
                 require_token: str | None = None, forbid: str | None = None, slice_bytes: int = SLICE,
                 latency: float = 0.0, cdn_ttl: float = 3600.0, cdn_expiry_in_url: bool = True,
                 cdn_url: str | None = None, resolve_window: tuple[int, float] | None = None,
                 redirect_weights: bool = False, client_key=None):
        self.root = Path(root) if root is not None else None
        self.hub = hub or {}
        self.faults: list[Fault] = []
        self.stats = Stats()
        self.bucket = _Bucket(bandwidth)
        # client_key(client_address) -> a key: ``bandwidth`` per key (say, per client process)
        # instead of shared by all; asked once per connection.
        self.client_key = client_key
        self._buckets: dict = {}
        self.require_token = require_token  # plain mode: every request needs this bearer token (401)
        self.forbid = forbid  # plain mode: paths containing this answer 403
        self.slice_bytes = slice_bytes
        self.latency = latency  # seconds before every answer: a round trip to a far server
        # Hub mode: /resolve/ redirects to a signed CDN URL valid cdn_ttl seconds (403 after), whose
        # expiry is readable in the URL (Expires=, as CloudFront's) or not (an opaque token); on this
        # server, or on cdn_url (another server with the same hub= repos: another host).
        self.cdn_ttl = cdn_ttl
        self.cdn_expiry_in_url = cdn_expiry_in_url
        self.cdn_url = cdn_url
        self.redirect_weights = redirect_weights  # plain mode: .safetensors redirect to signed /signed/ URLs
        self.resolve_window = resolve_window  # (calls, seconds): the Hub's resolver limit, a fixed window
        self._window = (0.0, 0)  # (start, calls in it)
        self.key = 0  # signing key generation: expire_issued() makes every URL issued so far expire
        self._lock = threading.Lock()
        self._targets: dict = {}  # (root, rel) -> the file's path, or None outside root (resolve() is slow)
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), name="range-server", daemon=True)

    def expire_issued(self, *_) -> None:
        """Every CDN URL issued so far stops working now (as if its hour were over); usable as a Fault hook."""
        self.key += 1

    def __enter__(self) -> "RangeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()

    def sign(self, path: str) -> str:
        """A CDN path with a signature valid for cdn_ttl seconds (whole seconds) from now."""
        expires = int(time.time() + self.cdn_ttl)
        sig = hashlib.sha256(f"{_SECRET}{self.key}{path}{expires}".encode()).hexdigest()[:16]
        if self.cdn_expiry_in_url:
            return f"{path}?Expires={expires}&Signature={sig}"
        return f"{path}?token={expires}-{sig}"  # opaque to the client: only a 403 says it expired

    def signed(self, raw_path: str) -> bool:
        """The CDN URL's signature is good and has not expired."""
        parts = urlsplit(raw_path)
        q = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        expires, sig = (q.get("Expires"), q.get("Signature")) if "Expires" in q else (q.get("token", "-").split("-", 1))
        if not expires or not sig or not expires.isdigit():
            return False
        good = hashlib.sha256(f"{_SECRET}{self.key}{unquote(parts.path)}{expires}".encode()).hexdigest()[:16]
        return sig == good and time.time() < int(expires)

    def over_window(self) -> dict | None:
        """The 429's headers when this resolve is over the window's calls, else None."""
        if self.resolve_window is None:
            return None
        calls, seconds = self.resolve_window
        with self._lock:
            start, n = self._window
            now = time.monotonic()
            if now - start >= seconds:
                start, n = now, 0
            n += 1
            self._window = (start, n)
            if n <= calls:
                return None
            self.stats.rate_limited += 1
            left = max(1, int(start + seconds - now + 0.999))
        return {"RateLimit": f'"resolvers";r=0;t={left}',
                "RateLimit-Policy": f'"fixed window";"resolvers";q={calls};w={int(seconds)}'}

    def bucket_for(self, handler) -> _Bucket:
        if self.client_key is None:
            return self.bucket
        if getattr(handler, "_bucket", None) is None:
            key = self.client_key(handler.client_address)
            with self._lock:
                handler._bucket = self._buckets.setdefault(key, _Bucket(self.bucket.rate))
        return handler._bucket

    def target(self, root: Path, rel: str) -> Path | None:
        key = (root, rel)
        got = self._targets.get(key, False)
        if got is False:
            target = (root / rel).resolve()
            got = self._targets[key] = target if root.resolve() in target.parents else None
        return got

    def fault_for(self, path: str, ranged: bool) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.match in path and (ranged or not f.ranged_only):
                    f.seen += 1
                    if f.seen > f.skip and (f.times < 0 or f.fired < f.times):
                        f.fired += 1
                        return f
        return None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in separate writes: no 40 ms delayed-ACK stalls
    wbufsize = 1 << 16  # a small answer's headers and body in one write (flushed after each request)
    server_state: RangeServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    # -- routing ----------------------------------------------------------------------------

    def _serve(self, head: bool) -> None:
        st = self.server_state
        with st.stats.lock:
            st.stats.requests += 1
            if self.headers.get("Authorization") is not None:
                st.stats.authorized.append(self.path)
            if self.path.startswith(("http://", "https://")):  # a client that takes this server for its proxy
                st.stats.proxied.append(self.path)
        path = unquote(urlsplit(self.path).path)
        if path == "/__stats":  # for benchmarks in another process: counters, then reset
            with st.stats.lock:
                body = json.dumps({"bytes_sent": st.stats.bytes_sent, "requests": st.stats.requests,
                                   "ranged_requests": st.stats.ranged_requests, "resolves": st.stats.resolves,
                                   "cdn_requests": st.stats.cdn_requests, "refused": st.stats.refused}).encode()
            st.stats.reset()
            return self._bytes(200, body, "application/json", head)
        if st.latency:
            time.sleep(st.latency)
        if st.hub:
            return self._hub(path, head)
        if path.startswith("/signed/"):  # a presigned URL carries its own authorization
            return self._signed_file(st.root, path[len("/signed/"):], head)
        if st.redirect_weights and path.endswith(".safetensors"):  # a presigning front: resolve, then redirect
            if self._resolve_refused(path):
                return None
            return self._redirect((st.cdn_url or "") + st.sign("/signed" + path), {})
        if st.require_token and self.headers.get("Authorization") != f"Bearer {st.require_token}":
            return self._error(401, "needs a token")
        if st.forbid and st.forbid in path:
            return self._error(403, "forbidden")
        return self._file(st.root, path.lstrip("/"), head, {})

    def _hub(self, path: str, head: bool) -> None:
        st = self.server_state
        m = re.fullmatch(r"/api/models/(.+?)/revision/([^/]+)", path) or re.fullmatch(r"/api/models/([^/]+/[^/]+)()", path)
        if m:
            repo = self._repo(m.group(1), unquote(m.group(2)) or "main")
            if repo is None:
                return
            files = sorted(p for p in repo.root.rglob("*") if p.is_file())
            siblings = []
            for p in files:
                rel = p.relative_to(repo.root).as_posix()
                entry = {"rfilename": rel, "size": p.stat().st_size,
                         "blobId": hashlib.sha1(etag_of(p).encode()).hexdigest()}
                if rel.endswith(".safetensors"):
                    entry["lfs"] = {"size": p.stat().st_size, "sha256": etag_of(p).strip('"') * 4,
                                    "pointerSize": 134}
                siblings.append(entry)
            body = json.dumps({"id": m.group(1), "sha": repo.commit, "private": repo.token is not None,
                               "siblings": siblings}).encode()
            return self._bytes(200, body, "application/json", head)
        m = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path)
        if m:
            if self._resolve_refused(path):
                return None
            repo = self._repo(m.group(1), unquote(m.group(2)))
            if repo is None:
                return
            target = repo.root / m.group(3)
            if not target.is_file():
                return self._error(404, "Entry not found", {"X-Error-Code": "EntryNotFound"})
            extra = {"X-Repo-Commit": repo.commit, "X-Linked-Size": str(target.stat().st_size)}
            if target.name.endswith(".safetensors"):  # LFS: the Hub redirects to its CDN, a signed URL
                return self._redirect((st.cdn_url or "") + st.sign(f"/cdn/{m.group(1)}/{repo.commit}/{m.group(3)}"),
                                      extra)
            return self._file(repo.root, m.group(3), head, extra)
        m = re.fullmatch(r"/cdn/(.+?/.+?)/([0-9a-f]{40})/(.+)", path)
        if m and m.group(1) in st.hub:
            return self._signed_file(st.hub[m.group(1)].root, m.group(3), head)
        return self._error(404, "Repository not found", {"X-Error-Code": "RepoNotFound"})

    def _resolve_refused(self, path: str) -> bool:
        """A resolve: counted; True once it has been answered 429 (over the resolver window)."""
        st = self.server_state
        with st.stats.lock:
            st.stats.resolves += 1
            st.stats.resolved.append(path)
        limited = st.over_window()
        if limited is not None:
            self._error(429, "rate limited", limited)
            return True
        return False

    def _signed_file(self, root, rel: str, head: bool):
        """A CDN request: counted, and served only while its URL's signature holds (else 403)."""
        st = self.server_state
        with st.stats.lock:
            st.stats.cdn_requests += 1
        if not st.signed(self.path):
            with st.stats.lock:
                st.stats.refused += 1
            return self._error(403, "Request has expired")
        return self._file(root, rel, head, {})

    def _repo(self, repo_id: str, revision: str) -> Repo | None:
        repo = self.server_state.hub.get(repo_id)
        if repo is None:
            self._error(401, "Repository not found", {"X-Error-Code": "RepoNotFound"})
            return None
        if repo.token is not None and self.headers.get("Authorization") != f"Bearer {repo.token}":
            self._error(401, "Repository not found", {"X-Error-Code": "RepoNotFound"})
            return None
        if repo.gated:
            self._error(403, "Access to this model is restricted", {"X-Error-Code": "GatedRepo"})
            return None
        if revision not in ("main", repo.commit):
            self._error(404, "Revision not found", {"X-Error-Code": "RevisionNotFound"})
            return None
        return repo

    # -- answers -----------------------------------------------------------------------------

    def _redirect(self, location: str, extra: dict) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        for k, v in extra.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _bytes(self, status: int, body: bytes, ctype: str, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            if self.path != "/__stats":  # counted before the client can have it (see _file)
                self.server_state.stats.add(self.path, len(body))
            self.wfile.write(body)

    def _file(self, root: Path, rel: str, head: bool, extra: dict) -> None:
        st = self.server_state
        target = st.target(root, rel)
        try:
            info = os.stat(target) if target is not None else None
        except OSError:
            info = None
        if info is None or not stat.S_ISREG(info.st_mode):
            return self._error(404, "not found")
        rng = self.headers.get("Range")
        fault = st.fault_for(rel, ranged=rng is not None)
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
        if fault is not None and fault.kind == "hook":
            fault.hook(target, self) if fault.pass_handler else fault.hook(target)
        if fault is not None and fault.kind == "status":
            return self._error(fault.status, "injected", fault.headers)
        if fault is not None:  # a hook may have changed the file
            info = os.stat(target)
        size = info.st_size
        etag = etag_of(target)
        if_match = self.headers.get("If-Match")
        if if_match is not None and etag is not None and if_match != etag and if_match != "*":
            return self._error(412, "precondition failed")
        start, end, status = 0, size, 200
        if rng is not None:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not m:
                return self._error(416, "bad range")
            start = int(m.group(1))
            end = min(size, int(m.group(2)) + 1) if m.group(2) else size
            if start >= size or end <= start:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
            with st.stats.lock:
                st.stats.ranged_requests += 1
        length = end - start
        if fault is not None and fault.kind == "short":
            length = min(length, fault.after)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        if etag is not None:
            self.send_header("ETag", etag)
        for k, v in extra.items():
            self.send_header(k, v)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if head:
            return
        drop_at = fault.after if fault is not None and fault.kind == "drop" else None
        with open(target, "rb") as f:
            sent = 0
            while sent < length:
                n = min(st.slice_bytes, length - sent)
                if drop_at is not None and sent + n > drop_at:
                    n = max(drop_at - sent, 0)
                    if n:
                        st.stats.add(rel, n)
                        self.wfile.write(os.pread(f.fileno(), n, start + sent))
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                st.bucket_for(self).take(n)
                data = os.pread(f.fileno(), n, start + sent)
                # Counted before the write: once the client holds the bytes, a test reading the
                # stats must see them (counted after, a reset racing the write lost them).
                st.stats.add(rel, len(data))
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    st.stats.add(rel, -len(data))  # never reached the client
                    self.close_connection = True
                    return
                sent += len(data)
