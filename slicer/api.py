"""The Python API: ``plan`` (headers only) and ``shrink`` (plan, then write)."""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import manifest
from . import quantized as quantized_weights
from .checkpoint import Checkpoint
from .errors import Interrupted, SlicerError
from .memory import PeakSampler
from .plan import Options, Plan, build_plan, parse_size
from .report import format_bytes
from .route_cache import Stale
from .student import StudentSpec, from_template

if TYPE_CHECKING:
    import torch

# The engine, backends and writer are imported where used: planning (and `import slicer`)
# needs none of them, nor numpy. Their two constants, repeated (a test keeps them equal):
DEFAULT_CHUNK_BYTES = 32 << 20  # engine.DEFAULT_CHUNK_BYTES
PIPELINE_DEPTH = 3  # engine.PIPELINE_DEPTH

log = logging.getLogger("slicer")
ATTENTION_CHOICES = ("flat", "heads")
DEFAULT_SAMPLES, DEFAULT_SEQ_LEN = 32, 128  # calibration rows x tokens when importance scores on the fly


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

    @property
    def gb_per_s(self) -> float:
        return (self.bytes_read + self.bytes_written) / 1e9 / max(self.seconds, 1e-9)

    def as_dict(self) -> dict:
        return {**asdict(self), "gb_per_s": round(self.gb_per_s, 3)}


def plan(
    teacher: str | Path,
    *,
    template: str | Path | None = None,
    student_config: str | Path | None = None,
    config_set: dict | None = None,
    method: str = "uniform",
    seed: int = 0,
    layer_selection: str = "first",
    attention: str | None = None,
    exclude: Iterable[str] = (),
    dtype: str = "keep",
    max_shard_size: int | str = "5GB",
    quantized: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    remote: dict | None = None,
    scores: str | Path | None = None,
    calibration: str | Path | None = None,
    samples: int = DEFAULT_SAMPLES,
    seq_len: int = DEFAULT_SEQ_LEN,
    device: str = "auto",
    route_cache: bool = True,
) -> Plan:
    """Plan a student without reading tensor data: sources, index sets, shards.

    The student comes from ``template`` (a checkpoint whose headers give names and
    shapes) or from a Hugging Face config: ``student_config`` (a config.json) and/or
    ``config_set`` (keys edited into the teacher's config.json, or into student_config).
    ``quantized`` chooses how an FP8 block-scaled teacher is shrunk: "blocks" (whole blocks, bits
    exact) or "dequantize" (implied by a float ``dtype``); see slicer.quantized.

    ``teacher`` may be a URL (``hf://ORG/NAME``, ``s3://bucket/prefix/``, any fsspec URL,
    ``https://host/folder/``): only headers are fetched. ``revision`` (hf:// only) pins a
    branch, tag or commit; ``cache_dir`` keeps fetched bytes on disk for later runs;
    ``remote`` tunes the fetching (a dict of :class:`slicer.remote.RemoteOptions` fields).

    ``method="importance"`` / ``layer_selection="importance"`` rank by ``scores`` (a file of
    ``slicer score``), or score the teacher first on ``calibration`` (None: the default text).
    """
    ckpt, student, options = describe_student(teacher, template, student_config, config_set, method=method, seed=seed,
                                              layer_selection=layer_selection, attention=attention, exclude=exclude,
                                              dtype=dtype, max_shard_size=max_shard_size, revision=revision,
                                              cache_dir=cache_dir, remote=remote, quantized=quantized, scores=scores,
                                              calibration=calibration, samples=samples, seq_len=seq_len, device=device,
                                              route_cache=route_cache)
    return _plan(ckpt, student, options)


def describe_student(teacher, template, student_config, config_set, *, attention, revision=None, cache_dir=None,
                     remote=None, scores=None, calibration=None, samples=DEFAULT_SAMPLES, seq_len=DEFAULT_SEQ_LEN,
                     device="auto", **options) -> tuple[Checkpoint, StudentSpec, Options]:
    """The teacher's headers, the student spec (with its importance scores, if the run ranks)
    and the run's options, whichever route the student comes by."""
    if (template is None) == (student_config is None and not config_set):
        raise SlicerError("name the student: a --template checkpoint, or --student-config / --set (a Hugging Face config)")
    ckpt = Checkpoint.open(teacher, role="teacher", revision=revision, cache_dir=cache_dir, remote=remote)
    rank = lambda: _ranking(ckpt, options["method"], options["layer_selection"], scores, calibration,  # noqa: E731
                            samples, seq_len, device)
    # Scores are computed once the student is known to be valid, except where the student's
    # config itself follows the layers importance keeps (its per-layer lists).
    ranking = rank() if template is None and options["layer_selection"] == "importance" else None
    if template is not None:
        from .hf import template_structure

        student = from_template(template)
        attention = template_structure(ckpt, student, attention)
    else:
        from .hf import from_config

        attention = attention or "heads"
        student = from_config(ckpt, student_config, config_set or {}, attention=attention,
                              dtype=options["dtype"], layer_selection=options["layer_selection"],
                              layer_scores=ranking.layers() if ranking is not None else None,
                              use_cache=options.get("route_cache", True))
    student.ranking = ranking or rank()
    if attention not in ATTENTION_CHOICES:
        raise SlicerError(f"unknown attention mode {attention!r} (choose from {', '.join(ATTENTION_CHOICES)})")
    exclude = tuple(options.pop("exclude"))
    size = parse_size(options.pop("max_shard_size"))
    return ckpt, student, Options(**options, exclude=exclude, max_shard_size=size, attention=attention)


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
        from .importance.scores import load

        return load(scores, ckpt)
    from .importance.scoring import score_teacher

    if calibration is None:
        log.info("scoring the teacher on slicer's default calibration text (pass --scores or --calibration to choose)")
    run = score_teacher(ckpt, calibration, samples=samples, seq_len=seq_len, device=device)
    layer_lists = len(run.scores.layers())
    log.info("scored %d axes and %d layer list(s) on %d calibration tokens in %.1f s (%s)",
             len(run.scores.vectors) - layer_lists, layer_lists, run.tokens, run.seconds, run.device)
    return run.scores


def _plan(teacher: Checkpoint, student: StudentSpec, options: Options) -> Plan:
    binder = student.make_binder(options)
    try:
        return build_plan(teacher, student.tensors, options, binder, origin=student.origin,
                          quantization=quantized_weights.teacher_scheme(teacher), ranking=student.ranking)
    except Stale as e:  # a cached route that does not answer this plan: the bindings are derived after all
        log.warning("%s; deriving them again", e)
        return build_plan(teacher, student.tensors, options, e.derive(), origin=student.origin,
                          quantization=quantized_weights.teacher_scheme(teacher), ranking=student.ranking)


def shrink(
    teacher: str | Path,
    out: str | Path,
    *,
    template: str | Path | None = None,
    student_config: str | Path | None = None,
    config_set: dict | None = None,
    method: str = "uniform",
    seed: int = 0,
    layer_selection: str = "first",
    attention: str | None = None,
    exclude: Iterable[str] = (),
    dtype: str = "keep",
    max_shard_size: int | str = "5GB",
    device: str = "auto",
    backend: str = "auto",
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    quantized: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    remote: dict | None = None,
    scores: str | Path | None = None,
    calibration: str | Path | None = None,
    samples: int = DEFAULT_SAMPLES,
    seq_len: int = DEFAULT_SEQ_LEN,
    route_cache: bool = True,
) -> Summary:
    """Write the student selected from ``teacher`` into the folder ``out``.

    The student is named as for :func:`plan`. Everything is checked (paths, headers,
    shapes) before anything is written; on any error nothing is left in ``out`` and
    the inputs are untouched. A non-empty ``out`` needs ``overwrite=True``, which
    replaces only a previous slicer student's files and files of the names this run
    writes (``Summary.replaced`` lists them). ``resume=True`` continues a killed run
    into the same ``out`` (completed shards that provably did not change are kept),
    or, over the same finished student, does nothing (``Summary.unchanged``).
    Ctrl-C raises :class:`slicer.errors.Interrupted` (a KeyboardInterrupt) saying
    whether ``out`` holds the old or the complete new student. A remote ``teacher``
    (see :func:`plan`) is read by range requests of the kept rows only. Importance
    options as for :func:`plan` (scoring runs on ``device``).
    """
    ckpt, student, options = describe_student(teacher, template, student_config, config_set, method=method, seed=seed,
                                              layer_selection=layer_selection, attention=attention, exclude=exclude,
                                              dtype=dtype, max_shard_size=max_shard_size, revision=revision,
                                              cache_dir=cache_dir, remote=remote, quantized=quantized, scores=scores,
                                              calibration=calibration, samples=samples, seq_len=seq_len, device=device,
                                              route_cache=route_cache)
    return run(ckpt, out, student, options, device=device, backend=backend, overwrite=overwrite,
               resume=resume, progress=progress, chunk_bytes=chunk_bytes)


def stream(
    teacher: str | Path,
    *,
    template: str | Path | None = None,
    student_config: str | Path | None = None,
    config_set: dict | None = None,
    method: str = "uniform",
    seed: int = 0,
    layer_selection: str = "first",
    attention: str | None = None,
    exclude: Iterable[str] = (),
    dtype: str = "keep",
    device: str = "auto",
    backend: str = "auto",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    quantized: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    remote: dict | None = None,
    scores: str | Path | None = None,
    calibration: str | Path | None = None,
    samples: int = DEFAULT_SAMPLES,
    seq_len: int = DEFAULT_SEQ_LEN,
    route_cache: bool = True,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every student tensor, on ``device``, writing no file.

    For pipelines that feed a training or distillation job directly. The plan is made
    (and checked) before the first tensor is yielded; tensors come in teacher file
    order; memory in flight is one student tensor plus the chunk budget.
    """
    ckpt, student, options = describe_student(teacher, template, student_config, config_set, method=method, seed=seed,
                                              layer_selection=layer_selection, attention=attention, exclude=exclude,
                                              dtype=dtype, max_shard_size="5GB", revision=revision,
                                              cache_dir=cache_dir, remote=remote, quantized=quantized, scores=scores,
                                              calibration=calibration, samples=samples, seq_len=seq_len, device=device,
                                              route_cache=route_cache)
    from .backends import choose
    from .engine import Engine

    check_chunk_bytes(chunk_bytes)
    the_plan = _plan(ckpt, student, options)
    chosen = choose(device, backend)
    engine = Engine(chosen.gather, chunk_bytes=chunk_bytes, device=chosen.device, arrays=chosen.arrays)
    with engine.open_reader(the_plan, whole_copies=False) as reader:
        for job in the_plan.jobs:
            yield job.name, engine.tensor(job, reader)


def run(teacher: Checkpoint, out, student: StudentSpec, options: Options, *, device="auto", backend="auto",
        overwrite=False, resume=False, progress=False, chunk_bytes=DEFAULT_CHUNK_BYTES) -> Summary:
    """Shared by every route to a student spec (template, config)."""
    from .backends import choose
    from .engine import Engine
    from .writer import INDEX_NAME, MANIFEST_NAME, OutputDir, index_json

    start = time.perf_counter()
    check_chunk_bytes(chunk_bytes)
    the_plan = _plan(teacher, student, options)
    out = Path(out)
    _check_out(out, the_plan.teacher, student)
    chosen = choose(device, backend)
    output = OutputDir(out, overwrite=overwrite, resume=resume)
    engine = Engine(chosen.gather, chunk_bytes=chunk_bytes, device=chosen.device, arrays=chosen.arrays)
    record = manifest.build(the_plan)
    extra = quantized_weights.student_config(dict(student.files), the_plan.quantization)
    if the_plan.is_sharded:
        shards = [(s.filename, [j.name for j in s.jobs]) for s in the_plan.shards]
        extra[INDEX_NAME] = index_json(shards, sum(j.nbytes for j in the_plan.jobs))
    record["files"] = [*(s.filename for s in the_plan.shards), *extra, MANIFEST_NAME]  # what --overwrite may replace later
    bar = None
    try:
        resumed = output.open(manifest.fingerprint(record), record["files"])
        if output.unchanged:
            return _summary(out, the_plan, chosen, bytes_read=0, seconds=time.perf_counter() - start, peak=0,
                            unchanged=True)
        bar = _progress_bar(the_plan, progress)
        with PeakSampler() as memory:
            bytes_read = engine.run(the_plan, output, *(bar.callbacks() if bar else ()))
            for shard in record["shards"]:
                shard["sha256"] = output.done[shard["name"]]["sha256"]
            output.finish([s.filename for s in the_plan.shards], extra, record)
    except KeyboardInterrupt:
        output.abort()
        raise Interrupted(output.outcome()) from None
    except BaseException:
        output.abort()
        raise
    finally:
        if bar:
            bar.close()
    if resumed:
        log.info("resumed: kept %d completed shard(s): %s", len(resumed), ", ".join(sorted(resumed)))
    summary = _summary(out, the_plan, chosen, bytes_read=bytes_read, seconds=time.perf_counter() - start,
                       peak=memory.peak, replaced=list(output.replace), resumed=sorted(resumed))
    log.debug("wrote %s", summary)
    return summary


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
        bytes_fetched=the_plan.teacher.source.bytes_fetched if the_plan.teacher.source is not None else None,
        teacher_bytes=the_plan.teacher.total_bytes,
        unchanged=unchanged,
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


def _check_out(out: Path, teacher: Checkpoint, student: StudentSpec) -> None:
    """OUT must not be, be inside, or hold an input's folder: inputs stay untouched
    (also with --overwrite, which removes files of OUT)."""
    try:
        target = out.resolve()
    except (OSError, RuntimeError) as e:  # a name too long, a symlink loop
        raise SlicerError(f"{out}: cannot use as the output folder: {getattr(e, 'strerror', None) or e}") from e
    inputs = [("teacher", teacher.folder), ("template", student.folder)]
    if teacher.source is None:  # local shards: where they really are (symlinks resolved)
        inputs += [("teacher", Path(f).resolve().parent) for f in teacher.files]
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

        self.remote = the_plan.teacher.source  # a remote teacher: bytes fetched so far, next to its size
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
        if self.remote is not None:
            text += f", fetched {format_bytes(self.remote.bytes_fetched)} of {format_bytes(self.teacher_bytes)}"
        self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self.bar.close()
