"""``slicer shrink --hidden rotate``: a student whose hidden axis keeps the top principal
components of the teacher's residual stream, its other axes selected as asked.

1. The roles, observed (``observe``): one short streamed forward finds the norm sites (RMSNorm
   over the residual stream), which modules read each, and the teacher's gains.
2. Calibration statistics from the streamed forward (``statistics``): the covariance of the
   residual stream at every norm site, the rotation ``Q`` (its eigenvectors), and per norm
   site the student's gain. With importance scored on the fly (no ``scores`` file), the
   scoring forward gathers them too: the teacher runs once, after the short observing one.
3. The ordinary plan (the other axes selected by ``method``: importance uses the teacher's own
   scores; scored on the fly, by the activation criterion: on SmolLM2 at half width the
   rotated student with Taylor's FFN and head scores measured 959 / 1,336 against 558 / 846
   (bench/RESULTS.md), and it is one forward instead of a backward), and the engine writes it, multiplying every dimension bound to the hidden axis by
   ``Q[:, :k]`` as it streams (slicer.run.rotate; ``roles`` says what each tensor gets), norm
   gains folded, the head untied. No rotated teacher is written.
4. The manifest records the rotation (calibration, sha256 of ``Q``, variance kept, each
   tensor's role); with ``save_rotation`` the matrix goes into OUT as rotation.safetensors.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from ..io.checkpoint import Checkpoint, is_url
from ..io.format import DTYPES
from ..errors import SlicerError
from ..corrections.refit import check_request
from ..corrections.refit import correct as correct_student
from ..importance.calibration import warn_underdetermined
from ..plan.quantized import FLOAT_HINT
from ..plan.request import Request
from .family import check_offered
from .observe import observe
from .roles import hidden_axis, ops, residual_sites
from .statistics import WEIGHTINGS, Gatherer, collect
from .transform import matrix_sha256

log = logging.getLogger("slicer")
# The criterion of scores made on the fly for a rotated student (module docstring, step 3).
ROTATED_CRITERION = "activation"
ROTATION_NAME = "rotation.safetensors"


def student_hidden(config_set: dict | None, student_config, template) -> int | None:
    """The student's hidden size as the user named it (--set, --student-config or a template's config)."""
    for key in ("hidden_size", "text_config.hidden_size"):
        if config_set and key in config_set:
            return int(config_set[key])
    for path in (student_config, Path(template) / "config.json" if template and Path(template).is_dir() else None):
        if path and Path(path).is_file():
            value = json.loads(Path(path).read_text()).get("hidden_size")
            if value is not None:
                return int(value)
    return None


def check_quantized(config: dict, where: str, options: dict) -> None:
    """A quantized teacher is rotated dequantized, or refused in one line.

    FP8: the calibration forward reads the weights dequantized (slicer.importance.forward) and the
    student is written dequantized (``--quantized dequantize``, implied): a rotated weight mixes every
    block of its hidden dimension, so no FP8 bits or block scales survive it; the float type is the
    user's (--dtype), as for any dequantized student. MXFP4: the streamed forward reads it, but gpt-oss,
    its family, is not offered (refused by family before this), and no offered family is tested with it."""
    quantization = (config.get("quantization_config") or {}).get("quant_method")
    if not quantization:
        return
    if quantization != "fp8":
        raise SlicerError(f"{where}: --hidden rotate is not offered for {quantization} teachers (tested with FP8 "
                          "block-scaled teachers only); dequantize the teacher first")
    if options.get("quantized") == "blocks":
        raise SlicerError(f"{where}: --hidden rotate writes an FP8 teacher dequantized (a rotated weight mixes every "
                          "block of its hidden dimension); --quantized blocks cannot keep its blocks: use --quantized "
                          f"dequantize with {FLOAT_HINT}")
    if options.get("dtype", Request.dtype) == "keep":
        raise SlicerError(f"{where}: --hidden rotate writes an FP8 teacher dequantized (a rotated weight mixes every "
                          f"block of its hidden dimension): add {FLOAT_HINT}")


def shrink_rotated(teacher: str | Path, out: str | Path, *, config_set: dict | None = None, student_config=None,
                   template=None, method: str = Request.method, scores=None, calibration=None,
                   samples: int = Request.samples, seq_len: int = Request.seq_len, device: str = Request.device,
                   weighting: str = "normalized", gains: str = "scalar", save_rotation: bool = False,
                   correct: str | tuple | None = None, correct_alpha: float = Request.correct_alpha,
                   **shrink_options):
    """As :func:`slicer.api.shrink`, with the hidden axis rotated. Returns the engine's Summary,
    with ``rotation`` (a dict: the manifest's record and the engine's GFLOP/s) set on it."""
    from .. import job
    from ..run.rotate import Rotation, matmul_alone

    if weighting not in WEIGHTINGS:
        raise SlicerError(f"unknown --rotation-weighting {weighting!r} (choose from {', '.join(WEIGHTINGS)})")
    if is_url(teacher) or any(shrink_options.get(k) for k in ("revision", "cache_dir", "remote")):
        raise SlicerError(f"{teacher}: --hidden rotate runs the teacher on calibration data from local files; "
                          "download the teacher first")
    ckpt = Checkpoint.open(teacher, role="teacher")  # local only (a URL is refused above)
    if ckpt.config_path() is None:
        raise SlicerError(f"{ckpt.path}: --hidden rotate needs the teacher's config.json beside its weights")
    config = json.loads(ckpt.config_path().read_text())
    check_offered(config, str(ckpt.path))
    check_quantized(config, str(ckpt.path), shrink_options)
    text = config.get("text_config") or config
    d = int(text["hidden_size"])
    k = student_hidden(config_set, student_config, template)
    if k is None:
        raise SlicerError("--hidden rotate: name the student's hidden size (--set hidden_size=N or a student config)")
    if not 0 < k <= d:
        raise SlicerError(f"--hidden rotate: the student's hidden size {k} must be between 1 and the teacher's {d}")
    start = time.perf_counter()
    seen = observe(ckpt, d, calibration=calibration, device=device)
    observed_s = time.perf_counter() - start
    student_set = dict(config_set or {})
    if seen.tied:  # the final norm's gain is folded into the head, not into the embedding
        student_set["tie_word_embeddings"] = False
        if seen.text_config:
            student_set[f"{seen.text_config}tie_word_embeddings"] = False
    ranks = method == "importance" or shrink_options.get("layer_selection") == "importance"
    which = ()  # refused in one line before the teacher runs, if the corrections cannot do it
    if correct:
        asked = Request.of(config_set=student_set, student_config=student_config, template=template, method=method,
                           scores=scores, device=device, **shrink_options)
        which = check_request(ckpt.path, asked.replace(correct=correct, correct_alpha=correct_alpha))
    gatherer, scoring_s = None, 0.0
    if ranks and scores is None:  # one forward scores the teacher and gathers the rotation's statistics
        gatherer = Gatherer(seen.sites, weighting)
        scores, scoring_s = job.score_on_the_fly(ckpt, calibration, samples, seq_len, device, taps=gatherer.taps(),
                                                 criterion=ROTATED_CRITERION)
    request = Request.of(config_set=student_set, student_config=student_config, template=template, method=method,
                         # --calibration feeds the rotation's statistics (and the on-the-fly scores above), never
                         # a second scoring: with a scores file it is not the conflict a plain shrink refuses
                         scores=scores, calibration=None,
                         samples=samples, seq_len=seq_len, device=device, **shrink_options)
    ckpt, student, options = job.describe_student(ckpt.path, request)
    seen.keep_sites(residual_sites(job.plan_student(ckpt, student, options), seen))
    start = time.perf_counter()  # the statistics: the observing forward, and what gathering them added
    fused = gatherer is not None and gatherer.sites == seen.sites
    if fused:
        stats = gatherer.statistics(scores.metadata.get("calibration", {}), keep=k, gains=gains)
    else:  # no scores on the fly, or a site the plan does not bind to the hidden axis: a forward of its own
        stats = collect(ckpt, seen.sites, calibration=calibration, samples=samples, seq_len=seq_len, device=device,
                        weighting=weighting, keep=k, gains=gains)
    warn_underdetermined(stats.tokens, d, "--hidden rotate (per norm site)")
    q, variances = stats.rotation()
    kept = float(variances[:k].clamp(min=0).sum() / variances.clamp(min=0).sum())
    gathered_s = gatherer.seconds if fused else 0.0  # the hooks' share of the scoring forward
    statistics_s = observed_s + time.perf_counter() - start + gathered_s
    record = {"hidden": "rotate", "teacher_hidden": d, "student_hidden": k, "weighting": weighting,
              "calibration": stats.calibration, "tokens_per_site": stats.tokens, "sites": len(seen.sites),
              "variance_kept": round(kept, 6), "sha256": matrix_sha256(q), "matrix": "float64 [d, d], row-major",
              "gains": gains, "gain_tokens_per_site": stats.sampled,
              "site_gains": {s: round(g, 6) if isinstance(g, float) else [round(x, 6) for x in g.tolist()]
                             for s, g in stats.gains.items()}, "head_untied": seen.tied,
              "statistics_seconds": round(statistics_s, 3), "scoring_seconds": round(scoring_s, 3),
              "statistics_split": {"observe": round(observed_s, 3), "gather": round(gathered_s, 3),
                                   "forward_and_finish": round(statistics_s - observed_s - gathered_s, 3)},
              "calibration_forwards": 1 if fused else 1 + (gatherer is not None),  # besides the observing one
              "note": "every dimension bound to the hidden axis is the teacher's multiplied by the first "
                      "student_hidden columns of the rotation (norm gains folded into their readers), not a "
                      "sub-tensor; the hidden axis' index set is not used"}
    if save_rotation:
        record["saved"] = ROTATION_NAME

    rotation_of = []  # the engine's Rotation, for matmul_alone on its own products afterwards

    def rotate(plan):
        table, records = ops(plan, seen, stats.gains, str(ckpt.path))
        record["axis"] = hidden_axis(plan, seen)
        record["tensors"] = records
        # products in float64 where a rotated tensor is written in float32 or wider (its own precision, not
        # float32's rounding again: SmolLM2's full-width logits within allclose 1e-4), else float32 (bf16's 8 bits)
        wide = any(DTYPES[j.dtype].itemsize >= 4 and DTYPES[j.dtype].floating for j in plan.jobs if j.name in table)
        rotation_of.append(Rotation(q[:, :k], table, compute=torch.float64 if wide else None))
        return rotation_of[0], record

    import gc

    from ..importance.forward import give_back_memory
    from ..run.memory import anon_bytes

    gc.collect()
    give_back_memory()  # the calibration forwards' heap, before the engine's peak is sampled
    before = anon_bytes()
    beside = {}
    if save_rotation:  # written with the student, recorded in its manifest (a later --overwrite replaces it)
        from safetensors.torch import save_file

        beside[ROTATION_NAME] = lambda path: save_file({"rotation": q.contiguous(), "variances": variances.contiguous()},
                                                       str(path), metadata={"format": "pt", "sha256": record["sha256"]})
    summary = job.run(ckpt, out, student, options, device=request.device, backend=request.backend,
                      overwrite=request.overwrite, resume=request.resume, progress=request.progress,
                      chunk_bytes=request.chunk_bytes, rotate=rotate, beside=beside)
    if which:  # the refits, fed the rotated student's own inputs (slicer.corrections)
        summary.corrections = correct_student(ckpt.path, out, which, hidden_map=q[:, :k], alpha=correct_alpha,
                                              calibration=calibration, samples=samples, seq_len=seq_len, device=device)
    if summary.rotation is not None:
        summary.rotation["engine"].update(matmul_alone(rotation_of[0], summary.device))
        summary.rotation["engine"]["anon_before_engine_bytes"] = before
    log.info("hidden axis rotated: %d -> %d principal components of the residual stream (%.2f%% of its variance on "
             "%d calibration tokens x %d norm sites); statistics %.1f s; rotation sha256 %s",
             d, k, 100 * kept, stats.tokens, len(seen.sites), statistics_s, record["sha256"][:16])
    return summary


def shrink_request(teacher, out, request: Request):
    """``api.shrink(..., hidden="rotate")``: the request handed to :func:`shrink_rotated`."""
    if request.hidden != "rotate":
        raise SlicerError(f"unknown hidden mode {request.hidden!r} (choose from select, rotate)")
    skip = ("hidden", "rotation_weighting", "save_rotation", "shards", "executor", "executor_options")
    options = {f: getattr(request, f) for f in request.__dataclass_fields__ if f not in skip}
    return shrink_rotated(teacher, out, weighting=request.rotation_weighting, save_rotation=request.save_rotation,
                          **options)
