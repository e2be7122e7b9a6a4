"""Plain HTTP(S) folders (mirrors, object stores behind a URL, the tests' server), through ``http11``.

``http11.py`` is a keep-alive HTTP/1.1 client on h11: a pool of connections shared by
the fetcher's threads, each streaming one ``Range`` request at a time, with direct
access to the exact response headers (Content-Range, ETag) the checks below read. It
replaced urllib3 here because a request through urllib3 cost ~2.5x the client CPU, and
requests per kept row are what a remote run makes most of (http11's docstring).
Redirects are followed by ``locations.py``; retries are the fetcher's, for every
source alike.

An HTTP folder cannot be listed, so its files are found by name: the index or
``model.safetensors``, then the config, tokenizer and generation files Hugging Face
folders hold (``SIDE_FILES``).
"""
from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import SlicerError
from .http11 import HttpError, Pool, Refused, Untrusted
from .locations import Locations, RedirectError, same_origin
from .ratelimit import rate_limited
from .source import RemoteFile, Source, Transient, Write, check_range_response, join, status_error
from .urls import is_literal_address

# Files a model folder may hold beside its weights; tried by name (HEAD) on a config route.
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja",
              "chat_template.json", "preprocessor_config.json", "processor_config.json", "spiece.model")
STREAM_BYTES = 1 << 20


class HttpSource(Source):
    kind = "http"
    side_files = SIDE_FILES

    def __init__(self, folder_url: str, *, requests: int, timeout_s: float):
        parts = urlsplit(folder_url)
        self._base_headers = {"Accept-Encoding": "identity", "User-Agent": "weight-slicer"}
        self._auth: dict[str, str] = {}
        if parts.username is not None:  # https://user:pass@host/...: basic auth, never shown in messages
            cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self._auth = {"Authorization": "Basic " + base64.b64encode(cred).decode()}
            parts = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
        self.url = urlunsplit(parts).rstrip("/")
        self.locations = Locations()
        # One keep-alive connection per thread in flight (the pool keeps the idle ones, so it
        # grows to ``requests`` connections by itself). No proxies, as with urllib3 before.
        self._pool = Pool(timeout_s)

    def list(self) -> None:
        return None

    def stat(self, name: str) -> RemoteFile | None:
        url = join(self.url, name)

        def send(where: str, credentials: bool) -> PoolResponse:
            return PoolResponse(self._pool, self._request("HEAD", where, {}, credentials=credentials))

        try:  # a redirect is followed here once, and the range requests go where it led (one resolve per file)
            resp = self.locations.open(name, url, send)
        except RedirectError as e:
            raise SlicerError(f"{url}: {e}") from e
        r = resp.r
        resp.close()  # a HEAD has no body
        if r.status == 404:
            return None
        if r.status >= 400:
            raise rate_limited(r.status, r.headers) or status_error(url, r.status, r.reason or "")
        size = r.headers.get("Content-Length")
        if size is None or not size.isdigit():
            raise SlicerError(f"{url}: the server gives no size (Content-Length) for the file")
        return RemoteFile(name, url, int(size), r.headers.get("ETag"))

    def read(self, file: RemoteFile, start: int, end: int, write: Write) -> None:
        # If-Match makes a server that changed the file answer 412 instead of new bytes.
        # Weak ETags cannot be matched that way; the ETag of the answer is compared instead.
        # A file whose URL redirects (a presigned URL, a mirror) is resolved once per run
        # (locations.py); the If-Match goes only to the file's own origin (a CDN's ETag differs).
        strong = file.etag is not None and not file.etag.startswith("W/")
        while start < end:
            headers = {"Range": f"bytes={start}-{end - 1}"}

            def send(url: str, credentials: bool) -> PoolResponse:
                h = dict(headers)
                if strong and credentials:
                    h["If-Match"] = file.etag
                resp = PoolResponse(self._pool, self._request("GET", url, h, credentials=credentials))
                resp.redirected = url != file.url
                return resp

            try:
                resp = self.locations.open(file.name, file.url, send)
            except RedirectError as e:
                raise SlicerError(f"{file.url}: {e}") from e
            r = resp.r
            try:
                if r.status not in (200, 206):
                    raise rate_limited(r.status, r.headers) or status_error(file.url, r.status, r.reason or "")
                # A redirected URL's ETag is the CDN's: the Content-Range's size is what is checked there.
                got_end = check_range_response(file, start, end, r.status, r.headers,
                                               etag_checked=strong or resp.redirected)
                for block in resp.blocks():
                    write(block)
                start = got_end
            finally:
                resp.close()  # back to the pool if read to the end, else closed

    def _request(self, method: str, url: str, headers: dict, *, credentials: bool | None = None):
        # Every request gets the common headers here, and the credentials only where they belong.
        if credentials is None:
            credentials = same_origin(url, self.url)
        headers = {**self._base_headers, **(self._auth if credentials else {}), **headers}
        try:
            return self._pool.request(method, url, headers)
        except Untrusted as e:
            raise SlicerError(f"{url}: {e}") from e
        except Refused as e:
            if is_literal_address(urlsplit(url).hostname):  # final: nothing to retry
                raise SlicerError(f"{url}: connection refused (nothing listens there)") from e
            raise Transient(f"cannot connect: {e}") from e
        except HttpError as e:
            raise Transient(f"request failed: {e}") from e

    def close(self) -> None:
        self._pool.close()


class PoolResponse:
    """An http11 response as ``Locations.open`` sees it (also the Hub's CDN answers, hub_source)."""

    def __init__(self, pool: Pool, r):
        self.r = r
        self.status = r.status
        self.headers = r.headers
        self.redirected = False
        self._pool = pool

    def blocks(self):
        """The body in blocks; a response that breaks off is a transient fault (the fetcher retries it)."""
        try:
            yield from self.r.stream(STREAM_BYTES)
        except HttpError as e:  # dropped, truncated, timed out
            raise Transient(f"the response broke off: {e}") from e

    def close(self) -> None:
        self._pool.release(self.r)  # back to the pool if read to the end, else closed
