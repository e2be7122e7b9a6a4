"""Write the student: shards streamed front to back, finished atomically.

Everything is written inside ``OUT/.slicer-partial/`` first; a shard is written as
``NAME.incomplete`` and renamed to ``NAME`` there once all its bytes are on disk.
Only when every shard is complete are they moved into OUT, followed by the index,
config.json and, last, the manifest. A run that dies therefore never leaves anything
in OUT that looks like a finished checkpoint, and a failed run removes what it wrote.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from .errors import SlicerError
from .sink import FileSink

STAGING = ".slicer-partial"
MANIFEST_NAME = "slicer_manifest.json"
LOCK_NAME = ".slicer.lock"
RUN_NAME = "run.json"  # in staging: what the run is, for --resume
DONE_NAME = "done.json"  # in staging: completed shards with size and sha256
INDEX_NAME = "model.safetensors.index.json"


def is_student_file(name: str) -> bool:
    """Files a previous run of ours may have left in OUT (removed by --overwrite)."""
    return (name.startswith("model") and name.endswith(".safetensors")) or name in (INDEX_NAME, MANIFEST_NAME, "config.json")


class ShardWriter:
    """Appends bytes to one shard file (``NAME.incomplete`` until finished)."""

    def __init__(self, path: Path, expected_size: int, checksum: bool = True):
        self.final = path
        self.path = path.with_name(path.name + ".incomplete")
        self.expected = expected_size
        self.sha256: str | None = None
        try:
            self._sink = FileSink(self.path, checksum=checksum)
        except OSError as e:
            raise SlicerError(f"{self.path}: cannot create: {e.strerror or e}") from e

    @property
    def written(self) -> int:
        return self._sink.size

    def write(self, data) -> None:
        try:
            self._sink.write(data)
        except OSError as e:
            raise SlicerError(f"{self.final}: write failed: {e.strerror or e}") from e

    def copy_from(self, src_fd: int, offset: int, count: int) -> None:
        """Append ``count`` bytes of another file (a tensor kept whole)."""
        try:
            self._sink.copy_from(src_fd, offset, count)
        except OSError as e:
            raise SlicerError(f"{self.final}: write failed: {e.strerror or e}") from e

    def finish(self) -> None:
        try:
            size, self.sha256 = self._sink.close()
        except OSError as e:
            self.abort()
            raise SlicerError(f"{self.final}: write failed: {e.strerror or e}") from e
        if size != self.expected:
            self.abort()
            raise SlicerError(f"{self.final}: wrote {size} bytes, planned {self.expected} (internal error)")
        os.replace(self.path, self.final)

    def abort(self) -> None:
        self._sink.abort()
        self.path.unlink(missing_ok=True)


class OutputDir:
    """OUT, its lock and its staging folder; knows how to finish, resume or undo a run.

    The staging folder holds ``run.json`` (what the run is: teacher files, options,
    layout) and ``done.json`` (the shards completed so far, with size and sha256), so
    a killed run can be resumed by a later one that would write the very same bytes.
    """

    def __init__(self, out: Path, *, overwrite: bool = False, resume: bool = False):
        self.out = out
        self.overwrite = overwrite or resume  # resuming replaces the student files of OUT
        self.resume = resume
        self.created = False
        self.staging = out / STAGING
        self._lock_fd = -1
        self.done: dict[str, dict] = {}
        if out.exists() and not out.is_dir():
            raise SlicerError(f"{out}: output exists and is not a folder")

    def open(self, fingerprint: dict) -> dict[str, dict]:
        """Lock OUT and prepare staging. Returns the shards a killed run completed
        (only with resume, and only if it was the same run): name -> {size, sha256}."""
        fresh = False
        try:
            if not self.out.exists():
                self.out.mkdir(parents=True)
                self.created = True
            self._lock()
            leftovers = [p.name for p in self.out.iterdir() if p.name not in (STAGING, LOCK_NAME)]
            if leftovers and not self.overwrite:
                raise SlicerError(f"{self.out}: output folder is not empty ({sorted(leftovers)[0]}, ...); "
                                  "pass --overwrite to replace the student in it")
            if self.resume and (self.staging / RUN_NAME).is_file():
                self.done = self._resumable(fingerprint)
            else:
                fresh = True
                shutil.rmtree(self.staging, ignore_errors=True)
                self.staging.mkdir()
                _write_atomic(self.staging / RUN_NAME, _dump(fingerprint))
                self.done = {}
        except BaseException as e:
            # Refused or failed: no run holds OUT now (the staging of a refused --resume
            # stays for a corrected rerun), so a later run in this process may lock it.
            held = self._lock_fd >= 0  # not when another run holds OUT: its files stay
            if fresh:
                shutil.rmtree(self.staging, ignore_errors=True)
            self._unlock()
            if self.created and held:
                shutil.rmtree(self.out, ignore_errors=True)
            if isinstance(e, OSError):
                raise SlicerError(f"{self.out}: cannot prepare the output folder: {e.strerror or e}") from e
            raise
        return dict(self.done)

    def _lock(self) -> None:
        """One run per OUT: a second one is refused, not interleaved."""
        self._lock_fd = os.open(self.out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise SlicerError(f"{self.out}: another slicer run is writing into this folder; wait for it or choose another OUT") from None

    def _resumable(self, fingerprint: dict) -> dict[str, dict]:
        try:
            before = json.loads((self.staging / RUN_NAME).read_text())
        except (OSError, ValueError):
            before = None
        if before != fingerprint:
            raise SlicerError(f"{self.out}: cannot resume: {_what_changed(before, fingerprint)}; "
                              "rerun with --overwrite instead of --resume to start over")
        try:
            recorded = json.loads((self.staging / DONE_NAME).read_text())
        except (OSError, ValueError):
            recorded = {}
        done = {}
        for name, rec in recorded.items():
            path = self.staging / name
            if path.is_file() and path.stat().st_size == rec.get("size") and sha256_file(path)[0] == rec.get("sha256"):
                done[name] = rec
        for p in self.staging.iterdir():  # half-written or unverifiable leftovers are redone
            if p.name not in done and p.name not in (RUN_NAME, DONE_NAME):
                p.unlink()
        _write_atomic(self.staging / DONE_NAME, _dump(done))
        return done

    def shard(self, filename: str, size: int) -> ShardWriter:
        return ShardWriter(self.staging / filename, size)

    def record_done(self, writer: ShardWriter) -> None:
        """Called once a shard is complete: a resumed run will keep it."""
        self.done[writer.final.name] = {"size": writer.written, "sha256": writer.sha256}
        try:
            _write_atomic(self.staging / DONE_NAME, _dump(self.done))
        except OSError as e:  # e.g. the disk filled up right at the end of a shard
            raise SlicerError(f"{self.staging / DONE_NAME}: write failed: {e.strerror or e}") from e

    def finish(self, shard_names: list[str], extra_files: dict[str, bytes], manifest: dict) -> None:
        """Move the shards in, then index/config, then the manifest (the 'done' mark)."""
        placed: list[str] = []  # what this run put into OUT: taken out again if it cannot finish
        try:
            if self.overwrite:
                for p in self.out.iterdir():
                    if p.is_file() and is_student_file(p.name):
                        p.unlink()
            for name in shard_names:
                placed.append(name)
                os.replace(self.staging / name, self.out / name)
            for name, data in extra_files.items():
                placed.append(name)
                _write_atomic(self.out / name, data)
            placed.append(MANIFEST_NAME)
            _write_atomic(self.out / MANIFEST_NAME, json.dumps(manifest, indent=1).encode() + b"\n")
            shutil.rmtree(self.staging, ignore_errors=True)
        except BaseException as e:
            for name in placed:  # e.g. the disk filled up: no half student in a folder we did not create
                for p in (self.out / name, self.out / (name + ".incomplete")):
                    with contextlib.suppress(OSError):
                        p.unlink(missing_ok=True)
            if isinstance(e, OSError):
                what = f"{os.path.basename(e.filename)}: " if e.filename else ""
                raise SlicerError(f"{self.out}: cannot finish the student: {what}{e.strerror or e}") from e
            raise
        finally:
            self._unlock()

    def abort(self) -> None:
        """Undo the run: staging removed, and OUT too if this run created it."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self._unlock()
        if self.created:
            shutil.rmtree(self.out, ignore_errors=True)

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            (self.out / LOCK_NAME).unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = -1


def _dump(obj: dict) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n"


def _what_changed(before: dict | None, now: dict) -> str:
    if not isinstance(before, dict):
        return "the interrupted run left no readable record"
    for key in ("teacher", "student", "options"):
        if before.get(key) != now.get(key):
            detail = before.get(key), now.get(key)
            if key == "teacher":
                return "the teacher's files changed since the interrupted run (names, sizes or modification times)"
            if key == "options":
                old = detail[0] or {}
                diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in detail[1].items() if old.get(k) != v]
                return "the options differ from the interrupted run's (" + ", ".join(diff) + ")"
            return "the student differs from the interrupted run's"
    return "the planned output differs from the interrupted run's"


def sha256_file(path: Path) -> tuple[str, int]:
    """(sha256 hex digest, bytes read) of a file, read in 8 MB blocks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".incomplete")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def index_json(shards: list[tuple[str, list[str]]], total_size: int) -> bytes:
    """model.safetensors.index.json, as save_pretrained writes it."""
    weight_map = {name: filename for filename, names in shards for name in names}
    obj = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    return (json.dumps(obj, indent=2) + "\n").encode()
