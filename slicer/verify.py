"""Check a written student against its manifest and, optionally, against the teacher.

``verify(OUT)`` re-reads every shard named by ``OUT/slicer_manifest.json``: its size
and sha256, its header (every manifest tensor there, with the manifest's shape and
dtype, nothing else), and the index. With ``teacher=`` it also compares tensor values
with the selection they claim to be, ``teacher[ix_(I_0, ..., I_{n-1})]`` with the index
sets the manifest records (cast with torch ``.to()`` where the manifest's dtype is not
the source's, as the torch backend does): a few rows of every tensor by default,
every element with ``full=True``.

Memory stays bounded whatever the tensor sizes: data is read with ``pread`` in blocks
of at most ``chunk_bytes`` of teacher span and of student bytes (a rotated student's tensor,
which is not a selection, is compared from the teacher rows it needs: the compared rows, or
the whole teacher tensor where its first dimension is the hidden axis, or with ``full``). Problems are
collected as one line each in the report; input that cannot be verified at all (no
manifest, an unreadable teacher) raises :class:`SlicerError`. Nothing is printed.

Long on purpose: every check of a written student (files, hashes, headers, axes, values against the teacher, dequantized values) feeds one report.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .axes.audit import audit
from .io.checkpoint import Checkpoint, is_url
from .teacher import open_checkpoint
from .errors import SlicerError
from .io.format import DTYPES, TensorInfo, is_json_int, read_header
from .selection import manifest_indices

if TYPE_CHECKING:
    import torch
# Imported where used: torch where tensor values are compared (with a teacher), so that
# checking the shards alone (sizes, sha256, headers, index) runs without it; the writer's
# names when verifying, so that `import slicer` (and `slicer plan`) loads neither.

DEFAULT_CHUNK_BYTES = 16 << 20
SPOT_ROWS = 4  # rows of dimension 0 compared per tensor without full=True


@dataclass
class VerifyReport:
    out: str
    teacher: str | None
    full: bool
    shards: int = 0  # shards checked (size, sha256, header)
    tensors: int = 0  # tensors in the manifest
    dimensions_audited: int = 0  # tensor dimensions whose index set was recomposed from their axes
    tensors_compared: int = 0  # compared with the teacher's selection
    tensors_rotated: int = 0  # of those, compared with teacher x rotation (allclose: not sub-tensors)
    tolerance: str | None = None  # how rotated tensors are compared
    tensors_corrected: int = 0  # refitted by --correct (the manifest's corrections record): values not compared
    elements_compared: int = 0
    bytes_hashed: int = 0
    problems: list[str] = field(default_factory=list)  # one line each: "<file>: <what differs>"

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def verify(out: str | Path, *, teacher: str | Path | None = None, full: bool = False,
           rows_per_tensor: int = SPOT_ROWS, chunk_bytes: int = DEFAULT_CHUNK_BYTES, revision: str | None = None,
           cache_dir: str | Path | None = None, remote: dict | None = None) -> VerifyReport:
    """Check the student in ``out`` against its manifest (and ``teacher``, if given).

    Without ``full``, ``rows_per_tensor`` rows of dimension 0 of every tensor (the first,
    the last, others drawn by a seed from the tensor's name) are compared with the
    teacher. ``chunk_bytes`` bounds each read, of teacher span and of student bytes.
    Raises SlicerError when ``out`` has no usable manifest or the teacher cannot be opened.
    A remote ``teacher`` (a URL) is read by range requests of the compared rows; without
    ``revision``, the revision the manifest records for that URL is used.
    """
    out = Path(out)
    manifest = _load_manifest(out)
    report = VerifyReport(str(out), None if teacher is None else str(teacher), full,
                          tensors=len(manifest["tensors"]))
    ckpt = None
    rotation = None
    if teacher is not None:  # before the long part
        if isinstance(manifest.get("rotation"), dict):  # written by --hidden rotate: values are not sub-tensors
            rotation = _rotation(out, manifest["rotation"])
            report.tolerance = ROTATED_TOLERANCE
        if revision is None and is_url(teacher):
            from .remote import recorded_revision

            revision = recorded_revision(teacher, manifest.get("teacher"))  # the commit the student came from
        ckpt = open_checkpoint(teacher, role="teacher", revision=revision, cache_dir=cache_dir, remote=remote)
    with _Files() as files:
        headers = _check_shards(out, manifest, report)
        _check_index(out, manifest, report)
        _check_axes(manifest, headers, report)
        if ckpt is not None:
            budget = max(int(chunk_bytes), 64)
            corrections = manifest.get("corrections")
            corrected = set(corrections.get("tensors", [])) if isinstance(corrections, dict) else set()
            for name, rec in manifest["tensors"].items():
                stored = headers.get(rec["shard"], {}).get(name)
                if stored is None:
                    continue  # already reported: missing shard or tensor
                if name in corrected:  # refitted on calibration data: no definition from the teacher to compare with
                    report.tensors_corrected += 1
                    continue
                role = rotation["tensors"].get(name) if rotation is not None else None
                if role is not None:
                    _compare_rotated(name, rec, role, stored, ckpt, manifest["index_sets"], report, files,
                                     None if full else rows_per_tensor, rotation["qk"])
                    continue
                _compare(name, rec, stored, ckpt, manifest["index_sets"], report, files,
                         None if full else rows_per_tensor, budget)
    return report


# --------------------------------------------------------------------------- a rotated student

ROTATED_TOLERANCE = ("rotated tensors (--hidden rotate) are not sub-tensors of the teacher: each is compared with "
                     "the teacher's selection on its other axes times the rotation's kept columns (norm gains folded), "
                     "computed in float64: |got - want| <= eps(dtype) |want| + 1e-4 max|want| (eps: 2^-7 BF16, "
                     "2^-10 F16, 1e-5 F32); norm gains equal the manifest's per-site value cast")


def _rotation(out: Path, record: dict) -> dict:
    """The rotation a rotated student was written with: rotation.safetensors in OUT (--save-rotation),
    checked against the sha256 the manifest records."""
    import torch
    from safetensors.torch import load_file

    path = out / str(record.get("saved") or "rotation.safetensors")
    if not path.is_file():
        raise SlicerError(f"{out}: a rotated student (--hidden rotate) whose rotation was not saved: its tensors are "
                          "the teacher's times the rotation, not sub-tensors, and the manifest records only its sha256; "
                          "rerun the shrink with --save-rotation to compare values (verify without --teacher checks "
                          "its files and axes)")
    q = load_file(str(path)).get("rotation")
    digest = hashlib.sha256(q.double().contiguous().numpy().tobytes()).hexdigest() if q is not None else None
    if digest != record.get("sha256"):
        raise SlicerError(f"{path}: tensor 'rotation' is not the rotation the manifest records (sha256 {digest} vs "
                          f"{record.get('sha256')})")
    k = int(record["student_hidden"])
    return {"qk": q[:, :k].to(torch.float64), "tensors": record.get("tensors") or {}}


def _compare_rotated(name: str, rec: dict, role: dict, stored: TensorInfo, ckpt: Checkpoint, sets: dict,
                     report: VerifyReport, files: "_Files", rows: int | None, qk: "torch.Tensor") -> None:
    """A rotated tensor against its definition: the teacher's tensor, its other dimensions selected by the
    manifest's index sets, its hidden-bound dimensions multiplied by ``Qk`` (a reader's norm gain first)."""
    import torch

    where = f"{stored.path}: tensor {name!r}"
    out_dtype = DTYPES[rec["dtype"]].torch_dtype
    got_all = lambda: files.read(stored, 0, math.prod(stored.shape)).view(  # noqa: E731
        DTYPES[rec["dtype"]].torch_dtype).view(tuple(stored.shape)).double()
    report.tensors_compared += 1
    report.tensors_rotated += 1
    if role.get("role") == "norm":
        got = got_all()
        want = torch.as_tensor(role["value"], dtype=torch.float64).expand(got.shape).to(out_dtype).double()
        report.elements_compared += got.numel()
        if not torch.equal(got, want):
            report.problems.append(f"{where}: a rotated norm gain, not the site's value {role['value']}")
        return
    if isinstance(rec.get("dequantize"), dict):
        report.tensors_compared -= 1
        report.tensors_rotated -= 1
        return  # values dequantized then rotated: compared by the tests, not here
    source = ckpt.tensors.get(rec["source"])
    if source is None or list(source.shape) != rec["teacher_shape"]:
        report.problems.append(f"{where}: its source {rec['source']!r} is not in the teacher {ckpt.path} as recorded")
        return
    dims = list(role["dims"])
    teacher_dtype = DTYPES[source.dtype].torch_dtype
    index = [list(range(source.shape[d])) if d in dims else manifest_indices(sets[key])
             for d, key in enumerate(rec["index"])]
    picked = None
    if rows is not None and stored.shape and 0 not in dims:
        picked = _spot_rows(name, stored.shape[0], rows)
        index[0] = [index[0][r] for r in picked]
    if 0 in dims or not source.shape:  # every teacher row takes part in every student row: read it whole
        whole = files.read(source, 0, math.prod(source.shape)).view(teacher_dtype).view(tuple(source.shape))
    else:  # only the rows compared
        size = math.prod(source.shape[1:])
        whole = torch.stack([files.read(source, r * size, size).view(teacher_dtype).view(tuple(source.shape[1:]))
                             for r in index[0]])
        index[0] = list(range(len(index[0])))
    want = _select(whole.double(), index)
    del whole
    if role.get("gain"):
        gain_info = ckpt.tensors[role["gain"]]
        gain = files.read(gain_info, 0, gain_info.shape[0]).view(DTYPES[gain_info.dtype].torch_dtype).double()
        want = want * gain
    for d in dims:
        want = torch.movedim(torch.movedim(want, d, -1) @ qk, -1, d)
    got = got_all()
    if picked is not None:
        got = got[picked]
    eps = {"BF16": 2.0 ** -7, "F16": 2.0 ** -10}.get(rec["dtype"], 1e-5)
    report.elements_compared += got.numel()
    bad = (got - want).abs() > eps * want.abs() + 1e-4 * float(want.abs().max() if want.numel() else 0)
    if got.shape != want.shape or bool(bad.any()):
        at = bad.nonzero()[0].tolist() if got.shape == want.shape else []
        report.problems.append(f"{where}: differs from teacher tensor {rec['source']!r} times the rotation at {at} "
                               f"(beyond the stated tolerance)")


# --------------------------------------------------------------------------- manifest

def _check_axes(manifest: dict, headers: dict, report: VerifyReport) -> None:
    """Every dimension uses its axes' index sets (slicer.axes.audit), for tensors whose header agrees."""
    from .io.writer import MANIFEST_NAME

    sets = manifest["index_sets"]

    def indices_of(key, n: int):
        entry = sets.get(key) if isinstance(key, str) else None
        if not isinstance(entry, dict) or not _valid_set(entry):
            return None
        size = len(entry["indices"]) if "indices" in entry else entry["s"]
        return manifest_indices(entry) if size == n else None  # a lying "s" never sizes a list

    known = {name for shard in headers.values() for name in shard}
    problems, checked = audit(manifest, indices_of, known)
    report.problems += [f"{MANIFEST_NAME}: {p}" for p in problems]
    report.dimensions_audited = checked


def _load_manifest(out: Path) -> dict:
    from .io.writer import MANIFEST_NAME

    path = out / MANIFEST_NAME
    if not out.is_dir():
        raise SlicerError(f"{out}: {'not found' if not out.exists() else 'not a folder'}; name a folder slicer wrote")
    if not path.is_file():
        raise SlicerError(f"{path}: no manifest: {out} is not a finished slicer output")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise SlicerError(f"{path}: cannot read the manifest: {e}") from e
    problem = _manifest_problem(manifest)
    if problem:
        raise SlicerError(f"{path}: malformed manifest: {problem}")
    return manifest


def _manifest_problem(m: object) -> str | None:
    """What makes the manifest unusable as a reference, or None."""
    if not isinstance(m, dict):
        return "not a JSON object"
    if not str(m.get("format", "")).startswith("slicer-manifest/"):
        return f"unknown format {m.get('format')!r}"
    shards, tensors, sets = m.get("shards"), m.get("tensors"), m.get("index_sets")
    if not (isinstance(shards, list) and isinstance(tensors, dict) and isinstance(sets, dict)):
        return "needs \"shards\" (a list), \"tensors\" and \"index_sets\" (objects)"
    names = set()
    for s in shards:
        if not (isinstance(s, dict) and isinstance(s.get("name"), str) and is_json_int(s.get("size"))
                and isinstance(s.get("sha256", ""), str)):
            return f"shard entry {s!r} needs a name, a size and a sha256"
        if os.path.basename(s["name"]) != s["name"] or s["name"] in ("", ".", ".."):
            return f"shard name {s['name']!r} is not a file name in OUT"
        names.add(s["name"])
    for name, rec in tensors.items():
        if not isinstance(rec, dict):
            return f"tensor {name!r}: entry is not an object"
        for key in ("shape", "teacher_shape", "index"):
            if not isinstance(rec.get(key), list):
                return f"tensor {name!r}: {key!r} is not a list"
        if not all(is_json_int(d) and d >= 0 for d in rec["shape"] + rec["teacher_shape"]):
            return f"tensor {name!r}: shapes must be non-negative integers"
        if not (len(rec["shape"]) == len(rec["teacher_shape"]) == len(rec["index"])):
            return f"tensor {name!r}: shape, teacher_shape and index differ in rank"
        for key in ("dtype", "source_dtype"):
            if not isinstance(rec.get(key), str) or rec[key] not in DTYPES:
                return f"tensor {name!r}: unknown {key} {rec.get(key)!r}"
        if not isinstance(rec.get("source"), str):
            return f"tensor {name!r}: no source name"
        if not isinstance(rec.get("shard"), str) or rec["shard"] not in names:
            return f"tensor {name!r}: shard {rec.get('shard')!r} is not in the manifest's shards"
        for key in rec["index"]:
            if not isinstance(key, str) or not isinstance(sets.get(key), dict) or not _valid_set(sets[key]):
                return f"tensor {name!r}: index set {key!r} is missing"
    return None


def _valid_set(entry: dict) -> bool:
    """A manifest index set: an explicit list, or a rule start + step*i for i < s."""
    if "indices" in entry:
        return isinstance(entry["indices"], list)
    return all(is_json_int(entry.get(k)) for k in ("start", "step", "s")) and entry["step"] >= 1 and entry["start"] >= 0


# --------------------------------------------------------------------------- shards, headers, index

def _check_shards(out: Path, manifest: dict, report: VerifyReport) -> dict[str, dict[str, TensorInfo]]:
    """Size, sha256 and header of every shard. Returns shard -> the tensors whose header
    entry agrees with the manifest (the others are reported, not compared)."""
    from .io.writer import INDEX_NAME, MANIFEST_NAME, STAGING, is_student_file

    by_shard: dict[str, dict[str, dict]] = {s["name"]: {} for s in manifest["shards"]}
    for name, rec in manifest["tensors"].items():
        by_shard[rec["shard"]][name] = rec
    headers: dict[str, dict[str, TensorInfo]] = {}
    problems = report.problems
    for entry in manifest["shards"]:
        path = out / entry["name"]
        report.shards += 1
        if not path.is_file():
            problems.append(f"{path}: shard is missing")
            continue
        size = path.stat().st_size
        if size != entry["size"]:
            problems.append(f"{path}: size {size} bytes, the manifest says {entry['size']}")
        want_sha = entry.get("sha256")
        if want_sha is not None:
            try:
                got_sha = _sha256(path, report)
            except OSError as e:
                problems.append(f"{path}: cannot read: {e.strerror or e}")
                continue
            if got_sha != want_sha:
                problems.append(f"{path}: sha256 {got_sha} differs from the manifest's {want_sha}")
        try:
            header = read_header(path)
        except SlicerError as e:
            problems.append(str(e))
            continue
        agreed = headers[entry["name"]] = {}
        for name, rec in by_shard[entry["name"]].items():
            info = header.tensors.get(name)
            if info is None:
                problems.append(f"{path}: tensor {name!r} is missing (the manifest puts it in this shard)")
            elif list(info.shape) != rec["shape"] or info.dtype != rec["dtype"]:
                problems.append(f"{path}: tensor {name!r} is {info.dtype} {list(info.shape)}, the manifest says "
                                f"{rec['dtype']} {rec['shape']}")
            else:
                agreed[name] = info
        for name in header.tensors:
            if name not in by_shard[entry["name"]]:
                problems.append(f"{path}: tensor {name!r} is not in the manifest")
    listed = set(by_shard) | {INDEX_NAME, MANIFEST_NAME, "config.json"}
    for p in sorted(out.iterdir()):
        if p.name == STAGING:
            problems.append(f"{p}: staging folder of an unfinished run is present")
        elif p.is_file() and is_student_file(p.name) and p.name not in listed:
            problems.append(f"{p}: not part of the student the manifest describes")
    return headers


def _sha256(path: Path, report: VerifyReport) -> str:
    from .io.writer import sha256_file

    digest, size = sha256_file(path)
    report.bytes_hashed += size
    return digest


def _check_index(out: Path, manifest: dict, report: VerifyReport) -> None:
    """A sharded student has the Hugging Face index, and it agrees with the manifest."""
    from .io.writer import INDEX_NAME

    path = out / INDEX_NAME
    if len(manifest["shards"]) <= 1:
        if path.exists():
            report.problems.append(f"{path}: index present beside a single-shard student")
        return
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        weight_map, total = index["weight_map"], index["metadata"]["total_size"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except FileNotFoundError:
        report.problems.append(f"{path}: index is missing (the student has {len(manifest['shards'])} shards)")
        return
    except (OSError, ValueError, RecursionError, KeyError, TypeError) as e:
        report.problems.append(f"{path}: unreadable index ({type(e).__name__}: {e})")
        return
    want = {name: rec["shard"] for name, rec in manifest["tensors"].items()}
    if weight_map != want:
        wrong = sorted(n for n in set(want) | set(weight_map) if weight_map.get(n) != want.get(n))
        report.problems.append(f"{path}: weight_map disagrees with the manifest for {len(wrong)} tensor(s), "
                               f"e.g. {wrong[0]!r}: {weight_map.get(wrong[0])!r} vs {want.get(wrong[0])!r}")
    want_total = sum(math.prod(rec["shape"]) * DTYPES[rec["dtype"]].itemsize for rec in manifest["tensors"].values())
    if total != want_total:
        report.problems.append(f"{path}: metadata.total_size {total!r}, the tensors hold {want_total} bytes")


# --------------------------------------------------------------------------- values against the teacher

def _compare(name: str, rec: dict, stored: TensorInfo, ckpt: Checkpoint, sets: dict, report: VerifyReport,
             files: "_Files", rows: int | None, budget: int) -> None:
    import torch

    from .io.format import BITS_DTYPE

    where = f"{stored.path}: tensor {name!r}"
    if isinstance(rec.get("dequantize"), dict):
        _compare_dequantized(where, rec, stored, ckpt, sets, report, files, rows, budget)
        return
    source = ckpt.tensors.get(rec["source"])
    if source is None:
        report.problems.append(f"{where}: its source {rec['source']!r} is not in the teacher {ckpt.path}")
        return
    if list(source.shape) != rec["teacher_shape"] or source.dtype != rec["source_dtype"]:
        report.problems.append(f"{where}: teacher tensor {rec['source']!r} is {source.dtype} {list(source.shape)}, "
                               f"the manifest says {rec['source_dtype']} {rec['teacher_shape']}")
        return
    index = []
    for d, key in enumerate(rec["index"]):
        t, s = source.shape[d], rec["shape"][d]
        entry = sets[key]
        size = len(entry["indices"]) if "indices" in entry else entry["s"]
        ix = manifest_indices(entry) if size == s else []  # a lying "s" never sizes a list
        index.append(ix)
        if len(ix) != s or not all(is_json_int(i) and 0 <= i < t for i in ix):
            report.problems.append(f"{where}: index set {key!r} of dimension {d} does not select {s} of 0..{t - 1}")
            return
    cast = None
    if rec["dtype"] != rec["source_dtype"]:
        cast = (DTYPES[rec["source_dtype"]].torch_dtype, DTYPES[rec["dtype"]].torch_dtype)
        if None in cast:
            report.problems.append(f"{where}: cannot check the cast {rec['source_dtype']} -> {rec['dtype']}: "
                                   "this torch build lacks one of the types")
            return
    sample = None
    if rows is not None and stored.shape:
        sample = _spot_rows(name, stored.shape[0], rows)
    report.tensors_compared += 1
    try:
        for block in _blocks(source.shape, stored.shape, index, source.itemsize, stored.itemsize, budget, sample):
            span = files.read(source, block.t_first, block.t_count, block.t_shape, block.t_index[0] if block.t_shape else None)
            want = _select(span.view(block.t_shape), block.t_index)
            if cast is not None:
                want = want.view(cast[0]).to(cast[1]).view(BITS_DTYPE[stored.itemsize])
            got = files.read(stored, block.s_first, block.s_count).view(block.s_shape)
            report.elements_compared += got.numel()
            if not torch.equal(got, want):
                at = (got != want).nonzero()[0].tolist()
                pos = [*block.lead, block.rows[at[0]], *at[1:]] if block.s_shape else []
                report.problems.append(
                    f"{where}: differs from the selection of teacher tensor {rec['source']!r} at {pos} "
                    f"(bits {_hex(got, at, stored.itemsize)}, expected {_hex(want, at, stored.itemsize)})")
                return
    except SlicerError as e:
        report.problems.append(str(e))


def _compare_dequantized(where: str, rec: dict, stored: TensorInfo, ckpt: Checkpoint, sets: dict,
                         report: VerifyReport, files: "_Files", rows: int | None, budget: int) -> None:
    """A dequantized tensor against the dequantized selection of the teacher's stored tensors (slicer.run.dequant:
    transformers' arithmetic), one student row at a time, in pieces of at most ``budget`` bytes."""
    import torch

    from .io.format import BITS_DTYPE

    from .run.dequant import values
    from .plan.quantized import Dequant, logical_tensor

    dq = rec["dequantize"]
    try:
        if dq.get("format") == "fp8":
            weight, scale = ckpt.tensors.get(rec["source"]), ckpt.tensors.get(dq.get("scale"))
            block = dq.get("block")
            if weight is None or scale is None:
                raise SlicerError(f"{where}: its source {rec['source']!r} or scale {dq.get('scale')!r} is not in the teacher")
            source, spec = weight, Dequant("fp8", scale, tuple(block) if block else None)
        elif dq.get("format") == "mxfp4":
            blocks, scales = ckpt.tensors.get(dq.get("blocks")), ckpt.tensors.get(dq.get("scales"))
            if blocks is None or scales is None:
                raise SlicerError(f"{where}: its packed source {dq.get('blocks')!r} / {dq.get('scales')!r} is not in the teacher")
            source, spec = logical_tensor(blocks, scales), Dequant("mxfp4", scales, packed=blocks)
        else:
            raise SlicerError(f"{where}: unknown dequantization {dq.get('format')!r}")
    except SlicerError as e:
        report.problems.append(str(e) if str(e).startswith(where) else f"{where}: {e}")
        return
    if list(source.shape) != rec["teacher_shape"] or not stored.shape:
        report.problems.append(f"{where}: teacher tensor {source.name!r} is {list(source.shape)}, the manifest says "
                               f"{rec['teacher_shape']}")
        return
    index = []
    for d, key in enumerate(rec["index"]):
        entry = sets[key]
        ix = manifest_indices(entry) if (len(entry["indices"]) if "indices" in entry else entry["s"]) == stored.shape[d] else []
        if len(ix) != stored.shape[d] or not all(is_json_int(i) and 0 <= i < source.shape[d] for i in ix):
            report.problems.append(f"{where}: index set {key!r} of dimension {d} does not select {stored.shape[d]} "
                                   f"of 0..{source.shape[d] - 1}")
            return
        index.append(torch.tensor(ix, dtype=torch.int64))
    out_dtype = DTYPES[rec["dtype"]].torch_dtype
    sample = range(stored.shape[0]) if rows is None else _spot_rows(stored.name, stored.shape[0], rows)
    row = math.prod(stored.shape[1:])
    inner = math.prod(stored.shape[2:]) if len(stored.shape) > 1 else 1
    step = max(1, budget // max(inner * 16, 1)) if len(stored.shape) > 1 else 1
    report.tensors_compared += 1
    try:
        for p in sample:
            for a in range(0, max(stored.shape[1], 1) if len(stored.shape) > 1 else 1, step):
                ix = [index[0][p:p + 1]]
                if len(stored.shape) > 1:
                    ix += [index[1][a:a + step], *index[2:]]
                want = values(files.read, spec, source, ix, out_dtype).contiguous()
                want = want.view(BITS_DTYPE[stored.itemsize]).reshape(-1)
                got = files.read(stored, p * row + a * inner, want.numel())
                report.elements_compared += got.numel()
                if not torch.equal(got, want):
                    at = int((got != want).nonzero()[0])
                    report.problems.append(
                        f"{where}: differs from the dequantized selection of teacher tensor {source.name!r} in row {p} "
                        f"(bits {_hex(got, [at], stored.itemsize)}, expected {_hex(want, [at], stored.itemsize)})")
                    return
    except (SlicerError, RuntimeError, ValueError) as e:
        report.problems.append(str(e) if isinstance(e, SlicerError) else f"{where}: cannot dequantize: {e}")


def _spot_rows(name: str, n: int, k: int) -> list[int]:
    """First, last and a few random rows (seeded by the name: the same rows every time)."""
    if n <= k:
        return list(range(n))
    rng = random.Random(hashlib.sha256(name.encode()).digest())
    return sorted({0, n - 1, *rng.sample(range(n), max(k - 2, 0))})


def _hex(t: torch.Tensor, at: list[int], itemsize: int) -> str:
    value = int(t[tuple(at)].item()) if at else int(t.item())
    return f"0x{value & ((1 << (8 * itemsize)) - 1):0{2 * itemsize}x}"


@dataclass(frozen=True)
class _Block:
    """Student elements [s_first, s_first + s_count) and the teacher span they come from."""

    t_first: int
    t_count: int
    t_shape: tuple[int, ...]
    t_index: list  # per span dimension: the kept indices, relative to the span
    s_first: int
    s_count: int
    s_shape: tuple[int, ...]
    lead: tuple[int, ...]  # student indices of the dimensions walked one at a time
    rows: list[int]  # student indices of the block's first dimension


def _blocks(tshape: Sequence[int], sshape: Sequence[int], index: list[list[int]], t_item: int, s_item: int,
            budget: int, rows: list[int] | None) -> Iterator[_Block]:
    """Cut a tensor into blocks whose teacher span and student part each fit in ``budget``.

    Along the first dimension whose rows fit, runs of consecutive student rows are
    grouped while the teacher span they need stays within the budget; the dimensions
    before it are walked one index at a time. ``rows`` limits dimension 0 (a sample).
    """
    rank = len(sshape)
    if rank == 0:
        yield _Block(0, 1, (), [], 0, 1, (), (), [])
        return
    if math.prod(sshape) == 0:
        return
    tstride = [math.prod(tshape[d + 1:]) for d in range(rank)]
    sstride = [math.prod(sshape[d + 1:]) for d in range(rank)]

    def walk(k: int, tbase: int, sbase: int, lead: tuple[int, ...], positions: Sequence[int]) -> Iterator[_Block]:
        t_row, s_row = tstride[k] * t_item, sstride[k] * s_item
        if max(t_row, s_row) > budget and k < rank - 1:
            for p in positions:
                yield from walk(k + 1, tbase + index[k][p] * tstride[k], sbase + p * sstride[k], (*lead, p),
                                range(sshape[k + 1]))
            return
        ix = index[k]
        j = 0
        while j < len(positions):
            end = j + 1
            while (end < len(positions) and positions[end] == positions[end - 1] + 1
                   and ix[positions[end]] > ix[positions[end - 1]]
                   and (ix[positions[end]] - ix[positions[j]] + 1) * t_row <= budget
                   and (end - j + 1) * s_row <= budget):
                end += 1
            sel = list(positions[j:end])
            lo, hi = ix[sel[0]], ix[sel[-1]]
            yield _Block(tbase + lo * tstride[k], (hi - lo + 1) * tstride[k], (hi - lo + 1, *tshape[k + 1:]),
                         [[ix[p] - lo for p in sel], *index[k + 1:]],
                         sbase + sel[0] * sstride[k], len(sel) * sstride[k], (len(sel), *sshape[k + 1:]), lead, sel)
            j = end

    yield from walk(0, 0, 0, (), rows if rows is not None else range(sshape[0]))


def _select(span: torch.Tensor, index: list) -> torch.Tensor:
    """span[ix_(*index)]: the reference selection, one dimension at a time."""
    import torch

    for d, ix in enumerate(index):
        if len(ix) != span.shape[d] or ix != list(range(span.shape[d])):
            span = span.index_select(d, torch.tensor(ix, dtype=torch.int64))
    return span


class _Files:
    """pread access to the tensors of any file, fds kept open for the run."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def read(self, info: TensorInfo, first: int, count: int, shape: tuple[int, ...] = (),
             rows: list[int] | None = None) -> torch.Tensor:
        """Elements first..first+count-1 of a tensor, as same-width integers. A remote
        tensor's span (viewed as ``shape``) is fetched by its ``rows`` of dimension 0 only."""
        import torch

        from .io.format import BITS_DTYPE

        if not isinstance(info.path, Path):  # a remote teacher's RemotePath
            return info.path.folder.read_rows(info, first, count, shape, rows)
        fd = self._fds.get(info.path)
        if fd is None:
            try:
                fd = self._fds[info.path] = os.open(info.path, os.O_RDONLY)
            except OSError as e:
                raise SlicerError(f"{info.path}: cannot open: {e.strerror or e}") from e
        nbytes = count * info.itemsize
        buf = bytearray(nbytes)
        view = memoryview(buf)
        offset = info.offset + first * info.itemsize
        done = 0
        try:
            while done < nbytes:
                n = os.preadv(fd, [view[done:]], offset + done)
                if n == 0:
                    raise SlicerError(f"{info.path}: tensor {info.name!r}: file ends before its data")
                done += n
        except OSError as e:
            raise SlicerError(f"{info.path}: cannot read tensor {info.name!r}: {e.strerror or e}") from e
        return torch.frombuffer(buf, dtype=BITS_DTYPE[info.itemsize]) if nbytes else torch.empty(0, dtype=BITS_DTYPE[info.itemsize])

    def __enter__(self) -> "_Files":
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
