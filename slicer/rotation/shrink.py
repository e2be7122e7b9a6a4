"""``slicer shrink --hidden rotate``: a student whose hidden axis keeps the top principal
components of the teacher's residual stream, its other axes selected as asked.

1. Calibration statistics from the streamed forward (``statistics``): the covariance of the
   residual stream at every norm input, the rotation ``Q`` (its eigenvectors), and per norm
   site the student's gain.
2. The rotated teacher (``teacher``), written once into a staging folder beside OUT: the
   teacher multiplied by ``Q[:, :k]``, norm gains folded, head untied. A stock checkpoint.
3. The engine shrinks it to the student (its hidden axis is already k wide: identity), the
   other axes selected by ``method`` (importance: the teacher's own scores; the rotation does
   not change FFN neurons or heads, only the basis they read and write).
4. The manifest records the rotation (calibration, sha256 of ``Q``, variance kept) and names
   the original teacher; with ``save_rotation`` the matrix goes into OUT as rotation.safetensors.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ..io.checkpoint import Checkpoint, is_url
from ..errors import SlicerError
from ..plan.request import Request
from .family import check_offered, norm_sites
from .statistics import WEIGHTINGS, collect
from .teacher import write_rotated
from .transform import matrix_sha256, rotation

log = logging.getLogger("slicer")
ROTATION_NAME = "rotation.safetensors"


def student_hidden(config_set: dict | None, student_config, template) -> int | None:
    """The student's hidden size as the user named it (--set, --student-config or a template's config)."""
    if config_set and "hidden_size" in config_set:
        return int(config_set["hidden_size"])
    for path in (student_config, Path(template) / "config.json" if template and Path(template).is_dir() else None):
        if path and Path(path).is_file():
            value = json.loads(Path(path).read_text()).get("hidden_size")
            if value is not None:
                return int(value)
    return None


def shrink_rotated(teacher: str | Path, out: str | Path, *, config_set: dict | None = None, student_config=None,
                   template=None, method: str = Request.method, scores=None, calibration=None,
                   samples: int = Request.samples, seq_len: int = Request.seq_len, device: str = Request.device, weighting: str = "normalized", gains: str = "scalar",
                   save_rotation: bool = False,
                   **shrink_options):
    """As :func:`slicer.api.shrink`, with the hidden axis rotated. Returns the engine's Summary,
    with ``rotation`` (a dict, also in the manifest) set on it."""
    from .. import job

    if weighting not in WEIGHTINGS:
        raise SlicerError(f"unknown --rotation-weighting {weighting!r} (choose from {', '.join(WEIGHTINGS)})")
    if shrink_options.get("resume"):
        raise SlicerError("--hidden rotate does not support --resume yet: rerun without it")
    if is_url(teacher) or any(shrink_options.get(k) for k in ("revision", "cache_dir", "remote")):
        raise SlicerError(f"{teacher}: --hidden rotate runs the teacher on calibration data from local files; "
                          "download the teacher first")
    ckpt = Checkpoint.open(teacher, role="teacher")
    if getattr(ckpt, "source", None) is not None:
        raise SlicerError(f"{ckpt.path}: --hidden rotate runs the teacher on calibration data from local files; "
                          "download the teacher first")
    if ckpt.config_path() is None:
        raise SlicerError(f"{ckpt.path}: --hidden rotate needs the teacher's config.json beside its weights")
    config = json.loads(ckpt.config_path().read_text())
    prefix = check_offered(config, str(ckpt.path))
    d = int(config["hidden_size"])
    k = student_hidden(config_set, student_config, template)
    if k is None:
        raise SlicerError("--hidden rotate: name the student's hidden size (--set hidden_size=N or a student config)")
    if not 0 < k <= d:
        raise SlicerError(f"--hidden rotate: the student's hidden size {k} must be between 1 and the teacher's {d}")
    start = time.perf_counter()
    sites = norm_sites(prefix, int(config["num_hidden_layers"]))
    stats = collect(ckpt, sites, calibration=calibration, samples=samples, seq_len=seq_len, device=device,
                    weighting=weighting, keep=k, gains=gains)
    if stats.tokens < d:
        log.warning("--hidden rotate: %d calibration tokens for a %d x %d covariance per site: the rotation is "
                    "underdetermined; pass more text with --calibration / --samples", stats.tokens, d, d)
    q, variances = rotation(stats.covariance)
    kept = float(variances[:k].clamp(min=0).sum() / variances.clamp(min=0).sum())
    out = Path(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.rotated-", dir=out.parent if out.parent.is_dir() else None))
    try:
        rotated_dir = staging / "teacher"
        written = write_rotated(ckpt, rotated_dir, prefix, q[:, :k], stats.gains)
        rotate_s = time.perf_counter() - start
        ranked = None
        if method == "importance" or shrink_options.get("layer_selection") == "importance":
            ranked = staging / "scores.safetensors"
            _rotated_scores(ckpt, Checkpoint.open(rotated_dir, role="teacher"), ranked, variances[:k], scores,
                            calibration, samples, seq_len, device)
        student_set = dict(config_set or {})
        summary = job.shrink_here(rotated_dir, out, Request.of(
            config_set=student_set, student_config=student_config, template=template, method=method, scores=ranked,
            **shrink_options))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record = {"hidden": "rotate", "teacher_hidden": d, "student_hidden": k, "weighting": weighting,
              "calibration": stats.calibration, "tokens_per_site": stats.tokens, "sites": len(sites),
              "variance_kept": round(kept, 6), "sha256": matrix_sha256(q), "matrix": "float64 [d, d], row-major",
              "gains": gains,
              "site_gains": {s: round(g, 6) if isinstance(g, float) else [round(x, 6) for x in g.tolist()]
                             for s, g in stats.gains.items()}, "head_untied": written["untied"],
              "seconds": round(rotate_s, 3)}
    if save_rotation:
        from safetensors.torch import save_file

        save_file({"rotation": q.contiguous(), "variances": variances.contiguous()}, str(out / ROTATION_NAME),
                  metadata={"format": "pt", "sha256": record["sha256"]})
        record["saved"] = ROTATION_NAME
    _record(out, ckpt, record)
    log.info("hidden axis rotated: %d -> %d principal components of the residual stream (%.2f%% of its variance on "
             "%d calibration tokens x %d norm sites), rotated teacher written in %.1f s; rotation sha256 %s",
             d, k, 100 * kept, stats.tokens, len(sites), rotate_s, record["sha256"][:16])
    summary.rotation = record
    return summary


def shrink_request(teacher, out, request: Request):
    """``api.shrink(..., hidden="rotate")``: the request handed to :func:`shrink_rotated`."""
    if request.hidden != "rotate":
        raise SlicerError(f"unknown hidden mode {request.hidden!r} (choose from select, rotate)")
    skip = ("hidden", "rotation_weighting", "save_rotation", "shards", "executor", "executor_options")
    options = {f: getattr(request, f) for f in request.__dataclass_fields__ if f not in skip}
    return shrink_rotated(teacher, out, weighting=request.rotation_weighting, save_rotation=request.save_rotation,
                          **options)


def _rotated_scores(ckpt: Checkpoint, rotated: Checkpoint, path: Path, variances: torch.Tensor, scores, calibration,
                    samples: int, seq_len: int, device: str) -> None:
    """The teacher's importance scores, bound to the rotated teacher; the hidden axis scored by the
    variance each kept component carries (all kept: the rotated teacher is k wide already)."""
    from ..importance.scores import Scores, load, save, teacher_files
    from ..importance.scoring import score_teacher

    if scores is not None:
        found = load(scores, ckpt)
    else:
        found = score_teacher(ckpt, calibration, samples=samples, seq_len=seq_len, device=device).scores
    vectors = {name: v for name, v in found.vectors.items() if name != "hidden"}
    vectors["hidden"] = variances.float()
    metadata = {**found.metadata, "teacher": teacher_files(rotated),
                "rotated_from": found.metadata.get("teacher")}
    save(path, Scores(vectors, metadata, "rotated scores"))


def _record(out: Path, ckpt: Checkpoint, record: dict) -> None:
    """Add the rotation to OUT's manifest (atomically): the engine's record names the staged teacher."""
    from ..io.writer import MANIFEST_NAME

    path = out / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["rotation"] = {**record, "teacher": str(ckpt.path)}
    tmp = path.with_name(path.name + ".incomplete")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)
