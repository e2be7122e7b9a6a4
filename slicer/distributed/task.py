"""What one worker of a distributed run does: plan again, check the plan, write its shards.

A ``ShardTask`` is small and picklable (the inputs, never the plan): Ray and submitit
ship it to a worker, which reads the teacher itself (a shared path or a remote URL)
and writes into the staging folder on shared storage.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SlicerError


@dataclass(frozen=True)
class ShardTask:
    teacher: str
    inputs: dict  # the request's student fields (Request.student_fields), as the driver got them
    staging: str  # where the shards go: OUT's staging folder, on storage every worker shares
    shards: tuple[str, ...]  # the shard file names this task writes
    fingerprint: dict  # the driver's plan: the worker's must be the same
    chunk_bytes: int
    device: str = "auto"
    backend: str = "auto"
    env: dict = field(default_factory=dict)  # not used by the task; room for executors' bookkeeping


def run_task(task: ShardTask) -> dict:
    """Runs on a worker. Returns {"records": name -> record, "bytes_read", "bytes_fetched", "seconds"}."""
    from .. import job
    from ..plan.request import Request
    from ..io.writer import fingerprint
    from ..plan import manifest
    from ..run.memory import PeakSampler
    from .shards import plan_difference
    from .shards import write_shards

    start = time.perf_counter()
    ckpt, student, options = job.describe_student(task.teacher, Request.of(**task.inputs))
    the_plan = job.plan_student(ckpt, student, options)
    mine = fingerprint(manifest.build(the_plan))  # not output_files: a worker needs no tokenizer files
    if mine != task.fingerprint:
        raise SlicerError(f"{task.teacher}: this worker's plan is not the driver's ({plan_difference(task.fingerprint, mine)}); "
                          "every worker must see the same teacher files and inputs")
    with PeakSampler() as memory:
        records, bytes_read = write_shards(the_plan, Path(task.staging), task.shards, device=task.device,
                                           backend=task.backend, chunk_bytes=task.chunk_bytes)
    return {"records": records, "bytes_read": bytes_read, "bytes_fetched": the_plan.teacher.source.bytes_fetched,
            "seconds": time.perf_counter() - start, "peak_memory_bytes": memory.peak}
