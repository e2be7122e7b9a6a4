"""Beyond one machine: --shards + finish, one Ray task per shard, submitit's job array.

Every distributed run must write the very bytes of the one-process run (manifest
included: the same teacher path or URL, the same options). One local Ray cluster
(``ray.init(num_cpus=2)``) serves every Ray test of this module; it is started on first
use and shut down after the module. The teacher and template are the remote tests'
(remote_fixtures.py): a local run of them is ``remote_root["local"]``, 300KB shards.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import slicer
from remote_fixtures import header_bytes, tree
from remote_server import Fault, RangeServer
from slicer.cli import main
from slicer.errors import Interrupted, SlicerError

SHARD = "300KB"


def shrink(teacher, out, template, **kw):
    if "://" in str(teacher):  # byte counts are compared: the fixed coalescing rule, not one that measures time
        kw.setdefault("remote", {"adaptive": False})
    return slicer.shrink(teacher, out, template=template, max_shard_size=SHARD, **kw)


def shard_count(remote_root) -> int:
    return len(remote_root["manifest"]["shards"])


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


# ----------------------------------------------------------------------------- --shards and finish

def test_plan_has_two_to_four_shards(remote_root):
    """The fixture's student splits into 2-4 shards: the split below is a real one."""
    assert 2 <= shard_count(remote_root) <= 4


def test_shards_in_separate_staging_folders_then_finish_equal_one_process_run(remote_root, tmp_path):
    n = shard_count(remote_root)
    stagings = []
    for k in range(1, n + 1):
        staging = tmp_path / f"part{k}"
        s = shrink(remote_root["teacher"], staging, remote_root["template"], shards=[k])
        assert s.written == [remote_root["manifest"]["shards"][k - 1]["name"]]
        assert sorted(p.name for p in staging.glob("*.safetensors")) == s.written  # only its own shard
        stagings.append(staging)
    out = tmp_path / "out"
    assert run_cli("finish", out, "--from", *reversed(stagings), "--quiet") == 0
    assert tree(out, manifest=True) == tree(remote_root["local"], manifest=True)
    assert not (out / ".slicer-partial").exists()


def test_rerun_into_a_staging_folder_keeps_its_recorded_shards(remote_root, tmp_path):
    staging = tmp_path / "part"
    first = shrink(remote_root["teacher"], staging, remote_root["template"], shards=[1])
    name = first.written[0]
    stamp = os.stat(staging / name).st_mtime_ns
    again = shrink(remote_root["teacher"], staging, remote_root["template"], shards=[1, 2])
    assert again.kept == [name] and name not in again.written
    assert os.stat(staging / name).st_mtime_ns == stamp  # not written again


def _stagings(remote_root, tmp_path, groups, **kw) -> list[Path]:
    out = []
    for i, shards in enumerate(groups):
        staging = tmp_path / f"s{i}"
        shrink(remote_root["teacher"], staging, remote_root["template"], shards=shards, **kw)
        out.append(staging)
    return out


def test_finish_refuses_shards_of_another_plan(remote_root, tmp_path, capsys):
    n = shard_count(remote_root)
    a = _stagings(remote_root, tmp_path, [[1]])
    staging_b = tmp_path / "other"
    shrink(remote_root["teacher"], staging_b, remote_root["template"], shards=list(range(2, n + 1)), method="random")
    out = tmp_path / "out"
    assert run_cli("finish", out, "--from", *a, staging_b) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("slicer: error: ") and "another plan" in err and "method" in err
    assert not out.exists()


def test_finish_refuses_missing_shards(remote_root, tmp_path, capsys):
    n = shard_count(remote_root)
    stagings = _stagings(remote_root, tmp_path, [[1]])
    out = tmp_path / "out"
    assert run_cli("finish", out, "--from", *stagings) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing shard" in err and f"--shards {','.join(map(str, range(2, n + 1)))}" in err
    assert not out.exists()


def test_finish_refuses_the_same_shard_twice(remote_root, tmp_path, capsys):
    n = shard_count(remote_root)
    stagings = _stagings(remote_root, tmp_path, [[1, 2], list(range(2, n + 1))])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run_cli("finish", out, "--from", *stagings, "--overwrite") == 2
    err = capsys.readouterr().err.strip()
    name = remote_root["manifest"]["shards"][1]["name"]
    assert err.count("\n") == 0 and f"{name}: the same shard is in" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # OUT as it was


def test_finish_refuses_a_shard_changed_after_it_was_recorded(remote_root, tmp_path, capsys):
    n = shard_count(remote_root)
    stagings = _stagings(remote_root, tmp_path, [list(range(1, n + 1))])
    name = remote_root["manifest"]["shards"][0]["name"]
    path = stagings[0] / name
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # same size, other bytes: only its sha256 tells
    path.write_bytes(bytes(data))
    assert run_cli("finish", tmp_path / "out", "--from", *stagings) == 2
    assert "not the shard its record describes" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shards_refuses_numbers_the_plan_does_not_have(remote_root, tmp_path, capsys):
    n = shard_count(remote_root)
    staging = tmp_path / "s"
    assert run_cli("shrink", remote_root["teacher"], staging, "--template", remote_root["template"],
                   "--max-shard-size", SHARD, "--shards", n + 1) == 2
    assert f"the plan has {n} shards" in capsys.readouterr().err
    assert not staging.exists()


def test_a_local_run_imports_neither_ray_nor_submitit(remote_root, tmp_path):
    code = ("import sys, slicer; slicer.shrink(sys.argv[1], sys.argv[2], template=sys.argv[3]); "
            "print(sorted(m for m in ('ray', 'submitit') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, str(remote_root["teacher"]), str(tmp_path / "out"),
                           str(remote_root["template"])], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- Ray

@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")  # loopback only: the cluster never uses the machine's own address
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_run_from_a_local_teacher_equals_one_process_run(ray_cluster, remote_root, tmp_path):
    out = tmp_path / "out"
    summary = shrink(remote_root["teacher"], out, remote_root["template"], executor="ray")
    assert summary.shards == shard_count(remote_root)
    assert tree(out, manifest=True) == tree(remote_root["local"], manifest=True)
    assert not (out / ".slicer-partial").exists()


def _one_process_remote(server, template, out) -> int:
    server.stats.reset()
    shrink(server.teacher_url, out, template)
    return server.stats.bytes_sent


def test_ray_run_from_the_range_server_equals_one_process_run(ray_cluster, remote_root, server, tmp_path):
    single = _one_process_remote(server, remote_root["template"], tmp_path / "single")
    server.stats.reset()
    out = tmp_path / "out"
    shrink(server.teacher_url, out, remote_root["template"], executor="ray")
    assert tree(out, manifest=True) == tree(tmp_path / "single", manifest=True)
    assert tree(out) == remote_root["local_tree"]
    # Each worker reads the headers again (its own plan); its rows are its shard's only.
    workers = shard_count(remote_root)
    assert server.stats.bytes_sent <= single + workers * header_bytes(server.teacher_dir)


def _kill_client(server: RangeServer, handler) -> bool:
    """SIGKILL the process on the other end of this request's connection (never the test's)."""
    import psutil

    host, port = handler.client_address[:2]
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and (conn.laddr.ip, conn.laddr.port) == (host, port) and conn.raddr \
                and conn.raddr.port == server.port and conn.pid not in (None, os.getpid()):
            os.kill(conn.pid, signal.SIGKILL)
            return True
    return False


def _kill_at_first_row(server: RangeServer, once: bool) -> list:
    """A fault that SIGKILLs the client asking for a tensor row (past the header) of a shard: the
    first such request only (``once``), or every one. Returns the list of shards a kill landed on."""
    headers = {p.name: 8 + int.from_bytes(p.read_bytes()[:8], "little") for p in server.teacher_dir.glob("*.safetensors")}
    killed = []

    def hook(target: Path, handler) -> None:
        rng = handler.headers.get("Range", "")
        start = int(rng.split("=")[1].split("-")[0]) if "=" in rng else 0
        if not (once and killed) and start >= headers.get(target.name, 1 << 62) and _kill_client(server, handler):
            killed.append(target.name)

    server.faults.append(Fault("hook", match=".safetensors", times=-1, hook=hook, pass_handler=True))
    return killed


def _killed_worker_is_retried(remote_root, server, tmp_path, executor: str, options: dict) -> None:
    """One worker SIGKILLed mid-shard: the retry gives the clean run's student, and only its own shard
    is fetched again."""
    n = shard_count(remote_root)
    per_shard = []  # what each shard alone fetches (headers included), in one process
    for k in range(1, n + 1):
        server.stats.reset()
        shrink(server.teacher_url, tmp_path / f"s{k}", remote_root["template"], shards=[k])
        per_shard.append(server.stats.bytes_sent)
    server.stats.reset()
    shrink(server.teacher_url, tmp_path / "clean", remote_root["template"], executor=executor, executor_options=options)
    clean = server.stats.bytes_sent

    killed = _kill_at_first_row(server, once=True)
    server.stats.reset()
    out = tmp_path / "out"
    shrink(server.teacher_url, out, remote_root["template"], executor=executor,
           executor_options={**options, "max_retries": 2})
    assert killed, "no worker was killed"
    assert tree(out, manifest=True) == tree(tmp_path / "clean", manifest=True)
    extra = server.stats.bytes_sent - clean
    # The killed task fetched part of its shard twice; no other shard was fetched again.
    assert 0 < extra <= max(per_shard), (extra, per_shard)


def test_ray_worker_killed_mid_shard_is_retried_and_other_shards_are_not_fetched_again(
        ray_cluster, remote_root, server, tmp_path):
    _killed_worker_is_retried(remote_root, server, tmp_path, "ray", {})


def test_ray_resume_over_the_finished_student_fetches_headers_only(ray_cluster, remote_root, server, tmp_path):
    """--resume over the same finished student: nothing is submitted, no row is fetched."""
    out = tmp_path / "out"
    shrink(server.teacher_url, out, remote_root["template"], executor="ray")
    server.stats.reset()
    slicer.plan(server.teacher_url, template=remote_root["template"], max_shard_size=SHARD)
    planning = server.stats.bytes_sent  # headers, index, config
    small = sum(p.stat().st_size for p in server.teacher_dir.iterdir() if p.suffix != ".safetensors")
    server.stats.reset()
    again = shrink(server.teacher_url, out, remote_root["template"], executor="ray", resume=True)
    assert again.unchanged
    assert server.stats.bytes_sent <= planning + small  # no row of any shard


def test_ray_resume_after_the_driver_died_fetches_no_recorded_shard(ray_cluster, remote_root, server, tmp_path,
                                                                     monkeypatch):
    """The driver dies after every task returned (its staging, done.json and lock as a killed
    process leaves them); --resume finishes OUT without fetching any shard's rows again."""
    from slicer.io.writer import OutputDir

    def die(self, *a, **k):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(OutputDir, "finish", die)
        m.setattr(OutputDir, "abort", lambda self: self._unlock())  # a killed driver cleans nothing up
        with pytest.raises(KeyboardInterrupt):
            shrink(server.teacher_url, out, remote_root["template"], executor="ray")
    done = json.loads((out / ".slicer-partial" / "done.json").read_text())
    assert len(done) == shard_count(remote_root)
    server.stats.reset()
    slicer.plan(server.teacher_url, template=remote_root["template"], max_shard_size=SHARD)
    planning = server.stats.bytes_sent
    small = sum(p.stat().st_size for p in server.teacher_dir.iterdir() if p.suffix != ".safetensors")
    server.stats.reset()
    summary = shrink(server.teacher_url, out, remote_root["template"], executor="ray", resume=True)
    assert sorted(summary.resumed) == sorted(done)
    assert server.stats.bytes_sent <= planning + small  # headers and small files: no shard's rows
    assert tree(out) == remote_root["local_tree"]


def test_ray_ctrl_c_cancels_the_tasks_and_leaves_out_as_it_was(ray_cluster, remote_root, server, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(remote_root["local"], out)
    before = tree(out, manifest=True)
    server.faults.append(Fault("delay", match=".safetensors", seconds=0.5, times=-1))
    staging = out / ".slicer-partial"

    def interrupt_once_running():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(staging.glob("*.incomplete")):
            time.sleep(0.05)
        import _thread

        _thread.interrupt_main()

    threading.Thread(target=interrupt_once_running, daemon=True).start()
    with pytest.raises(Interrupted) as e:
        shrink(server.teacher_url, out, remote_root["template"], executor="ray", overwrite=True)
    assert "previous student is intact" in str(e.value)
    asked = server.stats.requests
    time.sleep(1.5)  # a task that was not cancelled would go on fetching (a request per 0.5 s at most)
    assert server.stats.requests == asked
    assert tree(out, manifest=True) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


def test_importance_scoring_on_the_fly_is_refused_for_a_distributed_run(remote_root, tmp_path):
    with pytest.raises(SlicerError, match="slicer score"):
        shrink(remote_root["teacher"], tmp_path / "out", remote_root["template"], executor="ray",
               method="importance")
    assert not (tmp_path / "out").exists()


def test_one_progress_bar_counts_every_workers_bytes_in_the_shared_staging(tmp_path):
    from slicer.distributed.progress import StagingProgress

    (tmp_path / "a.safetensors").write_bytes(b"x" * 100)  # complete
    (tmp_path / "b.safetensors.incomplete").write_bytes(b"x" * 30)  # being written by another worker
    (tmp_path / "other.safetensors").write_bytes(b"x" * 999)  # not this run's
    bar = StagingProgress(tmp_path, {"a.safetensors": 100, "b.safetensors": 50, "c.safetensors": 70})
    try:
        assert bar.written() == 130
    finally:
        bar.close()
    assert bar.bar.n == 130 and bar.bar.total == 220


# ----------------------------------------------------------------------------- submitit

def test_submitit_local_executor_runs_the_same_path(remote_root, tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "out"
    shrink(remote_root["teacher"], out, remote_root["template"], executor="slurm",
           executor_options={"cluster": "local", "timeout_min": 10})
    assert tree(out, manifest=True) == tree(remote_root["local"], manifest=True)
    assert not (out / ".slicer-partial").exists()
    assert json.loads((out / "slicer_manifest.json").read_text())["shards"] == remote_root["manifest"]["shards"]


@pytest.fixture
def quick_verdicts(monkeypatch):
    """submitit waits up to 15 s (``Job._results_timeout_s``) for the result file of a job that ended
    without one, for a shared file system's latency; a killed local element never writes one, so
    each death cost the suite 15 s. Here the folder is local: 1 s is plenty."""
    submitit = pytest.importorskip("submitit")
    monkeypatch.setattr(submitit.core.core.Job, "_results_timeout_s", 1)


def test_a_slurm_element_killed_mid_shard_is_resubmitted_and_other_shards_are_not_fetched_again(
        remote_root, server, tmp_path, quick_verdicts):
    _killed_worker_is_retried(remote_root, server, tmp_path, "slurm", {"cluster": "local", "timeout_min": 10})


def test_a_slurm_element_that_keeps_dying_stops_the_run_after_its_retries(remote_root, server, tmp_path,
                                                                          quick_verdicts):
    _kill_at_first_row(server, once=False)  # every element dies at its first row
    out = tmp_path / "out"
    with pytest.raises(SlicerError, match=r"after 1 retry; its log: .*--resume"):
        shrink(server.teacher_url, out, remote_root["template"], executor="slurm",
               executor_options={"cluster": "local", "timeout_min": 10, "max_retries": 1})
    assert not out.exists()


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("extra, message", [
    (["--address", "127.0.0.1:1"], "--address and --executor-option are for --executor ray or slurm"),
    (["--executor", "slurm", "--address", "127.0.0.1:1"], "--address is for --executor ray"),
    (["--executor", "ray", "--shards", "1"], "--shards writes some shards in this process"),
    (["--executor", "ray", "--executor-option", "num_cpus"], "expected KEY=VALUE"),
    (["--shards", "2-1"], "shard numbers count from 1"),
], ids=["address-local", "address-slurm", "shards-and-executor", "bad-option", "bad-range"])
def test_distributed_flags_misused_are_one_line_errors(remote_root, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert run_cli("shrink", remote_root["teacher"], out, "--template", remote_root["template"], *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("slicer: error: ") and message in err
    assert not out.exists()


@pytest.mark.parametrize("executor, package", [("ray", "ray"), ("slurm", "submitit")])
def test_an_executor_not_installed_is_a_one_line_error(remote_root, tmp_path, capsys, monkeypatch, executor, package):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    out = tmp_path / "out"
    assert run_cli("shrink", remote_root["teacher"], out, "--template", remote_root["template"],
                   "--executor", executor) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"weight-slicer[{'ray' if executor == 'ray' else 'slurm'}]" in err
    assert not out.exists()
