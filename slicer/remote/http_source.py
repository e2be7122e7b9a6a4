"""Plain HTTP(S) folders (mirrors, object stores behind a URL, the tests' server), through urllib3.

urllib3 because the job is a pool of keep-alive connections shared by a few threads,
each streaming one ``Range`` request at a time: it is what requests and botocore are
built on, it needs no event loop, and it gives direct control of timeouts, redirects
and the exact response headers (Content-Range, ETag) the checks below read. Retries
are not urllib3's: the fetcher retries every source the same way.

An HTTP folder cannot be listed, so its files are found by name: the index or
``model.safetensors``, then the config, tokenizer and generation files Hugging Face
folders hold (``SIDE_FILES``).
"""
from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import SlicerError
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
        try:
            import urllib3
        except ImportError as e:  # pragma: no cover - urllib3 comes with huggingface_hub, requests, botocore
            raise SlicerError(f"an http(s):// teacher needs urllib3 ({e}); pip install 'weight-slicer[remote]'") from e
        self._urllib3 = urllib3
        parts = urlsplit(folder_url)
        headers = {"Accept-Encoding": "identity", "User-Agent": "weight-slicer"}
        if parts.username is not None:  # https://user:pass@host/...: basic auth, never shown in messages
            cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
            parts = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
        self.url = urlunsplit(parts).rstrip("/")
        self._pool = urllib3.PoolManager(
            num_pools=4, maxsize=max(requests, 1), headers=headers,
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            # Redirects are followed (mirrors, CDNs); every other retry is the fetcher's.
            retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5, raise_on_redirect=True),
        )

    def list(self) -> None:
        return None

    def stat(self, name: str) -> RemoteFile | None:
        url = join(self.url, name)
        r = self._request("HEAD", url, {})
        r.release_conn()  # a HEAD has no body
        if r.status == 404:
            return None
        if r.status >= 400:
            raise status_error(url, r.status, r.reason or "")
        size = r.headers.get("Content-Length")
        if size is None or not size.isdigit():
            raise SlicerError(f"{url}: the server gives no size (Content-Length) for the file")
        return RemoteFile(name, url, int(size), r.headers.get("ETag"))

    def read(self, file: RemoteFile, start: int, end: int, write: Write) -> None:
        # If-Match makes a server that changed the file answer 412 instead of new bytes.
        # Weak ETags cannot be matched that way; the ETag of the answer is compared instead.
        strong = file.etag is not None and not file.etag.startswith("W/")
        while start < end:
            headers = {"Range": f"bytes={start}-{end - 1}"}
            if strong:
                headers["If-Match"] = file.etag
            r = self._request("GET", file.url, headers)
            complete = False
            try:
                if r.status not in (200, 206):
                    raise status_error(file.url, r.status, r.reason or "")
                got_end = check_range_response(file, start, end, r.status, r.headers, etag_checked=strong)
                try:
                    for block in r.stream(STREAM_BYTES, decode_content=False):
                        write(block)
                except (self._urllib3.exceptions.HTTPError, OSError) as e:  # dropped, truncated, timed out
                    raise Transient(f"the response broke off: {e}") from e
                complete = True
                start = got_end
            finally:
                if not complete:  # unread bytes would poison the connection's next response
                    r.close()
                r.release_conn()

    def _request(self, method: str, url: str, headers: dict):
        try:
            return self._pool.request(method, url, headers=headers, preload_content=False, decode_content=False)
        except self._urllib3.exceptions.MaxRetryError as e:
            if isinstance(e.reason, self._urllib3.exceptions.ResponseError):  # too many redirects
                raise SlicerError(f"{url}: {e.reason}") from e
            if _refused(e.reason) and is_literal_address(urlsplit(url).hostname):  # final: nothing to retry
                raise SlicerError(f"{url}: connection refused (nothing listens there)") from e
            raise Transient(f"cannot connect: {e.reason}") from e
        except (self._urllib3.exceptions.HTTPError, OSError) as e:
            raise Transient(f"request failed: {e}") from e

    def close(self) -> None:
        self._pool.clear()


def _refused(reason: object) -> bool:
    """urllib3 wraps ConnectionRefusedError in NewConnectionError (its message, or its context)."""
    seen = 0
    while reason is not None and seen < 5:
        if isinstance(reason, ConnectionRefusedError):
            return True
        reason = reason.__cause__ or reason.__context__
        seen += 1
    return False
