"""Hugging Face Hub repositories (``hf://ORG/NAME[@REVISION][/FOLDER]``), through huggingface_hub.

The Hub's own calls go through huggingface_hub, so a run behaves as its downloads do:
``HfApi.model_info(files_metadata=True)`` lists the files with sizes and LFS hashes and
resolves the revision to a commit; each file's ``hf_hub_url``, pinned to that commit (so
files cannot change under a run), is requested once (its resolve, ``locations.py``) on
huggingface_hub's shared HTTP session with ``build_hf_headers`` (``HF_TOKEN`` or the
stored login). The range requests then go where the resolve redirected (the CDN's signed
URL) through ``http11``'s keep-alive pool, as http(s) teachers' do: a request through
huggingface_hub's httpx session costs several times the client CPU, and a run at the
defaults makes tens of thousands of them (docs/remote.md). Where the environment names a
proxy for the CDN's URL (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, less
``NO_PROXY``), which httpx honours and ``http11`` cannot tunnel through, the range
requests stay on huggingface_hub's session. The endpoint is ``HF_ENDPOINT``'s. With
``HF_HUB_OFFLINE=1`` nothing is requested: the repository is read from huggingface_hub's
local cache (see :func:`cached_snapshot`).
"""
from __future__ import annotations

import importlib
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import SlicerError
from .http11 import HttpError, Pool, Untrusted
from .http_source import STREAM_BYTES, PoolResponse
from .locations import Locations, RedirectError
from .ratelimit import rate_limited
from .source import Changed, RemoteFile, Source, Transient, Write, check_range_response, status_error

INSTALL_HINT = "pip install 'weight-slicer[remote]' (or huggingface_hub)"


def parse_hf_url(url: str) -> tuple[str, str | None, str]:
    """``hf://[models/]ORG/NAME[@REV][/PATH]`` -> (repo id, revision or None, path inside the repo)."""
    rest = url[len("hf://"):].strip("/")
    if rest.startswith(("datasets/", "spaces/")):
        raise SlicerError(f"{url}: only model repositories can be teachers")
    rest = rest.removeprefix("models/")
    parts = rest.split("/")
    n = 2 if len(parts) >= 2 and "@" not in parts[0] else 1
    repo, path = "/".join(parts[:n]), "/".join(parts[n:])
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        revision = unquote(revision)  # refs/pr/1 is written refs%2Fpr%2F1, as HfFileSystem does
    if not repo or any(not p for p in repo.split("/")):
        raise SlicerError(f"{url}: expected hf://ORG/NAME[@REVISION][/FOLDER]")
    return repo, revision, path


def _hub():
    try:
        import huggingface_hub
        from huggingface_hub import constants, errors
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status
    except ImportError as e:
        raise SlicerError(f"an hf:// teacher needs huggingface_hub ({e}); {INSTALL_HINT}") from e
    return huggingface_hub, constants, errors, build_hf_headers, get_session, hf_raise_for_status


def offline_mode() -> bool:
    """HF_HUB_OFFLINE, as huggingface_hub reads it."""
    return _hub()[1].is_offline_mode()


def cached_snapshot(repo: str, revision: str | None, url: str) -> Path:
    """The repository's folder in huggingface_hub's cache (offline mode: nothing is requested)."""
    huggingface_hub, _, errors, *_ = _hub()
    try:
        return Path(huggingface_hub.snapshot_download(repo, revision=revision, local_files_only=True))
    except (errors.LocalEntryNotFoundError, FileNotFoundError, OSError) as e:
        raise SlicerError(f"{url}: offline mode (HF_HUB_OFFLINE) is on and the repository is not in the local cache "
                          f"at that revision ({type(e).__name__}); download it first, or unset HF_HUB_OFFLINE") from e


class HubSource(Source):
    kind = "hf"

    def __init__(self, repo: str, revision: str | None, path: str, url: str, *, timeout_s: float):
        hub, self._constants, self._errors, self._headers, self._session, self._raise_for_status = _hub()
        self._api = hub.HfApi()
        self._hf_hub_url = hub.hf_hub_url
        # huggingface_hub's session is httpx (or httpx2): its transport errors are what to retry.
        session = self._session()
        self._httpx = importlib.import_module(type(session).__module__.split(".")[0])
        self.repo, self.revision, self.path = repo, revision, path
        self.url = url.rstrip("/")
        self.commit: str | None = None
        self.timeout_s = timeout_s
        self._files: dict[str, RemoteFile] | None = None
        self._urls: dict[str, str] = {}  # each file's /resolve/ URL, pinned to the commit
        self.locations = Locations(resolver=True)
        # The CDN's range requests (``read``): one keep-alive connection per thread in flight.
        self._pool = Pool(timeout_s)
        self._proxy_for: dict[tuple[str, str], bool] = {}  # (scheme, host:port) -> whether a proxy is set for it

    def list(self) -> dict[str, RemoteFile]:
        if self._files is None:
            info = self._call(self.url, lambda: self._api.model_info(self.repo, revision=self.revision,
                                                                      files_metadata=True, timeout=self.timeout_s))
            self.commit = info.sha
            prefix = self.path + "/" if self.path else ""
            files = {}
            for s in info.siblings or []:
                if not s.rfilename.startswith(prefix) or s.size is None:
                    continue
                name = s.rfilename[len(prefix):]
                etag = s.lfs.sha256 if s.lfs is not None else s.blob_id  # what the Hub's ETag is
                files[name] = RemoteFile(name, f"{self.url}/{name}", s.size, etag)
                self._urls[name] = self._hf_hub_url(self.repo, s.rfilename, revision=self.commit,
                                                    endpoint=self._constants.ENDPOINT)
            self._files = files
        return self._files

    def stat(self, name: str) -> RemoteFile | None:
        return self.list().get(name)

    def restat(self, file: RemoteFile) -> RemoteFile:
        return file  # read through URLs pinned to a commit: they cannot change

    def identity(self) -> dict:
        return {"repo": self.repo, "revision": self.commit, "endpoint": self._constants.ENDPOINT}

    def read(self, file: RemoteFile, start: int, end: int, write: Write) -> None:
        # One resolve per file (locations.py): the first range request goes to the file's
        # /resolve/ URL through huggingface_hub, the CDN URL it redirects to is remembered, and
        # every later one goes there directly through http11, without the token (another origin).
        own_url = self._urls[file.name]
        while start < end:
            headers = self._headers()
            headers["Range"] = f"bytes={start}-{end - 1}"
            headers["Accept-Encoding"] = "identity"

            def send(url: str, credentials: bool) -> _Answer:
                sent = headers if credentials else {k: v for k, v in headers.items() if k.lower() != "authorization"}
                if url == own_url or self._proxied(url):  # the resolve, or a CDN only a proxy reaches: huggingface_hub's
                    req = self._session().build_request("GET", url, headers=sent, timeout=self.timeout_s)
                    return _HubAnswer(self._session().send(req, stream=True, follow_redirects=False))
                try:
                    return _PoolAnswer(self._pool, self._pool.request("GET", url, sent))
                except Untrusted as err:
                    raise SlicerError(f"{file.url}: {err}") from err
                except HttpError as err:  # refused, dropped, timed out: retried like httpx's transport errors
                    raise Transient(f"request failed: {err}") from err

            def one_response() -> int:
                try:
                    resp = self.locations.open(file.name, own_url, send)
                except RedirectError as err:
                    raise SlicerError(f"{file.url}: {err}") from err
                try:
                    if resp.status >= 400:
                        limited = rate_limited(resp.status, resp.headers)
                        if limited is not None:
                            raise limited
                        resp.raise_for_status(self._raise_for_status)
                        raise status_error(file.url, resp.status)
                    # The URL names a commit: the CDN's ETag need not be the Hub's, and need not be checked.
                    got_end = check_range_response(file, start, end, resp.status, resp.headers, etag_checked=True)
                    for block in resp.blocks():
                        write(block)
                    return got_end
                finally:
                    resp.close()

            start = self._call(file.url, one_response)

    def _proxied(self, url: str) -> bool:
        """:func:`proxied`, once per origin (reading the environment costs ~70 us: more than the request)."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        if key not in self._proxy_for:
            self._proxy_for[key] = proxied(url)
        return self._proxy_for[key]

    def close(self) -> None:
        self._pool.close()

    def _call(self, url: str, fn):
        """Run one Hub request; its errors as slicer's (one line) or Transient (retried)."""
        e = self._errors
        try:
            return fn()
        except (Transient, SlicerError):
            raise
        except e.OfflineModeIsEnabled as err:
            raise SlicerError(f"{url}: offline mode (HF_HUB_OFFLINE) is on") from err
        except e.GatedRepoError as err:
            raise SlicerError(f"{url}: the repository is gated: accept its conditions on the Hub, then set HF_TOKEN "
                              "(or run `hf auth login`)") from err
        except e.RepositoryNotFoundError as err:
            raise SlicerError(f"{url}: repository not found, or private without a token: check the name, or set HF_TOKEN "
                              "(or run `hf auth login`)") from err
        except e.RevisionNotFoundError as err:
            raise SlicerError(f"{url}: revision {self.revision!r} not found in {self.repo}") from err
        except e.RemoteEntryNotFoundError as err:
            raise SlicerError(f"{url}: not found in {self.repo} at {self.commit or self.revision or 'main'}") from err
        except e.HfHubHTTPError as err:
            status = err.response.status_code if err.response is not None else 0
            limited = rate_limited(status, err.response.headers) if err.response is not None else None
            if limited is not None:  # the model info or a resolve, rate limited: wait as stated
                raise limited from err
            if status == 416:
                raise Changed(f"{url}: the remote file is shorter than planned (HTTP 416); plan again") from err
            raise status_error(url, status) from err
        except (self._httpx.TransportError, OSError) as err:
            raise Transient(f"{type(err).__name__}: {err}") from err


def proxied(url: str) -> bool:
    """Whether the environment sends ``url`` through a proxy (``HTTPS_PROXY`` / ``HTTP_PROXY`` /
    ``ALL_PROXY``, less ``NO_PROXY``), as httpx and requests read it: ``http11`` cannot tunnel."""
    proxies = urllib.request.getproxies_environment()
    parts = urlsplit(url)
    if not (proxies.get(parts.scheme.lower()) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass_environment(parts.netloc, proxies)


class _HubAnswer:
    """An httpx response (huggingface_hub's session) as ``Locations.open`` and ``read`` see it."""

    def __init__(self, r):
        self.r = r
        self.status = r.status_code
        self.headers = r.headers

    def raise_for_status(self, hf_raise_for_status) -> None:
        self.r.read()
        hf_raise_for_status(self.r)  # the Hub's own errors (X-Error-Code: gated, not found, ...)

    def blocks(self):
        return self.r.iter_raw(STREAM_BYTES)

    def close(self) -> None:
        self.r.close()


class _PoolAnswer(PoolResponse):
    """An http11 response (the CDN's) as ``Locations.open`` and ``read`` see it."""

    def raise_for_status(self, hf_raise_for_status) -> None:
        pass  # a CDN's answer has none of the Hub's error codes: ``status_error`` says it


_Answer = _HubAnswer | _PoolAnswer
