"""Open a remote checkpoint: the same layouts as a local one, found by listing or by name.

A URL naming a ``.safetensors`` file or an index is that file; any other URL is a folder
holding ``model.safetensors.index.json``, ``model.safetensors`` or (where the folder
can be listed) exactly one ``.safetensors`` file. Only headers (and the index) are
fetched here.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import posixpath

from ..io.checkpoint import INDEX_NAME, SINGLE_NAME, Checkpoint
from ..errors import SlicerError
from ..io.format import Header
from .folder import RemoteFolder
from .options import RemoteOptions
from .source import Source
from .urls import check_url

log = logging.getLogger("slicer")


def split_target(url: str) -> tuple[str, str | None]:
    """(folder URL, file name or None): a URL ending in a checkpoint file names that file."""
    stripped = url.rstrip("/")
    base = posixpath.basename(stripped)
    if base.endswith(".safetensors") or base.endswith(".index.json"):
        return stripped[: -len(base)].rstrip("/"), base
    return stripped, None


def make_source(url: str, options: RemoteOptions) -> tuple[Source | None, str | None, object]:
    """(source, file name) for a URL, or (None, None, local path) where hf:// resolves to the local cache."""
    check_url(url)  # as text, before any request
    scheme = url.split("://", 1)[0].lower()
    if scheme == "hf":
        from .hub_source import HubSource, cached_snapshot, offline_mode, parse_hf_url

        repo, url_revision, path = parse_hf_url(url)
        if url_revision is not None and options.revision is not None and url_revision != options.revision:
            raise SlicerError(f"{url}: the URL names revision {url_revision!r} but --revision is {options.revision!r}")
        revision = options.revision or url_revision
        folder, name = split_target(path) if path else ("", None)
        if offline_mode():
            snapshot = cached_snapshot(repo, revision, url)
            local = snapshot / folder if folder else snapshot
            log.info("offline mode: reading %s from the local Hugging Face cache (%s)", url, snapshot)
            return None, None, local / name if name else local
        shown = f"hf://{repo}" + (f"@{revision}" if revision else "") + (f"/{folder}" if folder else "")
        return HubSource(repo, revision, folder, shown, timeout_s=options.timeout_s), name, None
    if options.revision is not None:
        raise SlicerError(f"{url}: --revision applies to hf:// teachers only")
    folder, name = split_target(url)
    if scheme in ("http", "https"):
        try:
            from .http_source import HttpSource
        except ImportError as e:  # h11, the HTTP/1.1 engine, comes with [remote]
            raise SlicerError(f"{url}: a teacher at this URL needs h11 ({e}); "
                              "pip install 'weight-slicer[remote]'") from e
        return HttpSource(folder, requests=options.requests, timeout_s=options.timeout_s), name, None
    from .fsspec_source import FsspecSource

    return FsspecSource(folder), name, None


def open_checkpoint(url: str, role: str = "teacher", *, revision=None, cache_dir=None, options=None) -> Checkpoint:
    opts = RemoteOptions.of(options, revision=revision, cache_dir=cache_dir)
    source, name, local = make_source(url, opts)
    if source is None:  # hf:// in offline mode: the cached snapshot, a local checkpoint
        return Checkpoint.open(local, role=role)
    folder = RemoteFolder(source, opts)
    try:
        return _open(folder, name, role)
    except BaseException:
        folder.close()
        raise


def _open(folder: RemoteFolder, name: str | None, role: str) -> Checkpoint:
    named = folder.path(name or "")  # what the user named: the folder, or a file in it
    if name is None:
        name = _find_weights(folder, role)
    elif folder.find(name) is None:
        raise SlicerError(f"{named}: {role} not found")
    if name.endswith(".index.json"):
        ckpt = _from_index(folder, named, name, role)
    else:
        ckpt = Checkpoint.from_headers(named, None, [folder.header(name)])
    return dataclasses.replace(ckpt, source=folder)


def _find_weights(folder: RemoteFolder, role: str) -> str:
    if folder.find(INDEX_NAME) is not None:
        return INDEX_NAME
    if folder.find(SINGLE_NAME) is not None:
        return SINGLE_NAME
    if not folder.listable:
        raise SlicerError(f"{folder.url}: {role} not found: no {INDEX_NAME} or {SINGLE_NAME} there (an HTTP folder "
                          "cannot be listed: name the .safetensors file if it has another name)")
    candidates = [n for n in folder.names() if n.endswith(".safetensors")]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise SlicerError(f"{folder.url}: {role} folder has no {INDEX_NAME}, {SINGLE_NAME} or other .safetensors file")
    names = ", ".join(candidates[:4])
    raise SlicerError(f"{folder.url}: {role} folder has several .safetensors files ({names}) but no {INDEX_NAME}; "
                      "name the file or add the index")


def _from_index(folder: RemoteFolder, named, name: str, role: str) -> Checkpoint:
    index_path = folder.path(name)
    raw = folder.read_file(name)
    # The shards' headers are fetched side by side first; Checkpoint.from_index then
    # checks the index exactly as it checks a local one, taking them in its order.
    try:
        weight_map = json.loads(raw).get("weight_map")
        shards = list(dict.fromkeys(v for v in weight_map.values() if isinstance(v, str)))
    except (ValueError, AttributeError, RecursionError):
        shards = []  # from_index says what is wrong with the index
    inside = [s for s in shards if not s.startswith("/") and posixpath.normpath(s).split("/")[0] not in ("..", "")]
    headers = folder.headers(inside)

    def shard_header(shard: str) -> Header:
        got = headers.get(shard)
        if got is None:
            raise SlicerError(f"{index_path}: shard {shard!r} named by the index is missing")
        if isinstance(got, SlicerError):
            raise got
        return got

    return Checkpoint.from_index(named, None, index_path, raw, shard_header, role)


def recorded_revision(url: str, record: object) -> str | None:
    """The commit a manifest's ``teacher`` record pins, when ``url`` names that hf:// repository
    without a revision of its own (verify then reads what the student was made from)."""
    if not (isinstance(record, dict) and record.get("source") == "hf" and url.startswith("hf://")):
        return None
    from .hub_source import parse_hf_url

    repo, revision, _ = parse_hf_url(url)
    return record.get("revision") if revision is None and repo == record.get("repo") else None
