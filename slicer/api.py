"""The Python API: ``plan`` (headers only) and ``shrink`` (plan, then write)."""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import manifest
from .checkpoint import Checkpoint
from .errors import SlicerError
from .memory import PeakSampler
from .plan import Options, Plan, build_plan, parse_size
from .student import StudentSpec, from_template

if TYPE_CHECKING:
    import torch

# Imported where used: planning needs none of the engine's modules (numpy, the writer).
DEFAULT_CHUNK_BYTES = 32 << 20  # engine.DEFAULT_CHUNK_BYTES

log = logging.getLogger("slicer")
ATTENTION_CHOICES = ("flat", "heads")


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
) -> Plan:
    """Plan a student without reading tensor data: sources, index sets, shards.

    The student comes from ``template`` (a checkpoint whose headers give names and
    shapes) or from a Hugging Face config: ``student_config`` (a config.json) and/or
    ``config_set`` (keys edited into the teacher's config.json, or into student_config).
    """
    ckpt, student, options = describe_student(teacher, template, student_config, config_set, method=method, seed=seed,
                                              layer_selection=layer_selection, attention=attention, exclude=exclude,
                                              dtype=dtype, max_shard_size=max_shard_size)
    return _plan(ckpt, student, options)


def describe_student(teacher, template, student_config, config_set, *, attention,
                     **options) -> tuple[Checkpoint, StudentSpec, Options]:
    """The teacher's headers, the student spec and the run's options, whichever route
    the student comes by."""
    if (template is None) == (student_config is None and not config_set):
        raise SlicerError("name the student: a --template checkpoint, or --student-config / --set (a Hugging Face config)")
    ckpt = Checkpoint.open(teacher, role="teacher")
    if template is not None:
        student = from_template(template)
        attention = attention or "flat"
    else:
        from .hf import from_config

        attention = attention or "heads"
        student = from_config(ckpt, student_config, config_set or {}, attention=attention,
                              dtype=options["dtype"], layer_selection=options["layer_selection"])
    if attention not in ATTENTION_CHOICES:
        raise SlicerError(f"unknown attention mode {attention!r} (choose from {', '.join(ATTENTION_CHOICES)})")
    exclude = tuple(options.pop("exclude"))
    size = parse_size(options.pop("max_shard_size"))
    return ckpt, student, Options(**options, exclude=exclude, max_shard_size=size, attention=attention)


def _plan(teacher: Checkpoint, student: StudentSpec, options: Options) -> Plan:
    return build_plan(teacher, student.tensors, options, student.make_selector(options), origin=student.origin)


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
) -> Summary:
    """Write the student selected from ``teacher`` into the folder ``out``.

    The student is named as for :func:`plan`. Everything is checked (paths, headers,
    shapes) before anything is written; on any error nothing is left in ``out`` and
    the inputs are untouched. ``resume=True`` continues a killed run into the same
    ``out``: completed shards whose size and sha256 check out are kept.
    """
    ckpt, student, options = describe_student(teacher, template, student_config, config_set, method=method, seed=seed,
                                              layer_selection=layer_selection, attention=attention, exclude=exclude,
                                              dtype=dtype, max_shard_size=max_shard_size)
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
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every student tensor, on ``device``, writing no file.

    For pipelines that feed a training or distillation job directly. The plan is made
    (and checked) before the first tensor is yielded; tensors come in teacher file
    order; memory in flight is one student tensor plus the chunk budget.
    """
    ckpt, student, options = describe_student(teacher, template, student_config, config_set, method=method, seed=seed,
                                              layer_selection=layer_selection, attention=attention, exclude=exclude,
                                              dtype=dtype, max_shard_size="5GB")
    from .backends import choose
    from .engine import Engine
    from .reader import TeacherReader

    the_plan = _plan(ckpt, student, options)
    chosen = choose(device, backend)
    engine = Engine(chosen.gather, chunk_bytes=chunk_bytes, device=chosen.device, arrays=chosen.arrays)
    with TeacherReader() as reader:
        for job in the_plan.jobs:
            yield job.name, engine.tensor(job, reader)


def run(teacher: Checkpoint, out, student: StudentSpec, options: Options, *, device="auto", backend="auto",
        overwrite=False, resume=False, progress=False, chunk_bytes=DEFAULT_CHUNK_BYTES) -> Summary:
    """Shared by every route to a student spec (template, config)."""
    from .backends import choose
    from .engine import Engine
    from .writer import INDEX_NAME, OutputDir, index_json

    start = time.perf_counter()
    the_plan = _plan(teacher, student, options)
    out = Path(out)
    _check_out(out, the_plan.teacher, student)
    chosen = choose(device, backend)
    output = OutputDir(out, overwrite=overwrite, resume=resume)
    engine = Engine(chosen.gather, chunk_bytes=chunk_bytes, device=chosen.device, arrays=chosen.arrays)
    record = manifest.build(the_plan)
    resumed = output.open(manifest.fingerprint(record))
    bar = _progress_bar(the_plan, progress)
    try:
        with PeakSampler() as memory:
            bytes_read = engine.run(the_plan, output, *(bar.callbacks() if bar else ()))
            extra = dict(student.files)
            if the_plan.is_sharded:
                shards = [(s.filename, [j.name for j in s.jobs]) for s in the_plan.shards]
                extra[INDEX_NAME] = index_json(shards, sum(j.nbytes for j in the_plan.jobs))
            for shard in record["shards"]:
                shard["sha256"] = output.done[shard["name"]]["sha256"]
            output.finish([s.filename for s in the_plan.shards], extra, record)
    except BaseException:
        output.abort()
        raise
    finally:
        if bar:
            bar.close()
    if resumed:
        log.info("resumed: kept %d completed shard(s): %s", len(resumed), ", ".join(sorted(resumed)))
    summary = Summary(
        out=str(out),
        tensors_written=len(the_plan.jobs),
        tensors_skipped=len(the_plan.skipped),
        tensors_excluded=len(the_plan.excluded),
        shards=len(the_plan.shards),
        bytes_read=bytes_read,
        bytes_written=the_plan.bytes_to_write,
        seconds=time.perf_counter() - start,
        peak_memory_bytes=memory.peak,
        backend=chosen.name,
        device=chosen.device,
    )
    log.debug("wrote %s", summary)
    return summary


def _check_out(out: Path, teacher: Checkpoint, student: StudentSpec) -> None:
    """OUT must not be, or be inside, an input's folder: inputs stay untouched."""
    target = out.resolve()
    for role, folder in (("teacher", teacher.folder), ("template", student.folder)):
        if folder is None:
            continue
        folder = folder.resolve()
        if target == folder or folder in target.parents:
            raise SlicerError(f"{out}: output folder is {'' if target == folder else 'inside '}the {role}'s folder {folder}; choose another OUT")


def _progress_bar(the_plan: Plan, enabled: bool) -> "_Progress | None":
    return _Progress(the_plan) if enabled else None


class _Progress:
    """A tqdm bar on stderr: bytes written, throughput, tensors done."""

    def __init__(self, the_plan: Plan):
        from tqdm import tqdm

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
        self.bar.set_postfix_str(f"{self.tensors}/{self.total_tensors} tensors", refresh=False)

    def close(self) -> None:
        self.bar.close()
