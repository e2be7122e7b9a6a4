"""One job, in one process: describe the student from a :class:`~slicer.plan.request.Request`,
plan it, and write it (or stream it); the summary of what was done.

What every route shares: the API's keyword wrappers (:mod:`slicer.api`), the command
line, the rotated hidden axis (:mod:`slicer.rotation`, which writes a rotated teacher and
then shrinks it here) and each worker of a distributed run (:mod:`slicer.distributed`).
The engine, backends and writer are imported where used: planning (and ``import slicer``)
needs none of them, nor numpy.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .plan import manifest
from .plan import quantized as quantized_weights
from .io.checkpoint import Checkpoint
from .teacher import open_checkpoint
from .io import stop
from .errors import Interrupted, SlicerError
from .run.memory import PeakSampler
from .plan.build import Options, Plan, build_plan, format_bytes, parse_size
from .plan.request import ATTENTION_CHOICES, DEFAULT_CHUNK_BYTES, Request
from .plan.student import StudentSpec, from_template

if TYPE_CHECKING:
    import torch

PIPELINE_DEPTH = 3  # engine.PIPELINE_DEPTH, repeated (a test keeps them equal): no engine import to plan

log = logging.getLogger("slicer")


@dataclass
class Summary:
    out: str
    tensors_written: int
    tensors_skipped: int  # teacher tensors the student does not use
    tensors_excluded: int  # student tensors dropped by exclude patterns
    shards: int
    bytes_read: int  # teacher bytes in the rows that were kept
    bytes_written: int
    seconds: float
    peak_memory_bytes: int  # RssAnon + RssShmem, sampled
    backend: str
    device: str
    bytes_fetched: int | None = None  # a remote teacher: bytes received over the network (headers included)
    teacher_bytes: int = 0  # the teacher's tensor bytes, all of them
    replaced: list[str] = field(default_factory=list)  # files of OUT replaced or removed (a previous student's)
    resumed: list[str] = field(default_factory=list)  # shards of the interrupted run that were kept
    unchanged: bool = False  # --resume found this very student finished in OUT: nothing was written
    network: dict | None = None  # a remote teacher: requests, resolves, retries, rate-limit waits (RemoteFolder.stats)
    rotation: dict | None = None  # --hidden rotate: the manifest's record, and the engine's products (GFLOP/s)
    corrections: dict | None = None  # --correct: the manifest's record (what was refitted, how well, how long)

    @property
    def gb_per_s(self) -> float:
        return (self.bytes_read + self.bytes_written) / 1e9 / max(self.seconds, 1e-9)

    def as_dict(self) -> dict:
        return {**asdict(self), "gb_per_s": round(self.gb_per_s, 3)}


def describe_student(teacher, request: Request) -> tuple[Checkpoint, StudentSpec, Options]:
    """The teacher's headers, the student spec (with its importance scores, if the run ranks)
    and the run's options, whichever route the student comes by."""
    r = request
    template, student_config, config_set, attention = r.template, r.student_config, r.config_set, r.attention
    if (template is None) == (student_config is None and not config_set):
        raise SlicerError("name the student: a --template checkpoint, or --student-config / --set (a Hugging Face config)")
    ckpt = open_checkpoint(teacher, role="teacher", revision=r.revision, cache_dir=r.cache_dir, remote=r.remote)
    rank = lambda: _ranking(ckpt, r.method, r.layer_selection, r.scores, r.calibration,  # noqa: E731
                            r.samples, r.seq_len, r.device)
    # Scores are computed once the student is known to be valid, except where the student's
    # config itself follows the layers importance keeps (its per-layer lists).
    ranking = rank() if template is None and r.layer_selection == "importance" else None
    if template is not None:
        from .hf.route import template_structure

        student = from_template(open_checkpoint(template, role="template"))
        attention = template_structure(ckpt, student, attention)
    else:
        from .hf.route import from_config

        attention = attention or "heads"
        student = from_config(ckpt, student_config, config_set or {}, attention=attention,
                              dtype=r.dtype, layer_selection=r.layer_selection,
                              layer_scores=ranking.layers() if ranking is not None else None,
                              use_cache=r.route_cache)
    student.ranking = ranking or rank()
    if attention not in ATTENTION_CHOICES:
        raise SlicerError(f"unknown attention mode {attention!r} (choose from {', '.join(ATTENTION_CHOICES)})")
    options = Options(method=r.method, seed=r.seed, layer_selection=r.layer_selection, exclude=tuple(r.exclude),
                      dtype=r.dtype, max_shard_size=parse_size(r.max_shard_size), attention=attention,
                      quantized=r.quantized, route_cache=r.route_cache)
    return ckpt, student, options


def _ranking(ckpt: Checkpoint, method: str, layer_selection: str, scores, calibration, samples: int, seq_len: int,
             device: str):
    """The importance scores of a run that ranks: read from ``scores``, or computed on the fly."""
    if method != "importance" and layer_selection != "importance":
        if scores is not None or calibration is not None:
            raise SlicerError("--scores and --calibration are for --method importance or --layer-selection importance")
        return None
    if scores is not None:
        if calibration is not None:
            raise SlicerError("pass --scores FILE or --calibration FILE, not both")
        from .importance.scores import Scores, load

        return scores if isinstance(scores, Scores) else load(scores, ckpt)  # Scores: already scored by the caller
    return score_on_the_fly(ckpt, calibration, samples, seq_len, device)[0]


def score_on_the_fly(ckpt: Checkpoint, calibration, samples: int, seq_len: int, device: str, taps=None,
                     criterion: str = "taylor"):
    """(scores, seconds) of the teacher on ``calibration`` by ``criterion`` (``score_teacher``'s);
    ``taps`` ride along on the same forward (a rotation's statistics)."""
    from .importance.scoring import score_teacher

    if calibration is None:
        log.info("scoring the teacher on slicer's default calibration text (pass --scores or --calibration to choose)")
    run = score_teacher(ckpt, calibration, samples=samples, seq_len=seq_len, device=device, taps=taps,
                        criterion=criterion)
    layer_lists = len(run.scores.layers())
    log.info("scored %d axes and %d layer list(s) by %s on %d calibration tokens in %.1f s (%s)",
             len(run.scores.vectors) - layer_lists, layer_lists, criterion, run.tokens, run.seconds, run.device)
    return run.scores, run.seconds


def plan_student(teacher: Checkpoint, student: StudentSpec, options: Options) -> Plan:
    """The plan of a described student (every worker of a distributed run plans so)."""
    return _plan(teacher, student, options)


def _plan(teacher: Checkpoint, student: StudentSpec, options: Options) -> Plan:
    from .hf.route_cache import Stale  # the module imports no transformers

    binder = student.make_binder(options)
    try:
        return build_plan(teacher, student.tensors, options, binder, origin=student.origin,
                          quantization=quantized_weights.teacher_scheme(teacher), ranking=student.ranking)
    except Stale as e:  # a cached route that does not answer this plan: the bindings are derived after all
        log.warning("%s; deriving them again", e)
        return build_plan(teacher, student.tensors, options, e.derive(), origin=student.origin,
                          quantization=quantized_weights.teacher_scheme(teacher), ranking=student.ranking)


def run(teacher: Checkpoint, out, student: StudentSpec, options: Options, *, device="auto", backend="auto",
        overwrite=False, resume=False, progress=False, chunk_bytes=DEFAULT_CHUNK_BYTES, rotate=None,
        beside=None) -> Summary:
    """Shared by every route to a student spec (template, config). ``rotate(plan)``, where the
    hidden axis is rotated (slicer.rotation), returns the engine's Rotation and the manifest's
    record of it (part of the fingerprint --resume compares). ``beside`` maps a file name to a
    function that writes that file at the path it is given: written into staging after the
    shards and moved into OUT with them, so it is the run's own (recorded in the manifest with
    its sha256; a later --overwrite replaces it) and never half-written (rotation.safetensors)."""
    from .run.backends import choose
    from .run.engine import Engine
    from .io.writer import OutputDir, fingerprint, sha256_file

    start = time.perf_counter()
    check_chunk_bytes(chunk_bytes)
    the_plan = _plan(teacher, student, options)
    out = Path(out)
    check_out(out, the_plan.teacher, student)
    chosen = choose(device, backend)
    output = OutputDir(out, overwrite=overwrite, resume=resume)
    rotation, rotation_record = rotate(the_plan) if rotate is not None else (None, None)
    engine = Engine(chosen.gather, chunk_bytes=chunk_bytes, device=chosen.device, arrays=chosen.arrays,
                    rotation=rotation)
    beside = dict(beside or {})
    record, extra = output_files(the_plan, student, beside=list(beside))
    if rotation_record is not None:
        record["rotation"] = rotation_record
    bar = None
    writing = False
    try:
        with stop.requests():  # from here Ctrl-C / SIGTERM only set a flag, checked between chunks
            resumed = output.open(fingerprint(record), record["files"])
            if output.unchanged:
                return _summary(out, the_plan, chosen, bytes_read=0, seconds=time.perf_counter() - start, peak=0,
                                unchanged=True)
            bar = _progress_bar(the_plan, progress)
            with PeakSampler() as memory:
                writing = True
                bytes_read = engine.run(the_plan, output, *(bar.callbacks() if bar else ()))
                writing = False
                for shard in record["shards"]:
                    shard["sha256"] = output.done[shard["name"]]["sha256"]
                for name, write in beside.items():  # streamed to disk, not held as bytes (d x d float64)
                    write(output.staging / name)
                    output.record(name, dict(zip(("sha256", "size"), sha256_file(output.staging / name))))
                output.finish([*(s.filename for s in the_plan.shards), *beside], extra, record)
            if resumed:
                log.info("resumed: kept %d completed shard(s): %s", len(resumed), ", ".join(sorted(resumed)))
            # still inside the try: a Ctrl-C from here on says that OUT holds the complete new student
            summary = _summary(out, the_plan, chosen, bytes_read=bytes_read, seconds=time.perf_counter() - start,
                               peak=memory.peak, replaced=list(output.replace), resumed=sorted(resumed))
    except KeyboardInterrupt:
        if writing and output.done:  # completed shards are progress: keep them for --resume
            raise Interrupted(output.keep_for_resume(len(the_plan.shards))) from None
        output.abort()
        raise Interrupted(output.outcome()) from None
    except BaseException:
        output.abort()
        raise
    finally:
        if bar:
            bar.close()
    if rotation is not None:
        summary.rotation = {**rotation_record, "engine": rotation.stats()}
    log.debug("wrote %s", summary)
    return summary


def output_files(the_plan: Plan, student: StudentSpec, beside=()) -> tuple[dict, dict[str, bytes]]:
    """The manifest record (shard hashes still to fill in) and the small files OUT gets
    beside the shards (config, tokenizer files, index); ``beside``: the names of files the run
    writes itself besides those (``run``'s ``beside``)."""
    from .io.writer import INDEX_NAME, MANIFEST_NAME, index_json

    record = manifest.build(the_plan)
    extra = quantized_weights.student_config(dict(student.files), the_plan.quantization)
    if the_plan.is_sharded:
        shards = [(s.filename, [j.name for j in s.jobs]) for s in the_plan.shards]
        extra[INDEX_NAME] = index_json(shards, sum(j.nbytes for j in the_plan.jobs))
    record["files"] = [*(s.filename for s in the_plan.shards), *beside, *extra, MANIFEST_NAME]  # what --overwrite may replace later
    return record, extra


def _summary(out: Path, the_plan: Plan, chosen, *, bytes_read: int, seconds: float, peak: int,
             unchanged: bool = False, **lists) -> Summary:
    return Summary(
        out=str(out),
        tensors_written=0 if unchanged else len(the_plan.jobs),
        tensors_skipped=len(the_plan.skipped),
        tensors_excluded=len(the_plan.excluded),
        shards=len(the_plan.shards),
        bytes_read=bytes_read,
        bytes_written=0 if unchanged else the_plan.bytes_to_write,
        seconds=seconds,
        peak_memory_bytes=peak,
        backend=chosen.name,
        device=chosen.device,
        bytes_fetched=the_plan.teacher.source.bytes_fetched,
        teacher_bytes=the_plan.teacher.total_bytes,
        unchanged=unchanged,
        network=the_plan.teacher.source.stats(),
        **lists,
    )


def check_chunk_bytes(chunk_bytes: int) -> None:
    """Memory per chunk in flight: a positive size that leaves the machine room to run."""
    if not isinstance(chunk_bytes, int) or isinstance(chunk_bytes, bool) or chunk_bytes < 1:
        raise SlicerError(f"chunk size {chunk_bytes!r}: give a whole number of bytes, at least 1 "
                          "(--chunk-mb takes a whole number of MB, at least 1)")
    total = _physical_memory()
    if total and chunk_bytes * PIPELINE_DEPTH > total // 2:
        raise SlicerError(f"chunk size {chunk_bytes / 2**20:.0f} MB is too large: {PIPELINE_DEPTH} chunks in flight "
                          f"need more than half of this machine's {total / 2**30:.1f} GiB of memory")


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_out(out: Path, teacher: Checkpoint, student: StudentSpec) -> None:
    """OUT must not be, be inside, or hold an input's folder: inputs stay untouched
    (also with --overwrite, which removes files of OUT)."""
    try:
        target = out.resolve()
    except (OSError, RuntimeError) as e:  # a name too long, a symlink loop
        raise SlicerError(f"{out}: cannot use as the output folder: {getattr(e, 'strerror', None) or e}") from e
    inputs = [("teacher", f) for f in teacher.source.folders(teacher.files)] + [("template", student.folder)]
    for role, folder in inputs:
        if folder is None:
            continue
        folder = folder.resolve()
        if target == folder or folder in target.parents:
            raise SlicerError(f"{out}: output folder is {'' if target == folder else 'inside '}the {role}'s folder {folder}; choose another OUT")
        if target in folder.parents:
            raise SlicerError(f"{out}: output folder holds the {role}'s folder {folder}; choose another OUT")


def _progress_bar(the_plan: Plan, enabled: bool) -> "_Progress | None":
    return _Progress(the_plan) if enabled else None


class _Progress:
    """A tqdm bar on stderr: bytes written, throughput, tensors done."""

    def __init__(self, the_plan: Plan):
        from tqdm import tqdm

        self.source = the_plan.teacher.source  # a remote teacher: bytes fetched so far, next to its size
        self.teacher_bytes = the_plan.teacher.total_bytes
        self.total_tensors = len(the_plan.jobs)
        self.tensors = 0
        self.bar = tqdm(total=the_plan.bytes_to_write, unit="B", unit_scale=True, unit_divisor=1000,
                        desc="shrink", file=sys.stderr, dynamic_ncols=True)
        self._show()

    def callbacks(self):
        return self.bar.update, self.tensor_done

    def tensor_done(self) -> None:
        self.tensors += 1
        self._show()

    def _show(self) -> None:
        text = f"{self.tensors}/{self.total_tensors} tensors"
        if self.source.fetches:
            text += f", fetched {format_bytes(self.source.bytes_fetched)} of {format_bytes(self.teacher_bytes)}"
        self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self.bar.close()


def shrink_here(teacher, out, request: Request) -> Summary:
    """The student written into ``out`` by this process (what api.shrink does where the hidden
    axis is selected and no executor is asked)."""
    ckpt, student, options = describe_student(teacher, request)
    return run(ckpt, out, student, options, device=request.device, backend=request.backend,
               overwrite=request.overwrite, resume=request.resume, progress=request.progress,
               chunk_bytes=request.chunk_bytes)


def stream_here(teacher, request: Request) -> Iterator[tuple[str, "torch.Tensor"]]:
    """Every student tensor as ``(name, tensor)`` on the request's device, writing no file."""
    from .run.backends import choose
    from .run.engine import Engine

    ckpt, student, options = describe_student(teacher, request)
    check_chunk_bytes(request.chunk_bytes)
    the_plan = _plan(ckpt, student, options)
    chosen = choose(request.device, request.backend)
    engine = Engine(chosen.gather, chunk_bytes=request.chunk_bytes, device=chosen.device, arrays=chosen.arrays)
    with engine.open_reader(the_plan, whole_copies=False) as reader:
        for job in the_plan.jobs:
            yield job.name, engine.tensor(job, reader)

