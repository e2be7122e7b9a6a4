"""What every kind of remote teacher offers: files with a size and an ETag, and byte ranges of them.

A :class:`Source` is one protocol's thin edge (Hugging Face Hub, fsspec, plain HTTP):
it lists or stats files and streams one byte range of one file. Everything above it
(retries, coalescing, prefetching, the cache) is shared. Sources raise
:class:`Transient` for failures worth retrying, :class:`Changed` when a file is no
longer the one the plan read, and :class:`~slicer.errors.SlicerError` for the rest.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import SlicerError

Write = Callable[[bytes | memoryview], None]


class Transient(Exception):
    """A failure worth retrying: a dropped connection, a timeout, a 5xx or 429, a short body."""


class Changed(SlicerError):
    """The remote file is not the one the plan read (size or ETag differs)."""


@dataclass(frozen=True)
class RemoteFile:
    name: str  # relative to the checkpoint's folder, "/"-separated
    url: str  # what messages show (and, for HTTP, what is requested)
    size: int
    etag: str | None  # ETag, LFS sha256 or git blob id; None when the store gives none

    def describe(self) -> dict:
        return {"name": self.name, "size": self.size, "etag": self.etag}


class Source:
    """One remote folder (the teacher's), reached through one protocol."""

    kind = "remote"  # "hf", "http", "s3", ...
    url = ""  # the folder, as messages name it
    side_files: tuple[str, ...] = ()  # where list() cannot: the small files to look for by name

    def list(self) -> dict[str, RemoteFile] | None:
        """Every file of the folder (names relative to it), or None if it cannot be listed."""
        raise NotImplementedError

    def stat(self, name: str) -> RemoteFile | None:
        """One file, None if it does not exist."""
        raise NotImplementedError

    def restat(self, file: RemoteFile) -> RemoteFile | None:
        """The file as the store has it now (for the end-of-run check); immutable stores return it as is."""
        return self.stat(file.name)

    def read(self, file: RemoteFile, start: int, end: int, write: Write) -> None:
        """Stream bytes ``start..end-1`` of ``file`` into ``write``, in order."""
        raise NotImplementedError

    def identity(self) -> dict:
        """What pins this teacher beyond its files' ETags (e.g. a Hub commit), for the manifest."""
        return {}

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class RemotePath:
    """A remote file where the rest of slicer expects a Path: in TensorInfo.path,
    Checkpoint.files and config_path(). Prints as its URL; read_bytes() fetches it."""

    url: str
    name: str
    folder: Any = field(compare=False, repr=False)  # the RemoteFolder it belongs to (folder.py: above this module)

    def __str__(self) -> str:
        return self.url

    def read_bytes(self) -> bytes:
        return self.folder.read_file(self.name)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def resolve(self) -> "RemotePath":
        return self

    def is_file(self) -> bool:
        return True  # made only for files the folder has


def join(folder_url: str, name: str) -> str:
    return folder_url.rstrip("/") + "/" + name if name else folder_url


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def check_range_response(file: RemoteFile, start: int, end: int, status: int, headers, etag_checked: bool) -> int:
    """Check an HTTP response to ``Range: bytes=start-(end-1)``; returns the end of the bytes it carries.

    Shared by the Hub and the plain HTTP sources: a 206 must be for ``start``, of a file
    of the plan's size (else the file changed); a 200 (the range ignored) is accepted
    only for the whole file. A 206 may carry less than asked (servers cap ranges): the
    caller asks again for the rest.
    """
    if status == 200:
        if start == 0 and end == file.size:
            return end
        raise SlicerError(f"{file.url}: the server ignores range requests (HTTP 200 to a Range request); "
                          "slicer needs ranges to fetch only the kept rows")
    m = _CONTENT_RANGE.fullmatch((headers.get("Content-Range") or "").strip())
    if not m:
        raise Transient(f"HTTP 206 without a valid Content-Range ({headers.get('Content-Range')!r})")
    first, last, total = int(m.group(1)), int(m.group(2)), m.group(3)
    if total != "*" and int(total) != file.size:
        raise Changed(f"{file.url}: the remote file changed since the plan (now {total} bytes, planned {file.size}); "
                      "plan again")
    etag = headers.get("ETag")
    if not etag_checked and etag and file.etag and etag != file.etag:
        raise Changed(f"{file.url}: the remote file changed since the plan (ETag {etag}, planned {file.etag}); plan again")
    if first != start or last < start or last >= end:
        raise Transient(f"HTTP 206 for bytes {first}-{last}, asked for {start}-{end - 1}")
    return last + 1


def status_error(file_url: str, status: int, reason: str = "") -> Exception:
    """The exception for an HTTP error status: retried (408, 429, 5xx) or one line."""
    what = f"HTTP {status}{' ' + reason if reason else ''}"
    if status in (408, 425, 429) or status >= 500:
        return Transient(what)
    if status == 404:
        return SlicerError(f"{file_url}: not found ({what})")
    if status in (401, 403):
        return SlicerError(f"{file_url}: access denied ({what}); check the credentials (a token, or the "
                           "storage's usual environment variables)")
    if status in (412, 416):
        return Changed(f"{file_url}: the remote file changed since the plan ({what}); plan again")
    return SlicerError(f"{file_url}: {what}")


class Pieces:
    """Where the bytes of one request go, in order: (buffer or None, length) targets;
    None drops the bytes (a gap between spans)."""

    def __init__(self, targets: list[tuple[memoryview | None, int]]):
        self.targets = targets
        self.total = sum(n for _, n in targets)
        self.reset()

    def reset(self) -> None:
        self.filled = 0
        self._i = 0
        self._at = 0

    def write(self, data) -> None:
        mv = memoryview(data).cast("B")
        pos = 0
        while pos < len(mv):
            if self._i == len(self.targets):
                raise Transient(f"the server sent more than the {self.total} bytes asked for")
            dest, n = self.targets[self._i]
            k = min(n - self._at, len(mv) - pos)
            if dest is not None:
                dest[self._at:self._at + k] = mv[pos:pos + k]
            self._at += k
            pos += k
            self.filled += k
            if self._at == n:
                self._i += 1
                self._at = 0
