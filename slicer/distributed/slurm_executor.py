"""Slurm through submitit: the shards as one job array (``--executor slurm``; the ``[slurm]`` extra).

``executor.map_array`` submits one array job whose elements are the shard tasks;
submitit's ``AutoExecutor`` picks Slurm where ``sbatch`` exists. Executor options
(``--executor-option KEY=VALUE``) go to ``update_parameters`` (``slurm_partition``,
``timeout_min``, ``slurm_array_parallelism``...), except ``cluster`` (``"local"``
runs the array as local processes: submitit's own test executor, used by our tests).
Logs and pickles go to ``submitit/`` in OUT's staging (removed once OUT is finished).
A failed element is not resubmitted: rerun with ``--resume`` to write the shards that
are missing (the recorded ones are kept).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import SlicerError
from .task import ShardTask, run_task

WAIT_S = 0.2


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise SlicerError("--executor slurm needs submitit: pip install 'weight-slicer[slurm]' "
                          "(or: pip install submitit)") from None
    return submitit


class SlurmRunner:
    def __init__(self, *, folder: Path, memory: int, cluster: str | None = None, **parameters):
        submitit = _import_submitit()
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        defaults = {"cpus_per_task": 1, "mem_gb": max(1, -(-memory // (1 << 30))), "timeout_min": 24 * 60,
                    "name": "slicer-shard"}
        try:
            self.executor.update_parameters(**{**defaults, **parameters})
        except (TypeError, ValueError) as e:
            raise SlicerError(f"--executor slurm: {e}") from e
        self.jobs: list = []

    def run(self, tasks: list[ShardTask]) -> Iterator[tuple[ShardTask, dict]]:
        if not tasks:
            return
        self.jobs = self.executor.map_array(run_task, tasks)
        waiting = dict(zip(self.jobs, tasks))
        while waiting:
            for job in [j for j in waiting if j.done()]:
                task = waiting.pop(job)
                try:
                    result = job.result()
                except Exception as e:  # noqa: BLE001 - submitit re-raises the job's error, or its own
                    message = str(e).strip().splitlines()
                    slicer_line = next((m for m in reversed(message) if "SlicerError:" in m), None)
                    if slicer_line is not None:
                        raise SlicerError(slicer_line.split("SlicerError:", 1)[1].strip()) from None
                    raise SlicerError(f"{', '.join(task.shards)}: the job {job.job_id} failed "
                                      f"({type(e).__name__}; its log: {job.paths.stderr})") from e
                yield task, result
            if waiting:
                time.sleep(WAIT_S)

    def cancel(self) -> None:
        for job in self.jobs:
            try:
                if not job.done():
                    job.cancel(check=False)
            except Exception:  # noqa: BLE001 - finished already
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(_done(j) for j in self.jobs):
            time.sleep(WAIT_S)
        self.jobs = []

    def close(self) -> None:
        pass


def _done(job) -> bool:
    try:
        return job.done()
    except Exception:  # noqa: BLE001
        return True
