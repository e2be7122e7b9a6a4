"""``slicer finish OUT --from STAGING...``: adopt shards written apart, then finish OUT.

The staging folders (``shrink ... --shards K``, see shards.py) must hold shards of one
plan (the same fingerprint), each shard once, every shard of the plan. Each shard is
checked against its record (size; stat stamp, or else its sha256 computed again) and
linked into OUT's own staging (copied where the folders are on different file
systems); then the writer finishes as a one-process run does: index, config and
tokenizer files, and last the manifest, swapped in atomically. The staging folders
are left as they were (remove them once OUT is complete).
"""
from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import Interrupted, SlicerError
from ..io.writer import DONE_NAME, MANIFEST_NAME, NEW_NAME, OutputDir
from .shards import SHARDS_FORMAT, SHARDS_NAME, plan_difference, read_json, trusted


@dataclass
class FinishSummary:
    out: str
    shards: int
    bytes: int
    staging: list[str]
    seconds: float
    copied: int  # shards copied (staging on another file system) rather than linked
    replaced: list[str]

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def finish(out: str | Path, staging: Iterable[str | Path], *, overwrite: bool = False) -> FinishSummary:
    """Adopt the shards recorded in ``staging`` folders and write the finished student into ``out``."""
    start = time.perf_counter()
    folders = [Path(p) for p in staging]
    if not folders:
        raise SlicerError("finish: name the staging folders with --from STAGING [STAGING ...]")
    seen: dict[Path, Path] = {}
    for folder in folders:
        key = folder.resolve()
        if key in seen:
            raise SlicerError(f"{folder}: named twice in --from (as {seen[key]}); pass each staging folder once")
        seen[key] = folder
    records = []
    for folder in folders:
        meta = read_json(folder / SHARDS_NAME)
        if meta is None or meta.get("format") != SHARDS_FORMAT:
            raise SlicerError(f"{folder}: not a shard staging folder of slicer (no readable {SHARDS_NAME}); "
                              "write one with slicer shrink ... STAGING --shards K")
        records.append((folder, meta, read_json(folder / DONE_NAME) or {}))
    first, fp = records[0][0], records[0][1].get("fingerprint")
    for folder, meta, _ in records[1:]:
        if meta.get("fingerprint") != fp:
            raise SlicerError(f"{folder}: shards of another plan than {first}'s ({plan_difference(fp, meta.get('fingerprint'))}); "
                              "every worker must run the same command, only --shards differs")
    sizes = {s["name"]: s["size"] for s in fp["shards"]}
    found: dict[str, tuple[Path, dict]] = {}
    for folder, _, done in records:
        for name, rec in sorted(done.items()):
            if name not in sizes:
                continue
            if name in found:
                raise SlicerError(f"{name}: the same shard is in {found[name][0]} and in {folder}; pass each shard once")
            found[name] = (folder, rec)
    missing = [name for name in sizes if name not in found]
    if missing:
        numbers = [str(list(sizes).index(n) + 1) for n in missing]
        raise SlicerError(f"missing shard{'s' * (len(missing) > 1)} {', '.join(missing)}: not completed in any of the "
                          f"staging folders; write {'them' if len(missing) > 1 else 'it'} with slicer shrink ... "
                          f"--shards {','.join(numbers)}")
    for name, (folder, rec) in found.items():
        if not trusted(folder / name, rec, sizes[name]):
            raise SlicerError(f"{folder / name}: not the shard its record describes (missing, resized or changed "
                              f"since it was written); write it again with --shards {list(sizes).index(name) + 1}")
    new = first / NEW_NAME
    manifest = read_json(new / MANIFEST_NAME)
    extra_names = records[0][1].get("extra") or []
    try:
        extra = {name: (new / name).read_bytes() for name in extra_names}
    except OSError as e:
        raise SlicerError(f"{new}: cannot read the student's files: {e.strerror or e}") from e
    if manifest is None:
        raise SlicerError(f"{new / MANIFEST_NAME}: missing or unreadable; write the staging folder again")
    for shard in manifest["shards"]:
        shard["sha256"] = found[shard["name"]][1].get("sha256")
    _check_out(Path(out), folders)
    output = OutputDir(Path(out), overwrite=overwrite)
    copied = 0
    try:
        output.open(fp, records[0][1]["files"])
        for name, (folder, rec) in found.items():
            copied += _adopt(folder / name, output.staging / name)
            st = os.stat(output.staging / name)
            output.record(name, {**rec, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino,
                                 "dev": st.st_dev})
        output.finish(list(sizes), extra, manifest)
    except KeyboardInterrupt:
        output.abort()
        raise Interrupted(output.outcome()) from None
    except BaseException:
        output.abort()
        raise
    return FinishSummary(out=str(out), shards=len(sizes), bytes=sum(sizes.values()), staging=[str(f) for f in folders],
                         seconds=time.perf_counter() - start, copied=copied, replaced=list(output.replace))


def _adopt(src: Path, dst: Path) -> int:
    """Link a shard into OUT's staging (its bytes stay where they are); 1 where it had to be copied."""
    try:
        os.link(src, dst)
        return 0
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    tmp = dst.with_name(dst.name + ".incomplete")
    shutil.copyfile(src, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)
    return 1


def _check_out(out: Path, folders: list[Path]) -> None:
    """OUT is none of the staging folders, nor inside or around one (finishing removes OUT's own staging)."""
    try:
        target = out.resolve()
    except (OSError, RuntimeError) as e:
        raise SlicerError(f"{out}: cannot use as the output folder: {getattr(e, 'strerror', None) or e}") from e
    for folder in folders:
        f = folder.resolve()
        if target == f or f in target.parents or target in f.parents:
            raise SlicerError(f"{out}: output folder is, is inside or holds the staging folder {folder}; choose another OUT")
