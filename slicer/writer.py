"""Write the student: shards streamed front to back, finished atomically.

Everything is written inside ``OUT/.slicer-partial/`` first; a shard is written as
``NAME.incomplete`` and renamed to ``NAME`` there once all its bytes are on disk.
Only when every shard is complete are they moved into OUT, followed by the index,
config.json and, last, the manifest. A run that dies therefore never leaves anything
in OUT that looks like a finished checkpoint, and a failed run removes what it wrote.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .errors import SlicerError

STAGING = ".slicer-partial"
MANIFEST_NAME = "slicer_manifest.json"
INDEX_NAME = "model.safetensors.index.json"


def is_student_file(name: str) -> bool:
    """Files a previous run of ours may have left in OUT (removed by --overwrite)."""
    return (name.startswith("model") and name.endswith(".safetensors")) or name in (INDEX_NAME, MANIFEST_NAME, "config.json")


class ShardWriter:
    """Appends bytes to one shard file, tracking how much went in."""

    def __init__(self, path: Path, expected_size: int, checksum: bool = True):
        self.final = path
        self.path = path.with_name(path.name + ".incomplete")
        self.expected = expected_size
        self.written = 0
        self.hash = hashlib.sha256() if checksum else None
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            raise SlicerError(f"{self.path}: cannot create: {e.strerror or e}") from e

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        if self.hash is not None:
            self.hash.update(view)  # releases the GIL for large buffers
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self.written += n
        except OSError as e:
            raise SlicerError(f"{self.final}: write failed: {e.strerror or e}") from e

    def copy_from(self, src_fd: int, offset: int, count: int) -> None:
        """Copy bytes file to file inside the kernel (no trip through user memory)."""
        if self.hash is not None:  # the bytes must pass through us to be hashed
            self._copy_by_reading(src_fd, offset, count)
            return
        try:
            while count:
                n = os.copy_file_range(src_fd, self.fd, count, offset)
                if n == 0:
                    raise SlicerError(f"{self.final}: source file ended early while copying")
                offset += n
                count -= n
                self.written += n
        except OSError as e:
            if e.errno in (18, 22, 38, 95):  # EXDEV, EINVAL, ENOSYS, EOPNOTSUPP: fall back
                self._copy_by_reading(src_fd, offset, count)
            else:
                raise SlicerError(f"{self.final}: write failed: {e.strerror or e}") from e

    def _copy_by_reading(self, src_fd: int, offset: int, count: int) -> None:
        block = 8 << 20
        while count:
            data = os.pread(src_fd, min(block, count), offset)
            if not data:
                raise SlicerError(f"{self.final}: source file ended early while copying")
            self.write(data)
            offset += len(data)
            count -= len(data)

    @property
    def sha256(self) -> str | None:
        return self.hash.hexdigest() if self.hash is not None else None

    def finish(self) -> None:
        os.close(self.fd)
        self.fd = -1
        if self.written != self.expected:
            raise SlicerError(f"{self.final}: wrote {self.written} bytes, planned {self.expected} (internal error)")
        os.replace(self.path, self.final)

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)


class OutputDir:
    """OUT and its staging folder; knows how to finish or undo a run."""

    def __init__(self, out: Path, overwrite: bool):
        self.out = out
        self.overwrite = overwrite
        self.created = False
        if out.exists() and not out.is_dir():
            raise SlicerError(f"{out}: output exists and is not a folder")
        if out.exists():
            leftovers = [p.name for p in out.iterdir() if p.name != STAGING]
            if leftovers and not overwrite:
                raise SlicerError(f"{out}: output folder is not empty ({leftovers[0]}, ...); pass --overwrite to replace the student in it")
        self.staging = out / STAGING

    def open(self) -> None:
        try:
            if not self.out.exists():
                self.out.mkdir(parents=True)
                self.created = True
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging.mkdir()
        except OSError as e:
            raise SlicerError(f"{self.out}: cannot create output folder: {e.strerror or e}") from e

    def shard(self, filename: str, size: int) -> ShardWriter:
        return ShardWriter(self.staging / filename, size)

    def finish(self, shard_names: list[str], extra_files: dict[str, bytes], manifest: dict) -> None:
        """Move the shards in, then index/config, then the manifest (the 'done' mark)."""
        try:
            if self.overwrite:
                for p in self.out.iterdir():
                    if p.is_file() and is_student_file(p.name) and p.name not in shard_names:
                        p.unlink()
            for name in shard_names:
                os.replace(self.staging / name, self.out / name)
            for name, data in extra_files.items():
                _write_atomic(self.out / name, data)
            _write_atomic(self.out / MANIFEST_NAME, json.dumps(manifest, indent=1).encode() + b"\n")
            shutil.rmtree(self.staging, ignore_errors=True)
        except OSError as e:
            raise SlicerError(f"{self.out}: cannot finish the student: {e.strerror or e}") from e

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.created:
            shutil.rmtree(self.out, ignore_errors=True)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".incomplete")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def index_json(shards: list[tuple[str, list[str]]], total_size: int) -> bytes:
    """model.safetensors.index.json, as save_pretrained writes it."""
    weight_map = {name: filename for filename, names in shards for name in names}
    obj = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    return (json.dumps(obj, indent=2) + "\n").encode()
