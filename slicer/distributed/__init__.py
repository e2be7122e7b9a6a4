"""Beyond one machine: one task per output shard, on Ray or Slurm (submitit).

The driver plans (headers only), opens OUT as a one-process run does (lock, staging,
``--resume``), and hands each output shard not yet recorded to an executor as a
:class:`~slicer.distributed.task.ShardTask`. Each worker plans again from the same
inputs, checks the plan's fingerprint, reads the teacher itself and writes its shard
into OUT's staging folder (storage every worker shares). The driver records each
shard as its task returns (``done.json``: a shard recorded is never fetched again,
also by a later ``--resume``) and, once all are in, finishes OUT atomically.

Ray and submitit are optional (``[ray]``, ``[slurm]``) and imported only here, when a
run asks for them. Importance scoring stays one process: pass ``--scores`` (a file of
``slicer score`` on shared storage) rather than scoring on the fly in every worker.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from ..errors import Interrupted, SlicerError
from ..plan.request import Request
from .finish import FinishSummary, finish
from .shards import ShardsSummary, parse_shards
from .task import ShardTask, run_task

log = logging.getLogger("slicer")
EXECUTORS = ("local", "ray", "slurm")

__all__ = ["EXECUTORS", "FinishSummary", "ShardTask", "ShardsSummary", "finish", "parse_shards", "run_task",
           "shard_read_bytes", "shrink_distributed", "task_memory"]


def shrink_distributed(teacher, out, request: Request):
    """``shrink(..., shards=...)`` (a staging folder for ``finish``) or ``shrink(..., executor=...)``."""
    from .. import job

    inputs = request.student_fields()  # what every worker re-plans from
    shards, executor, executor_options = request.shards, request.executor, request.executor_options
    device, backend, chunk_bytes = request.device, request.backend, request.chunk_bytes
    overwrite, resume, progress = request.overwrite, request.resume, request.progress

    if executor not in (None, *EXECUTORS):
        raise SlicerError(f"unknown executor {executor!r} (choose from {', '.join(EXECUTORS)})")
    if shards is not None and executor not in (None, "local"):
        raise SlicerError("--shards writes some shards in this process; --executor runs every shard: pass one of them")
    if isinstance(shards, str):
        shards = parse_shards(shards)
    job.check_chunk_bytes(chunk_bytes)
    _refuse_scoring(inputs)
    ckpt, student, options = job.describe_student(teacher, request)
    the_plan = job.plan_student(ckpt, student, options)
    out = Path(out)
    job.check_out(out, the_plan.teacher, student)
    record, extra = job.output_files(the_plan, student)
    if shards is not None:
        if resume:
            raise SlicerError("--shards keeps the shards its staging folder recorded anyway; drop --resume")
        from .shards import write_staging

        return write_staging(the_plan, record, extra, out, shards, overwrite=overwrite, device=device,
                             backend=backend, chunk_bytes=chunk_bytes, progress=progress)
    return _drive(teacher, out, inputs, the_plan, record, extra, executor, dict(executor_options or {}),
                  device=device, backend=backend, overwrite=overwrite, resume=resume, progress=progress,
                  chunk_bytes=chunk_bytes)


def _refuse_scoring(inputs: dict) -> None:
    ranks = "importance" in (inputs.get("method"), inputs.get("layer_selection"))
    if ranks and inputs.get("scores") is None:
        raise SlicerError("importance scoring runs in one process: score first (slicer score TEACHER -o SCORES) and "
                          "pass --scores SCORES (on storage every worker reads) to a distributed run")


def _drive(teacher, out: Path, inputs: dict, the_plan, record: dict, extra: dict, executor: str, executor_options: dict,
           *, device, backend, overwrite, resume, progress, chunk_bytes):
    from ..job import Summary
    from ..io.writer import OutputDir, fingerprint

    start = time.perf_counter()
    fp = fingerprint(record)
    output = OutputDir(out, overwrite=overwrite, resume=resume)
    runner = None
    bar = None
    fetched = read = peak = 0
    tasks: list = []
    remote = the_plan.teacher.source.fetches
    try:
        resumed = output.open(fp, record["files"])
        if output.unchanged:
            return Summary(out=str(out), tensors_written=0, tensors_skipped=len(the_plan.skipped),
                           tensors_excluded=len(the_plan.excluded), shards=len(the_plan.shards), bytes_read=0,
                           bytes_written=0, seconds=time.perf_counter() - start, peak_memory_bytes=0,
                           backend=executor, device=device, teacher_bytes=the_plan.teacher.total_bytes, unchanged=True)
        # Largest first (teacher bytes each shard reads): tasks start in this order, so the long ones
        # do not come last on an otherwise idle cluster (the longest-processing-time rule).
        todo = sorted((s for s in the_plan.shards if s.filename not in output.done), key=shard_read_bytes, reverse=True)
        staging = str(output.staging.resolve())
        # Teacher as given: a URL, or a path every worker resolves the same (shared storage).
        source = teacher if remote or "://" in str(teacher) else str(Path(teacher).resolve())
        worker_inputs = _absolute_paths(inputs)
        tasks = [ShardTask(teacher=str(source), inputs=worker_inputs, staging=staging, shards=(s.filename,),
                           fingerprint=fp, chunk_bytes=chunk_bytes, device=device, backend=backend) for s in todo]
        if progress and todo:
            from .progress import StagingProgress

            bar = StagingProgress(output.staging, {s.filename: s.size for s in todo})
        runner = _runner(executor, executor_options, chunk_bytes, remote, output.staging) if tasks else None
        for task, result in runner.run(tasks) if runner is not None else ():
            for name, rec in result["records"].items():
                output.record(name, rec)
            read += result["bytes_read"]
            peak = max(peak, result.get("peak_memory_bytes") or 0)
            fetched += result.get("bytes_fetched") or 0
            log.debug("%s: %.1f s, %d bytes fetched", ", ".join(task.shards), result["seconds"],
                      result.get("bytes_fetched") or 0)
        missing = [s.filename for s in the_plan.shards if s.filename not in output.done]
        if missing:
            raise SlicerError(f"{out}: the workers did not write {', '.join(missing)} (internal error)")
        for shard in record["shards"]:
            shard["sha256"] = output.done[shard["name"]]["sha256"]
        if bar is not None:
            bar.close()
            bar = None
        output.finish([s.filename for s in the_plan.shards], extra, record)
    except KeyboardInterrupt:
        if runner is not None:
            runner.cancel()
        output.abort()
        raise Interrupted(output.outcome()) from None
    except BaseException:
        if runner is not None:
            runner.cancel()
        output.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
        if runner is not None:
            runner.close()
    if resumed:
        log.info("resumed: kept %d completed shard(s): %s", len(resumed), ", ".join(sorted(resumed)))
    header_bytes = the_plan.teacher.source.bytes_fetched if remote else 0
    return Summary(out=str(out), tensors_written=len(the_plan.jobs), tensors_skipped=len(the_plan.skipped),
                   tensors_excluded=len(the_plan.excluded), shards=len(the_plan.shards), bytes_read=read,
                   bytes_written=the_plan.bytes_to_write, seconds=time.perf_counter() - start, peak_memory_bytes=peak,
                   backend=executor, device=f"{len(tasks)} task{'s' * (len(tasks) != 1)}", bytes_fetched=fetched + header_bytes if remote else None,
                   teacher_bytes=the_plan.teacher.total_bytes, replaced=list(output.replace), resumed=sorted(resumed))


def shard_read_bytes(shard) -> int:
    """Teacher bytes a shard's task reads (the rows its tensors keep): its share of the work."""
    return sum(j.bytes_to_read for j in shard.jobs)


def _absolute_paths(inputs: dict) -> dict:
    """Local input files as absolute paths: a worker starts in another folder (or host)."""
    out = dict(inputs)
    for key in ("template", "student_config", "scores", "cache_dir"):
        value = out.get(key)
        if value is not None and "://" not in str(value):
            out[key] = str(Path(value).resolve())
    return out


def task_memory(chunk_bytes: int, remote: bool) -> int:
    """Bytes a worker needs: the engine's chunks in flight, the writer's blocks, a remote
    reader's fetch-ahead, and the interpreter with numpy (measured: about 300 MB)."""
    from ..job import PIPELINE_DEPTH
    from ..io.sink import BLOCK_BYTES, BLOCKS

    ahead = max(2 * chunk_bytes, 64 << 20) if remote else 0
    return PIPELINE_DEPTH * chunk_bytes + BLOCKS * BLOCK_BYTES + ahead + (384 << 20)


def _runner(executor: str, options: dict, chunk_bytes: int, remote: bool, staging: Path):
    if executor == "ray":
        from .ray_executor import RayRunner

        return RayRunner(memory=task_memory(chunk_bytes, remote), **options)
    if executor == "slurm":
        from .slurm_executor import SlurmRunner

        return SlurmRunner(folder=staging / "submitit", memory=task_memory(chunk_bytes, remote), **options)
    raise SlicerError(f"executor {executor!r} runs no tasks (internal error)")

