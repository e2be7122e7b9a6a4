"""Slurm through submitit: the shards as one job array (``--executor slurm``; the ``[slurm]`` extra).

``executor.map_array`` submits one array job whose elements are the shard tasks;
submitit's ``AutoExecutor`` picks Slurm where ``sbatch`` exists. Executor options
(``--executor-option KEY=VALUE``) go to ``update_parameters`` (``slurm_partition``,
``timeout_min``, ``slurm_array_parallelism``...), except ``cluster`` (``"local"``
runs the array as local processes: submitit's own test executor, used by our tests).
Logs and pickles go to ``submitit/`` in OUT's staging (removed once OUT is finished).
An element that dies (a lost node, the OOM killer, a kill, a preemption) is resubmitted as a
job of its own, up to ``max_retries`` times (default 3, as Ray's tasks): it rewrites its shard
from the start, and no other shard is read again. A slicer error inside a task (a teacher that
changed, a full disk) is not retried: it is the run's one-line error. After the last retry,
``--resume`` writes the shards still missing (the recorded ones are kept).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import SlicerError
from .task import ShardTask, run_task

WAIT_S = 0.2
log = logging.getLogger("slicer")


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise SlicerError("--executor slurm needs submitit: pip install 'weight-slicer[slurm]' "
                          "(or: pip install submitit)") from None
    return submitit


class SlurmRunner:
    def __init__(self, *, folder: Path, memory: int, cluster: str | None = None, max_retries: int = 3, **parameters):
        submitit = _import_submitit()
        try:
            self.max_retries = int(max_retries)
        except (TypeError, ValueError):
            raise SlicerError(f"--executor slurm: max_retries must be a whole number, not {max_retries!r}") from None
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
        self.jobs = list(self.executor.map_array(run_task, tasks))
        waiting = dict(zip(self.jobs, tasks))
        attempts = {id(task): 0 for task in tasks}
        while waiting:
            for job in [j for j in waiting if j.done()]:
                task = waiting.pop(job)
                try:
                    result = job.result()
                except Exception as e:  # noqa: BLE001 - submitit re-raises the job's error, or its own
                    message = str(e).strip().splitlines()
                    slicer_line = next((m for m in reversed(message) if "SlicerError:" in m), None)
                    if slicer_line is not None:  # the task's own verdict: the same again on any node
                        raise SlicerError(slicer_line.split("SlicerError:", 1)[1].strip()) from None
                    if attempts[id(task)] < self.max_retries:
                        attempts[id(task)] += 1
                        log.warning("%s: the job %s died (%s); resubmitted (retry %d of %d)", ", ".join(task.shards),
                                    job.job_id, type(e).__name__, attempts[id(task)], self.max_retries)
                        retry = self.executor.submit(run_task, task)
                        self.jobs.append(retry)
                        waiting[retry] = task
                        continue
                    raise SlicerError(f"{', '.join(task.shards)}: the job {job.job_id} failed "
                                      f"({type(e).__name__}, after {self.max_retries} retr{'y' if self.max_retries == 1 else 'ies'}; its log: "
                                      f"{job.paths.stderr}); run the same command with --resume to write the "
                                      "shards still missing") from e
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
