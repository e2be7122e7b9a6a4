"""Write the student: shards streamed front to back, finished atomically.

Everything is written inside ``OUT/.slicer-partial/`` first; a shard is written as
``NAME.incomplete``, fsynced, and renamed to ``NAME`` there once all its bytes are on
disk. Only when every shard, and the index, config.json and the manifest (in
``new/``), are complete in staging are they moved into OUT, the manifest last. A run that dies therefore never
leaves anything in OUT that looks like a finished checkpoint, and a failed run
removes what it wrote.

Which files in OUT a run may replace: those a previous slicer run recorded (the
``files`` list of OUT's manifest, or of a killed run's staging record) and those
this run writes under the same names. Every other file in OUT is left as it is.
While the new student moves in, the files it replaces wait in staging
(``replaced/``), so OUT holds the old student or the complete new one at every
moment: a failure or an interrupt puts the old files back, and a run killed in the
middle (SIGKILL, power loss) is rolled back by the next run into OUT, which finds
the journal (``finish.json``) it left.

Long on purpose: OUT's rules (staging, journal, lock, the swap, what --resume and --overwrite may keep or remove) are one state machine; split, its invariants would be spread over modules that tests/test_safety.py holds to them together.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
from pathlib import Path

from ..errors import SlicerError
from . import stop
from .sink import FileSink

log = logging.getLogger("slicer")

STAGING = ".slicer-partial"
MANIFEST_NAME = "slicer_manifest.json"
LOCK_NAME = ".slicer.lock"
RUN_NAME = "run.json"  # in staging: what the run is and which files of OUT it may replace, for --resume
DONE_NAME = "done.json"  # in staging: completed shards (size, sha256 and what stat said after the fsync)
JOURNAL_NAME = "finish.json"  # in staging while the new student moves in: what a killed finish must undo
ASIDE_NAME = "replaced"  # in staging while the new student moves in: the files it replaces
NEW_NAME = "new"  # in staging: index, config, copied files and manifest (apart: any name is safe there)
INDEX_NAME = "model.safetensors.index.json"
RUN_FORMAT = "slicer-run/2"
# Names that hold weights: kept (with a warning) where slicer did not write them.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".pkl",
                   ".npz", ".ot", ".tflite", ".index.json")


def fingerprint(record: dict) -> dict:
    """What makes two runs write the same bytes: compared by --resume (with a killed
    run's staging record, or with a finished student's manifest)."""
    layout = hashlib.sha256(json.dumps(record["tensors"], sort_keys=True).encode()).hexdigest()
    shards = [{"name": s["name"], "size": s["size"]} for s in record["shards"]]
    keys = {"teacher": record["teacher"], "student": record["student"], "options": record["options"],
            "layout": layout, "shards": shards}
    if record.get("scores"):  # importance: other scores, other index sets
        keys["scores"] = record["scores"]
    if record.get("rotation"):  # a rotated hidden axis (slicer.rotation): another rotation, other values
        keys["rotation"] = {k: record["rotation"].get(k) for k in ("sha256", "student_hidden", "site_gains")}
    return json.loads(json.dumps(keys))  # a copy, in the form it takes on disk


def is_student_file(name: str) -> bool:
    """Names a slicer student is made of (verify reports such files the manifest does not list)."""
    return (name.startswith("model") and name.endswith(".safetensors")) or name in (INDEX_NAME, MANIFEST_NAME, "config.json")


def recorded_files(manifest: object) -> set[str]:
    """The files of OUT that a finished slicer run says it wrote (its manifest)."""
    if not isinstance(manifest, dict) or not str(manifest.get("format", "")).startswith("slicer-manifest/"):
        return set()
    names = manifest.get("files")
    if not isinstance(names, list):  # written before manifests listed their files
        shards = manifest.get("shards") if isinstance(manifest.get("shards"), list) else []
        names = [s.get("name") for s in shards if isinstance(s, dict)] + [INDEX_NAME, MANIFEST_NAME, "config.json"]
        student = manifest.get("student")
        if isinstance(student, dict) and isinstance(student.get("copied_files"), list):
            names += student["copied_files"]
    return {n for n in names if _plain_name(n)}


def proven_files(out: Path, manifest: object, skip=()) -> set[str]:
    """Files of OUT that a finished slicer run provably wrote: each one's size and sha256
    equal what its manifest recorded (``shards``, and ``written`` for the other files);
    the manifest itself, the record, when it is one. Names in ``skip`` are not hashed."""
    if not isinstance(manifest, dict) or not str(manifest.get("format", "")).startswith("slicer-manifest/"):
        return set()
    records: dict[str, dict] = {}
    written = manifest.get("written")
    for name, rec in (written.items() if isinstance(written, dict) else ()):
        records[name] = rec
    shards = manifest.get("shards")
    for rec in (shards if isinstance(shards, list) else ()):
        if isinstance(rec, dict):
            records.setdefault(rec.get("name"), rec)
    proven = {MANIFEST_NAME}
    for name, rec in records.items():
        if not _plain_name(name) or name in skip or not isinstance(rec, dict):
            continue
        path = out / name
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == rec.get("size") and isinstance(rec.get("sha256"), str):
            with contextlib.suppress(OSError):
                if sha256_file(path)[0] == rec["sha256"]:
                    proven.add(name)
    return proven


def _plain_name(name: object) -> bool:
    """A file directly in OUT: a recorded name can never reach outside it."""
    return (isinstance(name, str) and name not in ("", ".", "..", STAGING, LOCK_NAME)
            and os.path.basename(name) == name and "\0" not in name)


class ShardWriter:
    """Appends bytes to one shard file (``NAME.incomplete`` until finished)."""

    def __init__(self, path: Path, expected_size: int, checksum: bool = True):
        self.final = path
        self.path = path.with_name(path.name + ".incomplete")
        self.expected = expected_size
        self.sha256: str | None = None
        self.record: dict = {}  # once finished: what done.json keeps about the shard
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
        """Close, fsync, rename into place; then note what stat says, for --resume."""
        try:
            size, self.sha256 = self._sink.close()
            if size == self.expected:
                _fsync_file(self.path)  # the bytes are on disk before the record says so
        except OSError as e:
            self.abort()
            raise SlicerError(f"{self.final}: write failed: {e.strerror or e}") from e
        if size != self.expected:
            self.abort()
            raise SlicerError(f"{self.final}: wrote {size} bytes, planned {self.expected} (internal error)")
        os.replace(self.path, self.final)
        self.record = {"size": size, "sha256": self.sha256, **_stamp(os.stat(self.final))}

    def abort(self) -> None:
        self._sink.abort()
        self.path.unlink(missing_ok=True)


class OutputDir:
    """OUT, its lock and its staging folder; knows how to finish, resume or undo a run.

    The staging folder holds ``run.json`` (what the run is: teacher files, options,
    layout; the files it will write and those of OUT it may replace) and
    ``done.json`` (the shards completed so far), so a killed run can be resumed by a
    later one that would write the very same bytes.
    """

    def __init__(self, out: Path, *, overwrite: bool = False, resume: bool = False):
        self.out = Path(out)
        self.overwrite = overwrite
        self.resume = resume
        self.created = False
        self.staging = self.out / STAGING
        self._lock_fd = -1
        self.done: dict[str, dict] = {}
        self.replace: list[str] = []  # files of OUT this run replaces or removes (the summary lists them)
        self.unchanged = False  # --resume found this very student finished: nothing to do
        self.committed = False  # the new student is complete in OUT
        self._opened = False  # open() succeeded: abort() has a run to undo
        self._lock_refused = False  # another run holds OUT: its files are not ours to remove
        self._had_student = False
        try:
            st = os.lstat(self.out)
        except FileNotFoundError:
            return
        except OSError as e:  # a name too long, a parent that is a file, no permission...
            raise SlicerError(f"{self.out}: cannot use as the output folder: {e.strerror or e}") from e
        if not stat.S_ISDIR(os.stat(self.out).st_mode if stat.S_ISLNK(st.st_mode) else st.st_mode):
            raise SlicerError(f"{self.out}: output exists and is not a folder")

    # -- starting a run ------------------------------------------------------------------

    def open(self, fingerprint: dict, files: list[str]) -> dict[str, dict]:
        """Lock OUT, decide what this run may replace, prepare staging.

        ``files`` are the names this run will write into OUT. Returns the shards a
        killed run completed that this one keeps (only with resume, and only for the
        same run): name -> record. Sets ``unchanged`` when --resume finds the same
        student already finished (then nothing is written).
        """
        fresh = False
        try:
            if not self.out.exists():
                self.out.mkdir(parents=True)
                self.created = True
            self._lock()
            with stop.deferred():
                self._recover()
            entries = sorted(n for n in os.listdir(self.out) if n not in (STAGING, LOCK_NAME))
            staged = _read_run(self.staging / RUN_NAME)
            previous = _read_json(self.out / MANIFEST_NAME)
            action = self._decide(entries, fingerprint, files, staged, previous)
            if action == "unchanged":
                self.unchanged = True
                self._unlock()
                return {}
            # Removed unless this run writes the same name: only files whose size and sha256 match
            # what a finished slicer run recorded (a name in a manifest or run.json is no proof).
            owned = proven_files(self.out, previous, skip=files)
            self.replace = [n for n in entries if (n in owned or n in files) and not _is_folder(self.out / n)]
            self._had_student = bool(recorded_files(previous) & set(entries))
            self._check_replaceable(files)
            kept_weights = [n for n in entries if n not in self.replace and n.endswith(WEIGHT_SUFFIXES)]
            if kept_weights:
                log.warning("%s: keeping %s: weights slicer did not write (loaders may pick them up beside the student)",
                            self.out, ", ".join(kept_weights))
            record = {"format": RUN_FORMAT, "fingerprint": fingerprint, "files": list(files),
                      "replace": self.replace, "found": entries}
            if action == "resume":
                self.done = self._resumable()
                _write_atomic(self.staging / RUN_NAME, _dump(record))
            else:
                fresh = True
                shutil.rmtree(self.staging, ignore_errors=True)
                self.staging.mkdir()
                _write_atomic(self.staging / RUN_NAME, _dump(record))
                self.done = {}
            _fsync_dir(self.staging)
            self._opened = True
        except BaseException as e:
            # Refused or failed: no run holds OUT now (the staging of a refused --resume
            # stays for a corrected rerun), so a later run in this process may lock it.
            if fresh:
                shutil.rmtree(self.staging, ignore_errors=True)
            self._unlock()
            if self.created and not self._lock_refused:
                shutil.rmtree(self.out, ignore_errors=True)
            if isinstance(e, OSError):
                raise SlicerError(f"{self.out}: cannot prepare the output folder: {e.strerror or e}") from e
            raise
        return dict(self.done)

    def _decide(self, entries: list[str], fingerprint: dict, files: list[str], staged: dict | None,
                previous: dict | None) -> str:
        """"fresh", "resume" or "unchanged"; raises SlicerError where the flags do not allow the run."""
        def listing() -> str:
            return f"{entries[0]}, ..." if len(entries) > 1 else entries[0]

        if self.resume and staged is not None:
            if staged.get("fingerprint") == fingerprint:
                unseen = [n for n in entries if n not in staged.get("found", ())]
                if unseen and not self.overwrite:
                    raise SlicerError(f"{self.out}: cannot resume: {unseen[0]} appeared in OUT after the interrupted run "
                                      "began; add --overwrite to replace only the student's files and keep the others")
                return "resume"
            if not self.overwrite:
                raise SlicerError(f"{self.out}: cannot resume: {_what_changed(staged.get('fingerprint'), fingerprint)}; "
                                  "rerun with --overwrite instead of --resume to start over")
            return "fresh"
        if self.resume and previous is not None:
            theirs = _fingerprint_of(previous)
            if theirs == fingerprint:
                damage = _damage(self.out, previous)
                if damage is None:
                    return "unchanged"
                if not self.overwrite:
                    raise SlicerError(f"{self.out}: cannot resume: OUT holds this student, but {damage}; "
                                      "rerun with --overwrite to write it again")
                return "fresh"
            if not self.overwrite:
                what = _what_changed(theirs, fingerprint, finished=True)
                raise SlicerError(f"{self.out}: cannot resume: OUT holds a finished student, and {what}; "
                                  "rerun with --overwrite instead of --resume to replace it")
            return "fresh"
        if entries and not self.overwrite:
            if self.resume:
                raise SlicerError(f"{self.out}: cannot resume: OUT holds no interrupted slicer run ({listing()}); "
                                  "pass --overwrite instead to write the student into it (only files of the same "
                                  "names are replaced)")
            raise SlicerError(f"{self.out}: output folder is not empty ({listing()}); "
                              "pass --overwrite to replace the student in it")
        return "fresh"

    def _check_replaceable(self, files: list[str]) -> None:
        for name in files:
            path = self.out / name
            if _is_folder(path):
                raise SlicerError(f"{path}: is a folder where the student's file {name} goes; move it away first")

    def _lock(self) -> None:
        """One run per OUT: a second one is refused, not interleaved."""
        self._lock_fd = os.open(self.out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            self._lock_refused = True
            raise SlicerError(f"{self.out}: another slicer run is writing into this folder; wait for it or choose another OUT") from None

    def _resumable(self) -> dict[str, dict]:
        """The killed run's completed shards that can be trusted; the rest of staging is dropped.

        A shard is kept without reading it when size, mtime, ctime, inode and device
        all equal what stat said right after its fsync (any write, truncation,
        replacement, chmod or utime since changes one of them). When only ctime,
        inode or device differ (the folder was copied or hard-linked) its sha256 is
        computed again and must match. Anything else is rewritten.
        """
        recorded = _read_json(self.staging / DONE_NAME)
        done = {}
        for name, rec in (recorded or {}).items():
            path = self.staging / name
            if not (_plain_name(name) and isinstance(rec, dict)):
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size != rec.get("size"):
                continue
            now = _stamp(st)
            if all(rec.get(k) == v for k, v in now.items()):
                done[name] = rec
            elif rec.get("mtime_ns") == now["mtime_ns"] and sha256_file(path)[0] == rec.get("sha256"):
                done[name] = {**rec, **now}
        for p in self.staging.iterdir():  # half-written or untrusted leftovers are redone
            if p.name not in done and p.name not in (RUN_NAME, DONE_NAME):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        _write_atomic(self.staging / DONE_NAME, _dump(done))
        return done

    # -- writing -------------------------------------------------------------------------

    def shard(self, filename: str, size: int) -> ShardWriter:
        return ShardWriter(self.staging / filename, size)

    def record_done(self, writer: ShardWriter) -> None:
        """Called once a shard is complete (and fsynced): a resumed run will keep it."""
        self.record(writer.final.name, writer.record or {"size": writer.written, "sha256": writer.sha256})

    def record(self, name: str, record: dict) -> None:
        """Note a completed shard in staging (a distributed run's worker wrote it there)."""
        self.done[name] = record
        try:
            _write_atomic(self.staging / DONE_NAME, _dump(self.done))
        except OSError as e:  # e.g. the disk filled up right at the end of a shard
            raise SlicerError(f"{self.staging / DONE_NAME}: write failed: {e.strerror or e}") from e

    # -- finishing -----------------------------------------------------------------------

    def finish(self, shard_names: list[str], extra_files: dict[str, bytes], manifest: dict) -> None:
        """Write index/config/manifest into staging, then swap the student into OUT.

        The files the run replaces move into staging first, then the new ones move
        in, the manifest last (the 'done' mark). Until the manifest is in place any
        failure or interrupt puts the old files back; Ctrl-C and SIGTERM wait for the
        swap to end, so OUT always holds one student or the other.
        """
        placed: list[str] = []
        aside: list[str] = []
        extra = [*extra_files, MANIFEST_NAME]
        with stop.deferred():
            try:
                (self.staging / NEW_NAME).mkdir(exist_ok=True)
                for name, data in extra_files.items():
                    _write_atomic(self.staging / NEW_NAME / name, data, sync=True)
                # What a later --overwrite may remove: every file by size and sha256, the manifest aside.
                written = {n: dict(zip(("sha256", "size"), sha256_file(self.staging / NEW_NAME / n)))
                           for n in extra_files}
                written |= {n: {"sha256": self.done[n]["sha256"], "size": self.done[n]["size"]} for n in shard_names}
                manifest = {**manifest, "written": dict(sorted(written.items()))}
                _write_atomic(self.staging / NEW_NAME / MANIFEST_NAME, json.dumps(manifest, indent=1).encode() + b"\n",
                              sync=True)
                _fsync_dir(self.staging / NEW_NAME)
                placing = [*shard_names, *extra]
                appeared = [n for n in placing if os.path.lexists(self.out / n) and n not in self.replace]
                if appeared:
                    raise SlicerError(f"{self.out / appeared[0]}: appeared in OUT during the run; not replacing it "
                                      "(rerun with --overwrite to replace it)")
                journal = {"aside": [n for n in self.replace if os.path.lexists(self.out / n)], "placing": placing,
                           "extra": extra}
                (self.staging / ASIDE_NAME).mkdir(exist_ok=True)
                _write_atomic(self.staging / JOURNAL_NAME, _dump(journal), sync=True)
                _fsync_dir(self.staging)
                for name in journal["aside"]:
                    _move(self.out / name, self.staging / ASIDE_NAME / name)
                    aside.append(name)
                for name in placing:
                    _move(self._staged(name, extra), self.out / name)
                    placed.append(name)
                _fsync_dir(self.out)
            except BaseException as e:
                # e.g. the disk filled up, or a hook raised: OUT gets its old files back
                self._roll_back(placed, aside, extra)
                if isinstance(e, OSError):
                    what = f"{os.path.basename(e.filename)}: " if e.filename else ""
                    raise SlicerError(f"{self.out}: cannot finish the student: {what}{e.strerror or e}") from e
                raise
            self.committed = True
            shutil.rmtree(self.staging, ignore_errors=True)
            self._unlock()

    def _staged(self, name: str, extra: list[str]) -> Path:
        """Where a file of the new student waits in staging."""
        return self.staging / NEW_NAME / name if name in extra else self.staging / name

    def _roll_back(self, placed: list[str], aside: list[str], extra: list[str]) -> None:
        for name in reversed(placed):
            with contextlib.suppress(OSError):
                _move(self.out / name, self._staged(name, extra))
        for name in reversed(aside):
            with contextlib.suppress(OSError):
                _move(self.staging / ASIDE_NAME / name, self.out / name)
        with contextlib.suppress(OSError):
            (self.staging / JOURNAL_NAME).unlink(missing_ok=True)
            (self.staging / ASIDE_NAME).rmdir()
        with contextlib.suppress(OSError):
            _fsync_dir(self.out)

    def _recover(self) -> None:
        """A run killed while swapping its student in left a journal: finish or undo it.

        If its manifest already moved into OUT the new student is complete (only
        staging is left to remove); otherwise the files it placed go back to staging
        and the files it replaced back into OUT, so OUT is as it was before that run
        (and its completed shards can still be resumed).
        """
        journal = _read_json(self.staging / JOURNAL_NAME)
        if journal is None:
            return
        placing = [n for n in journal.get("placing", []) if _plain_name(n)]
        aside = [n for n in journal.get("aside", []) if _plain_name(n)]
        extra = [n for n in journal.get("extra", []) if _plain_name(n)]
        if MANIFEST_NAME in placing and not os.path.lexists(self._staged(MANIFEST_NAME, extra)):
            shutil.rmtree(self.staging, ignore_errors=True)
            log.warning("%s: an interrupted run had finished writing its student; removed its staging folder", self.out)
            return
        placed = [n for n in placing if not os.path.lexists(self._staged(n, extra)) and os.path.lexists(self.out / n)]
        moved = [n for n in aside if os.path.lexists(self.staging / ASIDE_NAME / n)]
        self._roll_back(placed, moved, extra)
        if moved:
            log.warning("%s: put back %d file(s) of the previous student that an interrupted run had moved aside",
                        self.out, len(moved))

    def outcome(self) -> str:
        """What OUT holds now (for the message after an interrupt)."""
        if self.committed:
            return f"{self.out} holds the complete new student"
        if self.created:
            return f"{self.out} is as it was before the run: absent"
        if self._had_student:
            return f"{self.out} is as it was before the run; its previous student is intact"
        return f"{self.out} is as it was before the run"

    def keep_for_resume(self, shards: int) -> str:
        """Stop after an interrupt, keeping the completed shards in staging for ``--resume``
        (the same state a SIGKILL leaves, less the half-written shard and the lock). OUT's
        own files are untouched: it holds no student that looks finished. Returns what
        OUT holds now, for the one line the CLI prints."""
        with stop.deferred():
            kept = set(self.done)
            for p in self.staging.iterdir():  # the half-written shard; nothing else is staged yet
                if p.name not in kept and p.name not in (RUN_NAME, DONE_NAME):
                    shutil.rmtree(p, ignore_errors=True) if _is_folder(p) else p.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                _fsync_dir(self.staging)
            self._unlock()
        before = "did not exist before the run" if self.created else "is otherwise as it was before the run"
        return (f"kept {len(kept)} of {shards} shard(s) in {self.staging} ({self.out} {before}); "
                "run the same command with --resume to continue")

    def abort(self) -> None:
        """Undo the run: staging removed, and OUT too if this run created it."""
        if not self._opened:  # open() refused or failed, and has cleaned up after itself
            return
        with stop.deferred():
            if not self.committed:
                shutil.rmtree(self.staging, ignore_errors=True)
                if self.created:
                    shutil.rmtree(self.out, ignore_errors=True)
            self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            (self.out / LOCK_NAME).unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = -1


# ----------------------------------------------------------------------------- helpers

def _is_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _stamp(st: os.stat_result) -> dict:
    return {"mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino, "dev": st.st_dev}


def _read_run(path: Path) -> dict | None:
    obj = _read_json(path)
    if obj is None:
        return None
    if obj.get("format") != RUN_FORMAT:  # a flat fingerprint, as earlier versions wrote it
        return {"fingerprint": obj, "files": [], "replace": [], "found": []}
    return obj


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _fingerprint_of(manifest: dict) -> dict | None:
    try:
        return fingerprint(manifest)
    except (KeyError, TypeError, ValueError):
        return None


def _damage(out: Path, manifest: dict) -> str | None:
    """What is missing or resized among a finished student's files, or None."""
    for name in sorted(recorded_files(manifest)):
        if name not in (INDEX_NAME, "config.json") and not (out / name).is_file():
            return f"{name} is missing"
    for shard in manifest.get("shards", []):
        path = out / shard["name"]
        if not path.is_file():
            return f"{shard['name']} is missing"
        if path.stat().st_size != shard.get("size"):
            return f"{shard['name']} has {path.stat().st_size} bytes, its manifest says {shard.get('size')}"
    return None


def _dump(obj: dict) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n"


def _what_changed(before: dict | None, now: dict, finished: bool = False) -> str:
    """Why ``before`` (the interrupted run's fingerprint, or a finished student's) is not ``now``."""
    since, whose = ("the finished student was written", "the finished student's") if finished else \
        ("the interrupted run", "the interrupted run's")
    if not isinstance(before, dict):
        return f"{'the finished student' if finished else 'the interrupted run'} left no readable record"
    for key in ("teacher", "student", "options"):
        if before.get(key) != now.get(key):
            if key == "teacher":
                return f"the teacher's files changed since {since} (names, sizes or modification times)"
            if key == "options":
                old = before.get(key) or {}
                diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in now[key].items() if old.get(k) != v]
                return f"the options differ from {whose} (" + ", ".join(diff) + ")"
            return f"the student differs from {whose}"
    return f"the planned output differs from {whose}"


def sha256_file(path: Path) -> tuple[str, int]:
    """(sha256 hex digest, bytes read) of a file, read in 8 MB blocks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def _move(src: Path, dst: Path) -> None:
    """One rename (the unit of the swap: tests interrupt between them)."""
    os.replace(src, dst)


def _write_atomic(path: Path, data: bytes, sync: bool = True) -> None:
    tmp = path.with_name(path.name + ".incomplete")
    with open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make the renames in a folder durable (a no-op where the file system refuses)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EROFS, errno.EBADF):
            raise
    finally:
        os.close(fd)


def index_json(shards: list[tuple[str, list[str]]], total_size: int) -> bytes:
    """model.safetensors.index.json, as save_pretrained writes it."""
    weight_map = {name: filename for filename, names in shards for name in names}
    obj = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    return (json.dumps(obj, indent=2) + "\n").encode()
