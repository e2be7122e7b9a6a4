"""Some of a plan's output shards: the unit of work of a run spread over machines.

Every worker plans from the same inputs (headers only), checks that its plan's
fingerprint is the driver's, and writes only its shards: the engine skips the others
(and a remote reader never fetches their bytes, ``ranges.plan_spans(skip_shards)``).

``slicer shrink ... STAGING --shards K[,K...]`` writes into a staging folder of its own::

    STAGING/shards.json   the plan's fingerprint, its shard names, the files OUT will get
    STAGING/done.json     completed shards: size, sha256, what stat said after the fsync
    STAGING/NAME          the completed shards (NAME.incomplete while being written)
    STAGING/new/          index, config and tokenizer files, and the manifest (no hashes yet)

``slicer finish`` (finish.py) adopts the shards of one or more such folders into OUT.
A rerun into the same STAGING keeps the shards it recorded (never fetched again).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import Interrupted, SlicerError
from ..plan import Plan
from ..io.writer import DONE_NAME, NEW_NAME, MANIFEST_NAME, ShardWriter, sha256_file

SHARDS_NAME = "shards.json"
SHARDS_FORMAT = "slicer-shards/1"
LOCK_NAME = ".slicer.lock"


def parse_shards(text: str) -> list[int]:
    """``--shards 1,3,5-7`` -> [1, 3, 5, 6, 7] (numbers from 1, as the shard file names count)."""
    numbers: list[int] = []
    for part in str(text).split(","):
        a, sep, b = part.strip().partition("-")
        try:
            lo = int(a)
            hi = int(b) if sep else lo
        except ValueError:
            raise SlicerError(f"--shards {text!r}: expected shard numbers from 1, e.g. --shards 1,3 or --shards 2-4") from None
        if lo < 1 or hi < lo:
            raise SlicerError(f"--shards {text!r}: shard numbers count from 1 (a range is LOW-HIGH)")
        numbers += range(lo, hi + 1)
    return numbers


def shard_names(plan: Plan, numbers: Iterable[int]) -> list[str]:
    """The file names of shards ``numbers`` (from 1); a number the plan does not have is refused."""
    numbers = list(numbers)
    n = len(plan.shards)
    for k in numbers:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise SlicerError(f"shard {k!r}: the plan has {n} shard{'s' * (n != 1)} (numbers 1 to {n}; "
                              "--max-shard-size sets how many)")
    seen = set()
    for k in numbers:
        if k in seen:
            raise SlicerError(f"shard {k} is named twice in --shards")
        seen.add(k)
    return [plan.shards[k - 1].filename for k in sorted(numbers)]


class ShardOutput:
    """The engine's output for some shards: every other shard counts as done, so it is
    neither read nor written. Completed shards are recorded through ``on_record``."""

    def __init__(self, staging: Path, plan: Plan, wanted: Iterable[str], on_record=None):
        self.staging = Path(staging)
        wanted = set(wanted)
        self.done: dict[str, dict] = {s.filename: {} for s in plan.shards if s.filename not in wanted}
        self.written: dict[str, dict] = {}
        self._on_record = on_record

    def shard(self, filename: str, size: int) -> ShardWriter:
        return ShardWriter(self.staging / filename, size)

    def record_done(self, writer: ShardWriter) -> None:
        name = writer.final.name
        self.done[name] = self.written[name] = writer.record
        if self._on_record is not None:
            self._on_record(name, writer.record)


def write_shards(plan: Plan, staging: Path, wanted: Iterable[str], *, device: str = "auto", backend: str = "auto",
                 chunk_bytes: int, on_record=None) -> tuple[dict[str, dict], int]:
    """Write the shards ``wanted`` of ``plan`` into ``staging``. Returns (name -> record, teacher bytes read)."""
    from ..run.backends import choose
    from ..run.engine import Engine

    chosen = choose(device, backend)
    engine = Engine(chosen.gather, chunk_bytes=chunk_bytes, device=chosen.device, arrays=chosen.arrays)
    output = ShardOutput(staging, plan, wanted, on_record)
    bytes_read = engine.run(plan, output)
    return output.written, bytes_read


def trusted(path: Path, record: dict, planned_size: int | None = None) -> bool:
    """A recorded shard is still what was recorded: its size, and its stat stamp (or, where the
    folder was copied or sits on another host's mount, its sha256 computed again)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not isinstance(record, dict) or st.st_size != record.get("size") or (
            planned_size is not None and st.st_size != planned_size):
        return False
    stamp = {"mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino, "dev": st.st_dev}
    if all(record.get(k) == v for k, v in stamp.items()):
        return True
    return sha256_file(path)[0] == record.get("sha256")


# ----------------------------------------------------------------------------- STAGING of --shards

def read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(Path(path).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def write_json(path: Path, obj: dict) -> None:
    """Atomically (a reader sees the old record or the new one), fsynced."""
    tmp = path.with_name(path.name + ".incomplete")
    with open(tmp, "wb") as f:
        f.write(json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class ShardsSummary:
    """What ``shrink(..., shards=...)`` wrote into its staging folder."""

    out: str
    shards: list[str]  # the shards asked for
    written: list[str]  # written by this run
    kept: list[str]  # recorded by an earlier run into the same staging: not fetched again
    bytes_read: int
    bytes_written: int
    seconds: float
    bytes_fetched: int | None = None
    total_shards: int = 0
    tensors_written: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def text(self) -> str:
        from ..plan.build import format_bytes

        line = (f"wrote {len(self.written)} of {self.total_shards} shards ({', '.join(self.written) or 'none'}) to "
                f"{self.out}: {self.tensors_written} tensors, {format_bytes(self.bytes_written)} in {self.seconds:.2f} s")
        if self.kept:
            line += f"\nkept {len(self.kept)} shard(s) recorded there earlier: {', '.join(self.kept)}"
        if self.bytes_fetched is not None:
            line += f"\nfetched {format_bytes(self.bytes_fetched)} over the network"
        return line + "\nonce every shard is written: slicer finish OUT --from STAGING [STAGING ...]"


def write_staging(plan: Plan, record: dict, extra: dict[str, bytes], staging: Path, numbers: Iterable[int], *,
                  overwrite: bool = False, device: str = "auto", backend: str = "auto", chunk_bytes: int,
                  progress: bool = False) -> ShardsSummary:
    """``slicer shrink ... STAGING --shards K``: the shards ``numbers`` of ``plan`` into STAGING."""
    from ..io.writer import fingerprint

    start = time.perf_counter()
    wanted = shard_names(plan, numbers)
    staging = Path(staging)
    fp = fingerprint(record)
    created = not staging.exists()
    lock = -1
    try:
        staging.mkdir(parents=True, exist_ok=True)
        lock = _lock(staging)
        done = _prepare(staging, fp, record, extra, plan, overwrite)
    except OSError as e:
        _unlock(staging, lock)
        raise SlicerError(f"{staging}: cannot use as the shard staging folder: {e.strerror or e}") from e
    except BaseException:
        _unlock(staging, lock)
        if created:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    kept = [n for n in wanted if n in done]
    todo = [n for n in wanted if n not in done]

    def on_record(name: str, rec: dict) -> None:
        done[name] = rec
        write_json(staging / DONE_NAME, done)

    from .progress import StagingProgress

    bar = StagingProgress(staging, {s.filename: s.size for s in plan.shards if s.filename in todo}) if progress and todo else None
    try:
        _, bytes_read = write_shards(plan, staging, todo, device=device, backend=backend, chunk_bytes=chunk_bytes,
                                     on_record=on_record) if todo else ({}, 0)
    except KeyboardInterrupt:
        raise Interrupted(f"{staging} keeps the shards completed so far ({len(done)} recorded); "
                          "rerun the same command to write the rest") from None
    finally:
        if bar is not None:
            bar.close()
        _unlock(staging, lock)
    sizes = {s.filename: s.size for s in plan.shards}
    index = {s.filename: s for s in plan.shards}
    return ShardsSummary(out=str(staging), shards=wanted, written=todo, kept=kept, bytes_read=bytes_read,
                         bytes_written=sum(sizes[n] for n in todo), seconds=time.perf_counter() - start,
                         bytes_fetched=plan.teacher.source.bytes_fetched,
                         total_shards=len(plan.shards), tensors_written=sum(len(index[n].jobs) for n in todo))


def _prepare(staging: Path, fp: dict, record: dict, extra: dict[str, bytes], plan: Plan, overwrite: bool) -> dict:
    """STAGING holds this plan's record (and the shards an earlier run of it completed) or is new.
    Returns the trusted completed shards; everything else of an earlier run is dropped."""
    entries = [n for n in os.listdir(staging) if n != LOCK_NAME]
    ours = read_json(staging / SHARDS_NAME)
    if entries and ours is None:
        raise SlicerError(f"{staging}: not empty and not a shard staging folder of slicer (no {SHARDS_NAME}); "
                          "name a new or empty folder")
    if ours is not None and ours.get("fingerprint") != fp:
        if not overwrite:
            raise SlicerError(f"{staging}: holds shards of another plan ({plan_difference(ours.get('fingerprint'), fp)}); "
                              "pass --overwrite to drop them, or name another folder")
        for name in entries:
            path = staging / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        ours = None
    planned = {s.filename: s.size for s in plan.shards}
    done = {}
    if ours is not None:
        for name, rec in (read_json(staging / DONE_NAME) or {}).items():
            if name in planned and trusted(staging / name, rec, planned[name]):
                done[name] = rec
        for name in entries:  # half-written or untrusted leftovers
            path = staging / name
            if name not in done and name not in (SHARDS_NAME, DONE_NAME, NEW_NAME):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    new = staging / NEW_NAME
    new.mkdir(exist_ok=True)
    for name, data in {**extra, MANIFEST_NAME: json.dumps(record, indent=1).encode() + b"\n"}.items():
        tmp = new / (name + ".incomplete")
        tmp.write_bytes(data)
        os.replace(tmp, new / name)
    write_json(staging / DONE_NAME, done)
    write_json(staging / SHARDS_NAME, {"format": SHARDS_FORMAT, "fingerprint": fp, "files": record["files"],
                                       "shards": [s.filename for s in plan.shards], "extra": sorted(extra)})
    return done


def _lock(staging: Path) -> int:
    fd = os.open(staging / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SlicerError(f"{staging}: another slicer run is writing shards into this folder; give each worker "
                          "its own staging folder") from None
    return fd


def _unlock(staging: Path, fd: int) -> None:
    if fd >= 0:
        (staging / LOCK_NAME).unlink(missing_ok=True)
        os.close(fd)


def plan_difference(before: object, now: dict) -> str:
    """What differs between two plans' fingerprints, in words."""
    if not isinstance(before, dict):
        return "the other run left no readable record"
    words = {"teacher": "the teacher's files differ (names, sizes, modification times or ETags)",
             "student": "the student differs", "scores": "the importance scores differ",
             "layout": "the selected rows differ", "shards": "the shard sizes differ (--max-shard-size?)"}
    for key in ("teacher", "student", "options", "scores", "layout", "shards"):
        if before.get(key) != now.get(key):
            if key == "options":
                old, new = before.get(key) or {}, now.get(key) or {}
                diff = [f"{k}: {old.get(k)!r} vs {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
                return "the options differ (" + ", ".join(diff) + ")"
            return words[key]
    return "the plans differ"
