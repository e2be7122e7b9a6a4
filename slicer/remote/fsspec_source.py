"""Any fsspec URL (``s3://`` through s3fs, ``gs://``, ``az://``, ``file://``...), through fsspec.

Credentials and endpoints come from each file system's usual configuration (for S3:
the AWS environment and config files, ``AWS_ENDPOINT_URL``; for any protocol, fsspec's
``FSSPEC_<PROTOCOL>_<OPTION>`` variables). Ranges are read through ``fs.open(...,
cache_type="none")``: one request per read, and s3fs sends the listing's ETag with it
(``If-Match``), so a file replaced since the plan fails as ``FileExpired`` instead of
answering new bytes. Stores that cannot do that are checked again at the end of the run.
"""
from __future__ import annotations

import errno
import posixpath

from ..errors import SlicerError
from .source import Changed, RemoteFile, Source, Transient, Write, join

INSTALL_HINT = "pip install 'weight-slicer[remote]'"


class FsspecSource(Source):
    def __init__(self, folder_url: str):
        try:
            import fsspec
        except ImportError as e:
            raise SlicerError(f"{folder_url}: a teacher at this URL needs fsspec ({e}); {INSTALL_HINT}") from e
        try:
            self.fs, self.root = fsspec.core.url_to_fs(folder_url)
        except ImportError as e:  # fsspec names the package a protocol needs (s3fs ships with [remote])
            hint = f"; {INSTALL_HINT}" if folder_url.startswith(("s3://", "s3a://")) else ""
            raise SlicerError(f"{folder_url}: {e}{hint}") from e
        except ValueError as e:  # an unknown protocol
            raise SlicerError(f"{folder_url}: {e}") from e
        protocol = self.fs.protocol
        self.kind = protocol[0] if isinstance(protocol, (tuple, list)) else protocol
        self.url = folder_url.rstrip("/")
        self.root = self.root.rstrip("/")

    def list(self) -> dict[str, RemoteFile]:
        entries = self._call(self.url, lambda: self.fs.ls(self.root, detail=True))
        files = {}
        for entry in entries:
            if entry.get("type") != "file":
                continue
            name = posixpath.relpath(entry["name"].rstrip("/"), self.root)
            files[name] = self._file(name, entry)
        return files

    def stat(self, name: str) -> RemoteFile | None:
        try:
            entry = self._call(join(self.url, name), lambda: self.fs.info(self._path(name)))
        except _Missing:
            return None
        return self._file(name, entry) if entry.get("type") == "file" else None

    def restat(self, file: RemoteFile) -> RemoteFile | None:
        self.fs.invalidate_cache(self._path(file.name))
        return self.stat(file.name)

    def read(self, file: RemoteFile, start: int, end: int, write: Write) -> None:
        def one_read() -> bytes:
            with self.fs.open(self._path(file.name), "rb", cache_type="none") as f:
                f.seek(start)
                return f.read(end - start)

        write(self._call(file.url, one_read))

    def _path(self, name: str) -> str:
        return self.root + "/" + name

    def _file(self, name: str, entry: dict) -> RemoteFile:
        etag = entry.get("ETag") or entry.get("etag") or entry.get("md5Hash") or entry.get("generation")
        return RemoteFile(name, join(self.url, name), int(entry["size"]), None if etag is None else str(etag))

    def _call(self, url: str, fn):
        try:
            return fn()
        except FileNotFoundError as e:
            raise _Missing(f"{url}: not found") from e
        except PermissionError as e:
            raise SlicerError(f"{url}: access denied ({e}); check the credentials (for S3: AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the instance's role)") from e
        except OSError as e:
            if e.errno == errno.EBUSY or type(e).__name__ == "FileExpired":  # s3fs: the ETag no longer matches
                raise Changed(f"{url}: the remote file changed since the plan ({e}); plan again") from e
            raise Transient(f"{type(e).__name__}: {e}") from e
        except (ValueError, TypeError, SlicerError):
            raise
        except Exception as e:  # noqa: BLE001 - a file system's own transport errors (aiohttp, botocore...)
            raise Transient(f"{type(e).__name__}: {e}") from e


class _Missing(SlicerError):
    """A file or prefix that does not exist (a SlicerError when it was needed)."""
