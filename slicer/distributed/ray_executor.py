"""Ray: one task per output shard (``--executor ray [--address ADDR]``; the ``[ray]`` extra).

Each task asks for ``num_cpus`` and a ``memory`` taken from the chunk budget (see
``task_memory``), so Ray places only as many on a node as it can hold, and has
``max_retries``: a task whose worker dies (a lost node, the OOM killer, a kill) runs
again from the start of its shard, which it rewrites whole. Errors of the run itself
(a SlicerError: a changed teacher, a full disk) are not retried: they would fail again.
Results come back as tasks finish, so the driver records each shard as soon as it is
complete. Ray is started (a local cluster) only when it is not initialized already and
no address is given, and shut down again at the end of the run if this run started it.
"""
from __future__ import annotations

from collections.abc import Iterator

from ..errors import SlicerError
from .task import ShardTask, run_task

WAIT_S = 0.2  # the driver wakes this often, so Ctrl-C is noticed


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SlicerError("--executor ray needs Ray: pip install 'weight-slicer[ray]' (or: pip install ray)") from None
    return ray


class RayRunner:
    def __init__(self, *, memory: int, address: str | None = None, num_cpus: float = 1, max_retries: int = 3,
                 runtime_env: dict | None = None):
        ray = self.ray = _import_ray()
        self._started = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise SlicerError(f"Ray: cannot connect to {address or 'a local cluster'}: {e}") from e
            self._started = True
        self.options = dict(num_cpus=num_cpus, memory=memory, max_retries=max_retries, retry_exceptions=False)
        self._refs: dict = {}

    def run(self, tasks: list[ShardTask]) -> Iterator[tuple[ShardTask, dict]]:
        ray = self.ray
        remote = ray.remote(run_task).options(name="slicer-shard", **self.options)
        self._refs = {remote.remote(t): t for t in tasks}
        pending = list(self._refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=WAIT_S)
            for ref in ready:
                task = self._refs[ref]
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, SlicerError):
                        raise SlicerError(str(cause)) from None
                    raise SlicerError(f"{', '.join(task.shards)}: the Ray task failed: {cause or e}") from e
                except ray.exceptions.RayError as e:  # the worker died more often than max_retries
                    raise SlicerError(f"{', '.join(task.shards)}: the Ray task was lost "
                                      f"({self.options['max_retries']} retries): {type(e).__name__}: "
                                      f"{str(e).splitlines()[0] if str(e) else ''}") from e
                yield task, result

    def cancel(self) -> None:
        """Stop every task still running (Ctrl-C, or another task failed) and wait for them to end,
        so that none writes into staging after the driver removes it."""
        ray = self.ray
        refs = list(self._refs)
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - finished already, or the cluster is gone
                pass
        if refs:
            try:
                ray.wait(refs, num_returns=len(refs), timeout=10)
            except Exception:  # noqa: BLE001
                pass
        self._refs = {}

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False
