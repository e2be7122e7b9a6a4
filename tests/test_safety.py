"""Never lose a user's files, never write a silently broken student.

- The data-safety matrix: every state OUT can be in x the flags (none, --overwrite,
  --resume, both), through the CLI and the Python API: exit code (or exception), the
  one-line message, and every file the rules keep is sha256-identical afterwards.
- An interrupt at every step of a run (plan, write, finish, each rename of the swap,
  after the manifest), in process and in real processes (SIGTERM, SIGKILL): OUT holds
  the old student or the complete new one, never neither, and the message says which.
- A teacher truncated, rewritten or touched during a run, with and without a lease.
- Every case that used to print a traceback: one line and exit 2 (130 for Ctrl-C).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

import helpers

import slicer
from slicer import cli, job
from slicer.io import reader, writer
from slicer.run import engine

SHARD = "10KB"  # the vit student is ~60 kB: 7 shards
FLAGS = {"none": [], "overwrite": ["--overwrite"], "resume": ["--resume"], "both": ["--overwrite", "--resume"]}

RUNNER = r"""
import os, signal, sys, time
import slicer.run.backends, slicer.io.reader, slicer.io.writer

env = os.environ
if env.get("T_KILL_AFTER_SHARDS"):  # SIGKILL once N shards are complete (and recorded)
    n_kill, done = int(env["T_KILL_AFTER_SHARDS"]), []
    record = slicer.io.writer.OutputDir.record_done
    def record_then_die(self, w):
        record(self, w)
        done.append(w.final.name)
        if len(done) == n_kill:
            os.kill(os.getpid(), signal.SIGKILL)
    slicer.io.writer.OutputDir.record_done = record_then_die
if env.get("T_SIGNAL_AT_MOVE"):  # "SIGTERM:5": the signal arrives just before the 5th rename of the swap
    name, k = env["T_SIGNAL_AT_MOVE"].split(":")
    calls, move = [], slicer.io.writer._move
    def move_with_signal(src, dst):
        calls.append(dst)
        if len(calls) == int(k):
            os.kill(os.getpid(), getattr(signal, name))
        move(src, dst)
    slicer.io.writer._move = move_with_signal
if env.get("T_GATE"):  # the first gather says so (T_READY), every gather waits for the gate file
    gate, ready = env["T_GATE"], env["T_READY"]
    def gating(gather):
        def gated(src, index, out):
            if not os.path.exists(ready):
                open(ready, "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.005)
            return gather(src, index, out)
        return gated
    slicer.run.backends.gather_torch = gating(slicer.run.backends.gather_torch)
    slicer.run.backends.gather_numpy = gating(slicer.run.backends.gather_numpy)  # the CPU default
if env.get("T_NO_LEASE"):  # as for another user's file or NFS: the pread path
    slicer.io.reader.USE_LEASES = False

from slicer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _runner(args, env, **hooks) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUNNER, *map(str, args)], env=dict(env, **hooks),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _tree(root: Path) -> dict:
    """Every entry under root (hidden ones included) -> sha256, or 'dir'."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def _main(argv: list[str]) -> int:
    """cli.main in process; argparse's refusals exit (SystemExit) as the console script would."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("slicer: error: "), stderr
    return lines[0]


def _args(e, teacher, out, *extra) -> list[str]:
    return [str(a) for a in ("shrink", teacher, out, "--template", e.template, "--max-shard-size", SHARD, *extra)]


@pytest.fixture(scope="module")
def e(ckpts, tmp_path_factory, subprocess_env):
    """A private vit teacher; the clean student, one made with other options, and two
    killed runs (SIGKILL after 2 shards): into an empty OUT, and --overwrite over the other."""
    root = tmp_path_factory.mktemp("safety")
    teacher = root / "teacher"
    shutil.copytree(ckpts.teacher("vit", "folder")[0], teacher)
    template, _ = ckpts.template("vit", "folder")
    ns = SimpleNamespace(root=root, teacher=teacher, template=template, env=subprocess_env)
    ns.clean, ns.other = root / "clean", root / "other"
    slicer.shrink(teacher, ns.clean, template=template, max_shard_size=SHARD)
    slicer.shrink(teacher, ns.other, template=template, max_shard_size=SHARD, method="consecutive",
                  attention="flat")  # consecutive rows of the fused qkv: asked for
    ns.student_files = sorted(os.listdir(ns.clean))
    assert len([n for n in ns.student_files if n.endswith(".safetensors")]) == 7
    assert sorted(os.listdir(ns.other)) == ns.student_files
    assert (ns.clean / "config.json").is_file()
    ns.killed, ns.killed_over = root / "killed", root / "killed_over"
    shutil.copytree(ns.other, ns.killed_over)
    runs = [_runner(_args(ns, teacher, ns.killed, "--quiet"), subprocess_env, T_KILL_AFTER_SHARDS="2"),
            _runner(_args(ns, teacher, ns.killed_over, "--quiet", "--overwrite"), subprocess_env, T_KILL_AFTER_SHARDS="2")]
    for p in runs:
        r = _finish(p)
        assert r.returncode == -signal.SIGKILL, r.stderr
    assert sorted(os.listdir(ns.killed)) == [writer.STAGING, writer.LOCK_NAME]
    return ns


def _new_student(e) -> dict:
    return _tree(e.clean)


# --------------------------------------------------------------------------- the data-safety matrix

def _state(name: str, e, d: Path) -> tuple[Path, Path]:
    """Build OUT in one of its states under d; -> (OUT, TEACHER)."""
    out = d / "out"
    if name == "missing":
        pass
    elif name == "empty":
        out.mkdir()
    elif name == "foreign":  # someone's model: nothing here was written by slicer
        out.mkdir()
        (out / "config.json").write_text('{"model_type": "bert"}\n')
        save_file({"w": torch.ones(3)}, str(out / "model.safetensors"))
        (out / "model-00002-of-00007.safetensors").write_bytes(b"their shard, same name as one of ours")
        (out / "pytorch_model.bin").write_bytes(b"\x80\x02their weights")
        (out / "notes.txt").write_text("keep me\n")
    elif name == "student":
        shutil.copytree(e.clean, out)
    elif name == "student_other":
        shutil.copytree(e.other, out)
        (out / "notes.txt").write_text("keep me\n")
    elif name == "killed":
        shutil.copytree(e.killed, out)
    elif name == "killed_over":
        shutil.copytree(e.killed_over, out)
    elif name == "user_files":
        out.mkdir()
        (out / "notes.txt").write_text("keep me\n")
        (out / "data").mkdir()
        (out / "data" / "table.csv").write_text("a,b\n1,2\n")
    elif name == "teacher_parent":  # OUT holds the teacher's folder and a user's files
        out.mkdir()
        shutil.copytree(e.teacher, out / "teacher")
        (out / "config.json").write_text('{"mine": true}\n')
        (out / "model-notes.safetensors").write_bytes(b"mine")
        return out, out / "teacher"
    else:
        raise KeyError(name)
    return out, e.teacher


def _expect(state: str, flags: str, e) -> dict:
    """What the rules say: kind ok / unchanged / refused, with its details."""
    o, r = "overwrite" in flags or flags == "both", "resume" in flags or flags == "both"
    new = set(e.student_files)

    def ok(replaced=(), warned=(), resumed=0):
        return {"kind": "ok", "replaced": set(replaced), "warned": list(warned), "resumed": resumed}

    def refused(fragment):
        return {"kind": "refused", "fragment": fragment}

    not_empty = "output folder is not empty"
    no_run = "cannot resume: OUT holds no interrupted slicer run"
    if state in ("missing", "empty"):
        return ok()
    if state == "foreign":
        if not o:
            return refused(no_run if r else not_empty)
        return ok({"config.json", "model-00002-of-00007.safetensors"}, ["model.safetensors", "pytorch_model.bin"])
    if state == "student":
        if r:
            return {"kind": "unchanged"}
        return ok(new) if o else refused(not_empty)
    if state == "student_other":
        if not o:
            return refused("cannot resume: OUT holds a finished student, and the options differ from the finished "
                           "student's (method: 'consecutive' -> 'uniform')" if r else not_empty)
        return ok(new)
    if state == "killed":
        return ok(resumed=2 if r else 0)
    if state == "killed_over":
        if not (o or r):
            return refused(not_empty)
        return ok(new, resumed=2 if r else 0)
    if state == "user_files":
        return ok() if o else refused(no_run if r else not_empty)
    if state == "teacher_parent":
        return refused("output folder holds the teacher's folder")
    raise KeyError(state)


STATES = ["missing", "empty", "foreign", "student", "student_other", "killed", "killed_over", "user_files",
          "teacher_parent"]


@pytest.mark.parametrize("route", ["cli", "api"])
@pytest.mark.parametrize("flags", list(FLAGS))
@pytest.mark.parametrize("state", STATES)
def test_out_state_by_flags_keeps_every_file_the_rules_keep(e, tmp_path, capfd, caplog, state, flags, route):
    out, teacher = _state(state, e, tmp_path)
    before = _tree(out)
    inputs = {p: _tree(p) for p in (teacher, e.template)}
    want = _expect(state, flags, e)
    capfd.readouterr()
    if route == "cli":
        rc = cli.main(_args(e, teacher, out, "--json", *FLAGS[flags]))
        stdout, stderr = capfd.readouterr()
        assert "Traceback" not in stderr
        summary = json.loads(stdout) if rc == 0 else None
        message = _one_error_line(stderr) if rc == 2 else None
    else:
        try:
            result = slicer.shrink(teacher, out, template=e.template, max_shard_size=SHARD,
                                   overwrite=flags in ("overwrite", "both"), resume=flags in ("resume", "both"))
        except slicer.SlicerError as err:
            rc, summary, message = 2, None, f"slicer: error: {err}"
            assert "\n" not in str(err)
        else:
            rc, summary, message = 0, result.as_dict(), None
    # In process the CLI's log lines reach pytest's handler, not stderr (a subprocess test checks stderr).
    warnings = [r.getMessage() for r in caplog.records if "weights slicer did not write" in r.getMessage()]
    assert {p: _tree(p) for p in inputs} == inputs, "an input changed"
    if want["kind"] == "refused":
        assert rc == 2, (rc, summary)
        assert want["fragment"] in message and message.startswith(f"slicer: error: {out}: "), message
        if "holds no" in want["fragment"] or "not empty" in want["fragment"] or "finished" in want["fragment"]:
            assert "--overwrite" in message
        # Nothing touched, nothing created (a killed run's stale lock file, slicer's own, may go).
        assert _tree(out) == {p: h for p, h in before.items() if p != writer.LOCK_NAME} or _tree(out) == before
        assert out.exists() == (state != "missing")
        return
    assert rc == 0, message
    if want["kind"] == "unchanged":
        assert summary["unchanged"] is True and summary["bytes_written"] == 0 and summary["replaced"] == []
        assert _tree(out) == before
        return
    after = _tree(out)
    user = {p: h for p, h in before.items() if not p.startswith((writer.STAGING, writer.LOCK_NAME))}
    for path, digest in user.items():  # every file the rules keep, byte for byte
        if path.split("/")[0] not in want["replaced"]:
            assert after.get(path) == digest, f"{path} was changed or removed"
    student = _new_student(e)
    assert {p: after.get(p) for p in student} == student  # the complete new student, bit for bit
    kept = {p for p in user if p.split("/")[0] not in want["replaced"]}
    assert set(after) == set(student) | kept, sorted(set(after) ^ (set(student) | kept))  # no staging, no lock
    assert summary["replaced"] == sorted(want["replaced"])
    assert len(summary["resumed"]) == want["resumed"]
    if want["warned"]:
        assert len(warnings) == 1 and ", ".join(want["warned"]) in warnings[0], warnings
    else:
        assert warnings == []


def test_overwrite_lists_what_it_replaced_in_the_summary(e, tmp_path):
    out, teacher = _state("foreign", e, tmp_path)
    r = subprocess.run([sys.executable, "-m", "slicer", *_args(e, teacher, out, "--overwrite")], capture_output=True,
                       text=True, env=e.env, timeout=120)
    assert r.returncode == 0, r.stderr
    stdout, stderr = r.stdout, r.stderr
    assert "replaced 2 files of OUT: config.json, model-00002-of-00007.safetensors" in stdout
    assert stderr.splitlines() == [f"slicer: {out}: keeping model.safetensors, pytorch_model.bin: weights slicer "
                                   "did not write (loaders may pick them up beside the student)"]


def test_resume_over_the_same_finished_student_says_so_and_touches_nothing(e, tmp_path, capfd):
    out, teacher = _state("student", e, tmp_path)
    stamps = {p: os.stat(out / p).st_mtime_ns for p in os.listdir(out)}
    capfd.readouterr()
    assert cli.main(_args(e, teacher, out, "--resume")) == 0
    stdout, _ = capfd.readouterr()
    assert stdout.strip() == (f"nothing to do: {out} already holds this student (same teacher, options and layout); "
                              "nothing was written")
    assert {p: os.stat(out / p).st_mtime_ns for p in os.listdir(out)} == stamps


def test_resume_over_a_damaged_finished_student_is_refused(e, tmp_path, capfd):
    out, teacher = _state("student", e, tmp_path)
    (out / "model-00003-of-00007.safetensors").unlink()
    before = _tree(out)
    capfd.readouterr()
    assert cli.main(_args(e, teacher, out, "--resume")) == 2
    line = _one_error_line(capfd.readouterr().err)
    assert "OUT holds this student, but model-00003-of-00007.safetensors is missing" in line and "--overwrite" in line
    assert _tree(out) == before


def test_resume_refuses_files_that_appeared_after_the_killed_run(e, tmp_path, capfd):
    out, teacher = _state("killed", e, tmp_path)
    (out / "notes.txt").write_text("new\n")
    before = _tree(out)
    capfd.readouterr()
    assert cli.main(_args(e, teacher, out, "--resume")) == 2
    line = _one_error_line(capfd.readouterr().err)
    assert "cannot resume: notes.txt appeared in OUT after the interrupted run began" in line and "--overwrite" in line
    assert _tree(out) == {p: h for p, h in before.items() if p != writer.LOCK_NAME}  # the killed run's stale lock may go
    assert cli.main(_args(e, teacher, out, "--resume", "--overwrite", "--quiet")) == 0
    assert (out / "notes.txt").read_text() == "new\n"


def test_a_folder_where_a_student_file_goes_is_refused(e, tmp_path, capfd):
    out = tmp_path / "out"
    (out / "config.json").mkdir(parents=True)
    (out / "config.json" / "x").write_text("x")
    before = _tree(out)
    capfd.readouterr()
    assert cli.main(_args(e, e.teacher, out, "--overwrite")) == 2
    assert "is a folder where the student's file config.json goes" in _one_error_line(capfd.readouterr().err)
    assert _tree(out) == before


@pytest.mark.parametrize("where", ["equal", "inside", "parent", "template_parent"])
def test_out_overlapping_an_input_folder_is_refused_even_with_overwrite(e, tmp_path, capfd, where):
    d = tmp_path / "d"
    teacher, template = d / "teacher", d / "template"
    shutil.copytree(e.teacher, teacher)
    shutil.copytree(e.template, template)
    out = {"equal": teacher, "inside": teacher / "sub", "parent": d, "template_parent": d}[where]
    if where == "template_parent":
        shutil.move(teacher, tmp_path / "teacher")
        teacher = tmp_path / "teacher"
    before = _tree(tmp_path)
    capfd.readouterr()
    rc = cli.main([str(a) for a in ("shrink", teacher, out, "--template", template, "--overwrite", "--resume")])
    assert rc == 2
    line = _one_error_line(capfd.readouterr().err)
    assert f"{out}: output folder " in line and ("teacher's folder" in line or "template's folder" in line), line
    assert _tree(tmp_path) == before


# --------------------------------------------------------------------------- interrupts at every step

def _moves_in_a_swap(e, tmp_path, over: bool) -> int:
    out = tmp_path / "count"
    if over:
        shutil.copytree(e.other, out)
    calls = []
    real = writer._move
    writer._move = lambda src, dst: (calls.append(dst), real(src, dst))
    try:
        slicer.shrink(e.teacher, out, template=e.template, max_shard_size=SHARD, overwrite=over)
    finally:
        writer._move = real
    return len(calls)


@pytest.mark.parametrize("over", [False, True], ids=["into-a-new-OUT", "overwrite-a-student"])
def test_an_interrupt_at_every_step_leaves_the_old_or_the_complete_new_student(e, tmp_path, capfd, monkeypatch, over):
    n_moves = _moves_in_a_swap(e, tmp_path, over)
    assert n_moves == (20 if over else 10)  # the old student's 10 files aside, the new 10 in
    steps = ["plan", "write", "finish"] + [f"move {k}" for k in range(1, n_moves + 1)] + ["signal during move 3",
                                                                                          "signal after the manifest"]
    for step in steps:
        out = tmp_path / step.replace(" ", "-")
        if over:
            shutil.copytree(e.other, out)
            (out / "notes.txt").write_text("keep me\n")
        before = _tree(out)
        new = {**_new_student(e), **({"notes.txt": before["notes.txt"]} if over else {})}
        with monkeypatch.context() as m:
            _inject(m, step)
            capfd.readouterr()
            rc = cli.main(_args(e, e.teacher, out, "--quiet", *(["--overwrite"] if over else [])))
        err = capfd.readouterr().err
        assert rc == 130 and "Traceback" not in err, (step, rc, err)
        if step == "plan":
            want, said = before, "nothing was written"
        elif step.startswith("signal"):  # a real SIGINT waits until the swap is done
            want, said = new, f"{out} holds the complete new student"
        elif step == "write":  # the shards completed before the 5th tensor stay for --resume
            staged = {k: v for k, v in _tree(out).items() if k.split("/")[0] == writer.STAGING}
            kept = json.loads((out / writer.STAGING / writer.DONE_NAME).read_text())
            assert kept and sorted(staged) == sorted([writer.STAGING, *(f"{writer.STAGING}/{n}" for n in
                                                      (writer.RUN_NAME, writer.DONE_NAME, *kept))]), (step, staged)
            want = {**before, **staged}
            said = (f"kept {len(kept)} of 7 shard(s) in {out / writer.STAGING} ({out} "
                    f"{'is otherwise as it was' if over else 'did not exist'} before the run); "
                    "run the same command with --resume to continue")
        else:
            want = before
            said = f"{out} is as it was before the run" + ("; its previous student is intact" if over else ": absent")
        assert err.splitlines() == [f"slicer: interrupted; {said}"], (step, err)
        assert _tree(out) == want, step  # old or new, and no staging (but a resumable one), no lock
        if step == "write":  # and --resume finishes it
            assert cli.main(_args(e, e.teacher, out, "--quiet", "--resume", *(["--overwrite"] if over else []))) == 0
            assert _tree(out) == new, step


def _inject(m, step: str) -> None:  # noqa: C901 - one branch per step
    if step == "plan":
        def plan(*a, **k):
            raise KeyboardInterrupt
        m.setattr(job, "_plan", plan)
    elif step == "write":  # once the first shard is complete (and recorded), in the middle of the second
        real_job, real_done, real_shard, done = engine.Engine._run_job, writer.OutputDir.record_done, \
            writer.OutputDir.shard, []

        def record_done(self, w):  # in the writer thread
            real_done(self, w)
            done.append(w.final.name)

        def shard(self, *a):  # the engine opens the next shard: the writer may still finish the last one
            opened.append(1)
            if len(opened) == 2:
                deadline = time.monotonic() + 30
                while not done and time.monotonic() < deadline:
                    time.sleep(0.01)
            return real_shard(self, *a)

        def run_job(self, *a):
            if done:
                raise KeyboardInterrupt
            return real_job(self, *a)
        opened: list = []
        m.setattr(writer.OutputDir, "record_done", record_done)
        m.setattr(writer.OutputDir, "shard", shard)
        m.setattr(engine.Engine, "_run_job", run_job)
    elif step == "finish":  # writing the manifest into staging, before any rename
        real_write = writer._write_atomic

        def write(path, data, sync=True):
            if path.name == writer.MANIFEST_NAME:
                raise KeyboardInterrupt
            return real_write(path, data, sync)
        m.setattr(writer, "_write_atomic", write)
    else:
        real_move, calls = writer._move, []
        k = int(step.split()[-1]) if step.startswith("move") else 3

        def move(src, dst):
            calls.append(dst)
            if step.startswith("move") and len(calls) == k:
                raise KeyboardInterrupt
            if step == "signal during move 3" and len(calls) == 3:
                signal.raise_signal(signal.SIGINT)
            real_move(src, dst)
            if step == "signal after the manifest" and dst.name == writer.MANIFEST_NAME:
                signal.raise_signal(signal.SIGINT)
        m.setattr(writer, "_move", move)


class _Killed(BaseException):
    """Stands for SIGKILL: nothing of the run's own cleanup runs."""


def test_a_run_killed_at_any_rename_is_undone_or_completed_by_the_next_run(e, tmp_path, monkeypatch):
    n_moves = _moves_in_a_swap(e, tmp_path, True)
    for k in range(1, n_moves + 2):  # before the k-th rename; n_moves + 1: right after the last one (the manifest)
        out = tmp_path / f"killed-{k}"
        shutil.copytree(e.other, out)
        (out / "notes.txt").write_text("keep me\n")
        before = _tree(out)
        new = {**_new_student(e), "notes.txt": before["notes.txt"]}
        real_move, calls = writer._move, []

        def move(src, dst):
            calls.append(dst)
            if len(calls) == k:
                raise _Killed
            real_move(src, dst)
            if k == n_moves + 1 and len(calls) == n_moves:
                raise _Killed

        def dead(self, *a):  # a dead process: its lock (flock) goes, its files stay
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1
        with monkeypatch.context() as m:
            m.setattr(writer, "_move", move)
            m.setattr(writer.OutputDir, "_roll_back", lambda self, placed, aside, extra: None)
            m.setattr(writer.OutputDir, "abort", dead)
            with pytest.raises(_Killed):
                slicer.shrink(e.teacher, out, template=e.template, max_shard_size=SHARD, overwrite=True)
        assert (out / writer.STAGING / writer.JOURNAL_NAME).exists()
        # The next run into OUT, even one that is then refused, first undoes or completes the swap.
        with pytest.raises(slicer.SlicerError, match="output folder is not empty"):
            slicer.shrink(e.teacher, out, template=e.template, max_shard_size=SHARD)
        now = {p: h for p, h in _tree(out).items() if not p.startswith((writer.STAGING, writer.LOCK_NAME))}
        assert now == (new if k > n_moves else before), k
        summary = slicer.shrink(e.teacher, out, template=e.template, max_shard_size=SHARD, resume=True)
        assert summary.unchanged == (k > n_moves)
        if k <= n_moves:
            assert len(summary.resumed) == 7  # every shard was complete: none is written again
        assert _tree(out) == new, k


def test_sigterm_during_the_swap_of_a_real_process_waits_for_it(e, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(e.other, out)
    (out / "notes.txt").write_text("keep me\n")
    r = _finish(_runner(_args(e, e.teacher, out, "--quiet", "--overwrite"), e.env, T_SIGNAL_AT_MOVE="SIGTERM:5"))
    assert r.returncode == 130, r.stderr
    assert r.stderr.splitlines() == [f"slicer: interrupted; {out} holds the complete new student"]
    assert _tree(out) == {**_new_student(e), "notes.txt": _tree(out)["notes.txt"]}
    assert (out / "notes.txt").read_text() == "keep me\n"


def test_sigkill_during_the_swap_of_a_real_process_then_resume(e, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(e.other, out)
    (out / "notes.txt").write_text("keep me\n")
    before = _tree(out)
    r = _finish(_runner(_args(e, e.teacher, out, "--quiet", "--overwrite"), e.env, T_SIGNAL_AT_MOVE="SIGKILL:14"))
    assert r.returncode == -signal.SIGKILL
    # half swapped: 10 old files aside, 3 new ones in
    assert not (out / writer.MANIFEST_NAME).exists() and (out / writer.STAGING / writer.JOURNAL_NAME).exists()
    r = subprocess.run([sys.executable, "-m", "slicer", *_args(e, e.teacher, out, "--quiet", "--resume")],
                       capture_output=True, text=True, env=e.env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"slicer: {out}: put back 10 file(s) of the previous student that an "
                                     "interrupted run had moved aside"]
    assert _tree(out) == {**_new_student(e), "notes.txt": before["notes.txt"]}


# --------------------------------------------------------------------------- the teacher changes during a run

@pytest.fixture
def own_teacher(e, tmp_path):
    t = tmp_path / "teacher"
    shutil.copytree(e.teacher, t)
    return t, t / "model.safetensors"


def _gated_run(e, teacher, out, tmp_path, **hooks):
    gate, ready = tmp_path / "gate", tmp_path / "ready"
    p = _runner(_args(e, teacher, out, "--quiet"), e.env, T_GATE=str(gate), T_READY=str(ready), **hooks)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.01)
    return p, gate


@pytest.mark.parametrize("change", ["truncate", "write in place"])
def test_a_teacher_changed_by_another_process_under_a_lease_stops_the_run(e, own_teacher, tmp_path, change):
    """The writer waits for our lease; we stop at the next chunk: no SIGBUS, one line."""
    teacher, f = own_teacher
    out = tmp_path / "out"
    size = f.stat().st_size
    p, gate = _gated_run(e, teacher, out, tmp_path)
    code = {"truncate": f"import os; os.truncate({str(f)!r}, {size // 2})",
            "write in place": f"import os; fd = os.open({str(f)!r}, os.O_WRONLY); os.pwrite(fd, bytes(64), {size - 64})"}
    other = subprocess.Popen([sys.executable, "-c", code[change]])
    time.sleep(0.3)
    assert other.poll() is None, "the other process was not held back by the lease"
    gate.touch()
    r = _finish(p)
    other.wait(timeout=60)
    assert r.returncode == 2, r.stderr
    line = _one_error_line(r.stderr)
    assert line == (f"slicer: error: {f}: another process opened the teacher file for writing during the run; "
                    "stopped before it could change what is read (nothing was written)")
    assert not out.exists()
    assert f.stat().st_size == (size // 2 if change == "truncate" else size)  # it went on once we let go


def test_a_teacher_truncated_without_a_lease_stops_the_run_without_sigbus(e, own_teacher, tmp_path):
    """No lease (another user's file, NFS): the file is read with pread, and a truncation is a short read."""
    teacher, f = own_teacher
    out = tmp_path / "out"
    size = f.stat().st_size
    p, gate = _gated_run(e, teacher, out, tmp_path, T_NO_LEASE="1")
    os.truncate(f, size // 2)  # while a chunk of it waits at the gate
    gate.touch()
    r = _finish(p)
    assert r.returncode == 2, r.stderr  # not -SIGBUS
    line = _one_error_line(r.stderr)
    assert line.startswith(f"slicer: error: {f}: teacher file ") and (
        f"changed during the run (size {size} -> {size // 2} bytes)" in line or "ended while reading" in line), line
    assert not out.exists()


def test_a_teacher_touched_during_a_run_stops_it(e, own_teacher, tmp_path, monkeypatch):
    teacher, f = own_teacher
    out = tmp_path / "out"
    record = writer.OutputDir.record_done

    def touch_after_first(self, w):
        record(self, w)
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    monkeypatch.setattr(writer.OutputDir, "record_done", touch_after_first)
    with pytest.raises(slicer.SlicerError) as err:
        slicer.shrink(teacher, out, template=e.template, max_shard_size=SHARD)
    assert str(err.value) == (f"{f}: teacher file changed during the run (modified: its modification time changed); "
                              "nothing was written")
    assert not out.exists()


def test_a_teacher_changed_between_planning_and_reading_is_refused(e, own_teacher, tmp_path, monkeypatch):
    teacher, f = own_teacher
    run = engine.Engine.run

    def grow_then_run(self, plan, *a, **k):
        with open(f, "ab") as fh:
            fh.write(b"\0")
        return run(self, plan, *a, **k)
    monkeypatch.setattr(engine.Engine, "run", grow_then_run)
    size = f.stat().st_size
    with pytest.raises(slicer.SlicerError) as err:
        slicer.shrink(teacher, tmp_path / "out", template=e.template, max_shard_size=SHARD)
    assert str(err.value) == (f"{f}: teacher file changed since its header was read (size {size} -> {size + 1} bytes); "
                              "nothing was written, run again")
    assert not (tmp_path / "out").exists()


def test_a_teacher_truncated_in_process_without_a_lease_is_one_error(e, own_teacher, tmp_path, monkeypatch):
    teacher, f = own_teacher
    monkeypatch.setattr(reader, "USE_LEASES", False)
    record = writer.OutputDir.record_done
    size = f.stat().st_size

    def truncate_after_first(self, w):
        record(self, w)
        os.truncate(f, size // 3)
    monkeypatch.setattr(writer.OutputDir, "record_done", truncate_after_first)
    with pytest.raises(slicer.SlicerError) as err:
        slicer.shrink(teacher, tmp_path / "out", template=e.template, max_shard_size=SHARD)
    assert str(err.value).startswith(f"{f}: teacher file ") and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_the_pread_path_writes_the_same_student(e, tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "USE_LEASES", False)
    slicer.shrink(e.teacher, tmp_path / "out", template=e.template, max_shard_size=SHARD, chunk_bytes=1000)
    assert _tree(tmp_path / "out") == _new_student(e)


@pytest.mark.parametrize("method", ["uniform", "consecutive"])
def test_the_pread_path_reads_only_kept_rows_and_still_matches_the_reference(tmp_path, monkeypatch, method):
    monkeypatch.setattr(reader, "USE_LEASES", False)
    gen = torch.Generator().manual_seed(5)
    teacher = {"w": torch.randn(9, 2048, generator=gen), "v": torch.randn(7, 3, 1024, generator=gen)}  # 8 kB, 12 kB rows
    shapes = {"w": (4, 1024), "v": (3, 3, 512)}
    (tmp_path / "in").mkdir()
    save_file(teacher, str(tmp_path / "in" / "t.safetensors"))
    save_file({n: torch.zeros(sh) for n, sh in shapes.items()}, str(tmp_path / "in" / "s.safetensors"))
    slicer.shrink(tmp_path / "in" / "t.safetensors", tmp_path / "out", template=tmp_path / "in" / "s.safetensors",
                  method=method, chunk_bytes=3 * 8192)
    got, _ = helpers.read_output(tmp_path / "out")
    helpers.assert_state_bit_equal(got, helpers.reference_student(teacher, shapes, method))


def test_a_lease_is_taken_and_released(e, tmp_path):
    import fcntl

    f = e.teacher / "model.safetensors"
    plan = slicer.plan(e.teacher, template=e.template)
    with reader.TeacherReader(plan.teacher.stamps) as r:
        fd = r.fd(f)
        assert fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_RDLCK
    fd = os.open(f, os.O_WRONLY | os.O_NONBLOCK)  # would fail with EAGAIN while a lease were held
    os.close(fd)


# --------------------------------------------------------------------------- cases that used to be tracebacks

@pytest.mark.parametrize("value,said", [("0", "0 MB: give at least 1"), ("-1", "-1 MB: give at least 1"),
                                        ("1.5", "'1.5' is not a whole number of MB"),
                                        ("100000000000", "is too large: 3 chunks in flight need more than half")])
def test_bad_chunk_mb_is_one_line(e, tmp_path, capfd, value, said):
    capfd.readouterr()
    assert _main(_args(e, e.teacher, tmp_path / "out", "--chunk-mb", value)) == 2
    assert said in _one_error_line(capfd.readouterr().err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("chunk_bytes", [0, -1, True, 10**15, 2.5])
def test_bad_chunk_bytes_in_the_api_raise_slicer_error(e, tmp_path, chunk_bytes):
    with pytest.raises(slicer.SlicerError, match="chunk size"):
        slicer.shrink(e.teacher, tmp_path / "out", template=e.template, chunk_bytes=chunk_bytes)
    with pytest.raises(slicer.SlicerError, match="chunk size"):
        next(slicer.stream(e.teacher, template=e.template, chunk_bytes=chunk_bytes))
    assert not (tmp_path / "out").exists()


def test_tensor_names_with_unicode_digits_are_plain_names(tmp_path):
    gen = torch.Generator().manual_seed(3)
    teacher = {"layers.0.w": torch.randn(6, 4, generator=gen), "layers.1.w": torch.randn(6, 4, generator=gen),
               "layers.².w": torch.randn(6, 4, generator=gen), "blocks.٣.w": torch.randn(4, generator=gen)}
    shapes = {"layers.0.w": (3, 2), "layers.².w": (3, 4), "blocks.٣.w": (2,)}
    (tmp_path / "in").mkdir()
    save_file(teacher, str(tmp_path / "in" / "t.safetensors"))
    save_file({n: torch.zeros(s) for n, s in shapes.items()}, str(tmp_path / "in" / "s.safetensors"))
    slicer.shrink(tmp_path / "in" / "t.safetensors", tmp_path / "out", template=tmp_path / "in" / "s.safetensors")
    got, _ = helpers.read_output(tmp_path / "out")
    helpers.assert_state_bit_equal(got, helpers.reference_student(teacher, shapes))


def test_an_out_name_over_255_characters_is_one_line(e, tmp_path, capfd):
    out = tmp_path / ("x" * 300)
    capfd.readouterr()
    assert cli.main(_args(e, e.teacher, out)) == 2
    assert "File name too long" in _one_error_line(capfd.readouterr().err)
    with pytest.raises(slicer.SlicerError, match="File name too long"):
        slicer.shrink(e.teacher, out / "deeper", template=e.template)


def test_stdout_on_a_full_device_is_one_line_after_the_student_is_written(e, tmp_path):
    out = tmp_path / "out"
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "slicer", *_args(e, e.teacher, out)], stdout=full,
                           stderr=subprocess.PIPE, text=True, env=e.env, timeout=120)
    assert r.returncode == 2
    assert _one_error_line(r.stderr) == ("slicer: error: cannot write to stdout: No space left on device "
                                         f"(the student in {out} is complete)")
    assert _tree(out) == _new_student(e)


def test_closed_stderr_gets_no_traceback_and_no_file_takes_its_place(e, tmp_path):
    def closed_stderr():
        os.close(2)
    runs = [subprocess.Popen([sys.executable, "-m", "slicer", *args], stdout=subprocess.PIPE, text=True, env=e.env,
                             preexec_fn=closed_stderr)
            for args in (_args(e, e.teacher, tmp_path / "out"),
                         ["shrink", str(e.teacher), str(tmp_path / "o2"), "--template", str(tmp_path / "missing")])]
    (ok, ok_out), (bad, bad_out) = [(p, p.communicate(timeout=120)[0]) for p in runs]
    assert ok.returncode == 0 and ok_out.startswith("wrote ")
    assert _tree(tmp_path / "out") == _new_student(e)  # no log line went into a shard on fd 2
    assert bad.returncode == 2 and bad_out == ""  # the error line is not printed on stdout instead


def test_bench_output_into_a_missing_folder_is_refused_before_running(tmp_path, capfd):
    started = time.monotonic()
    for target, said in ((tmp_path / "missing" / "b.json", "does not exist"), (tmp_path, "is a folder")):
        capfd.readouterr()
        assert cli.main(["bench", "--quick", "-o", str(target)]) == 2
        assert said in _one_error_line(capfd.readouterr().err)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("keep", ["file", "read_only", "not_empty"])
def test_demo_keep_refuses_a_file_a_read_only_path_and_a_non_empty_folder(tmp_path, capfd, keep):
    target = {"file": tmp_path / "a-file", "read_only": Path("/proc/slicer-demo"), "not_empty": tmp_path / "d"}[keep]
    if keep == "file":
        target.write_text("mine\n")
    if keep == "not_empty":
        target.mkdir()
        (target / "mine.txt").write_text("mine\n")
    before = _tree(tmp_path)
    capfd.readouterr()
    assert cli.main(["demo", "--keep", str(target), "--quiet"]) == 2
    line = _one_error_line(capfd.readouterr().err)
    assert line.startswith(f"slicer: error: {target}") and {"file": "not a folder", "read_only": "cannot",
                                                            "not_empty": "--overwrite"}[keep] in line, line
    assert _tree(tmp_path) == before


def test_demo_keep_overwrite_replaces_only_the_demos_files(tmp_path, capfd):
    d = tmp_path / "d"
    d.mkdir()
    (d / "mine.txt").write_text("mine\n")
    assert cli.main(["demo", "--keep", str(d), "--overwrite", "--quiet"]) == 0
    assert cli.main(["demo", "--keep", str(d), "--overwrite", "--quiet"]) == 0  # again, over its own files
    assert (d / "mine.txt").read_text() == "mine\n"
    assert slicer.verify(d / "student", teacher=d / "teacher").ok


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("case", ["teacher_fifo", "template_fifo", "index_fifo", "fifo_in_teacher_folder",
                                  "template_socket", "teacher_device", "shard_fifo"])
def test_inputs_that_are_not_regular_files_are_refused_at_once(e, tmp_path, capfd, case):
    teacher, template = e.teacher, e.template
    sock = None
    if case == "teacher_fifo":
        teacher = _fifo(tmp_path / "t.safetensors")
    elif case == "template_fifo":
        template = _fifo(tmp_path / "s.safetensors")
    elif case == "index_fifo":
        teacher = _fifo(tmp_path / "model.safetensors.index.json")
    elif case == "fifo_in_teacher_folder":
        teacher = tmp_path / "t"
        teacher.mkdir()
        _fifo(teacher / "weights.safetensors")
    elif case == "template_socket":
        template = tmp_path / "s.safetensors"
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(template))
    elif case == "teacher_device":
        teacher = Path("/dev/zero")
    elif case == "shard_fifo":
        teacher = tmp_path / "t"
        teacher.mkdir()
        _fifo(teacher / "a.safetensors")
        (teacher / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "a.safetensors"}}))
    old = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("hung on a FIFO")))
    signal.alarm(20)
    try:
        capfd.readouterr()
        rc = cli.main([str(a) for a in ("shrink", teacher, tmp_path / "out", "--template", template)])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        if sock is not None:
            sock.close()
    assert rc == 2
    line = _one_error_line(capfd.readouterr().err)
    assert any(k in line for k in ("a FIFO", "a socket", "a character device")), line
    assert not (tmp_path / "out").exists()


def test_a_student_config_fifo_is_refused(e, tmp_path, capfd):
    pytest.importorskip("transformers")
    fifo = _fifo(tmp_path / "config.json")
    capfd.readouterr()
    rc = cli.main(["shrink", str(e.teacher), str(tmp_path / "out"), "--student-config", str(fifo)])
    assert rc == 2
    assert "student config is a FIFO" in _one_error_line(capfd.readouterr().err)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from slicer.cli.demo import llama_config, llama_shapes, write_checkpoint

    dims = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=128)
    d = tmp_path_factory.mktemp("tiny-llama") / "teacher"
    write_checkpoint(d, llama_shapes(**dims), llama_config(**dims))
    return d


@pytest.mark.parametrize("edit", ["model_type=gpt2", 'architectures=["GPT2LMHeadModel"]',
                                  'architectures=["MistralForCausalLM"]'])
def test_an_architecture_change_by_set_is_refused(tiny_llama, tmp_path, capfd, edit):
    pytest.importorskip("transformers")
    capfd.readouterr()
    rc = cli.main(["shrink", str(tiny_llama), str(tmp_path / "out"), "--set", edit, "--set", "hidden_size=32"])
    assert rc == 2
    line = _one_error_line(capfd.readouterr().err)
    assert f"--set {edit.split('=')[0]}=" in line and "changing the architecture" in line, line
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- Ctrl-C at any moment

EARLY = r"""
import sys
import slicer.cli.app
ensure = slicer.cli.app._ensure_std_fds
def ready():  # main's first statement: from here on every moment is slicer's
    print("ready", flush=True)
    ensure()
slicer.cli.app._ensure_std_fds = ready
sys.argv[0] = "slicer"
slicer.cli.app.entry()  # as the console script runs it
"""


def test_ctrl_c_at_any_moment_of_main_is_one_line(e, tmp_path):
    delays = [0, 0.01, 0.05, 0.15, 0.4]  # parsing; planning; writing; finishing; shutting down
    procs = []
    for i, _ in enumerate(delays):
        procs.append(subprocess.Popen([sys.executable, "-c", EARLY, *_args(e, e.teacher, tmp_path / f"o{i}", "--quiet")],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e.env))
    for p, delay in zip(procs, delays):
        assert p.stdout.readline() == "ready\n"
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
    for i, p in enumerate(procs):
        _, err = p.communicate(timeout=120)
        assert "Traceback" not in err, (delays[i], p.returncode, err)
        assert p.returncode in (0, 130), (delays[i], p.returncode, err)
        out = tmp_path / f"o{i}"
        if p.returncode == 130:
            assert len(err.splitlines()) == 1 and err.startswith("slicer: interrupted; "), err
            if err.rstrip().endswith(f"{out} holds the complete new student"):
                assert _tree(out) == _new_student(e)
            elif err.startswith("slicer: interrupted; kept "):  # completed shards wait for --resume
                assert os.listdir(out) == [writer.STAGING] and "--resume" in err, (delays[i], err, _tree(out))
                assert cli.main(_args(e, e.teacher, out, "--quiet", "--resume")) == 0
                assert _tree(out) == _new_student(e)
            else:
                assert not out.exists(), (delays[i], err, _tree(out))
        else:  # done before the signal, or it came while Python shut down: ignored then
            assert err == "" and _tree(out) == _new_student(e), (delays[i], p.returncode, err)


def test_ctrl_c_while_python_m_slicer_starts_is_one_line(e, tmp_path):
    eager = subprocess.run([sys.executable, "-c", "import sys, slicer; print('torch' in sys.modules)"],
                           capture_output=True, text=True, env=e.env).stdout.strip()
    if eager == "True":
        pytest.skip("`import slicer` imports torch (~1 s) before the CLI runs: Ctrl-C there is Python's traceback "
                    "until the package imports lazily")
    procs = []
    for i, delay in enumerate([0.02, 0.1, 0.3, 0.6]):
        p = subprocess.Popen([sys.executable, "-m", "slicer", *_args(e, e.teacher, tmp_path / f"o{i}", "--quiet")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e.env)
        procs.append((p, time.monotonic() + delay))
    for p, at in procs:
        time.sleep(max(0.0, at - time.monotonic()))
        p.send_signal(signal.SIGINT)
    for p, _ in procs:
        _, err = p.communicate(timeout=120)
        if p.returncode == -signal.SIGINT or "Fatal Python error: init_" in err or "_get_module_details" in err:
            # The signal came while Python itself started (before its handler; in site's .pth
            # imports; or while runpy imports the package, before slicer's __main__ runs):
            # `import slicer` being light (~40 ms to the CLI) makes that likely for the
            # earliest signal. From __main__ on it is one line.
            continue
        assert "Traceback" not in err and p.returncode in (0, 130), (p.returncode, err)


@pytest.mark.parametrize("where", ["job summary", "printed summary"])
def test_ctrl_c_once_the_student_is_in_place_says_it_is_complete(e, tmp_path, monkeypatch, capsys, where):
    """A Ctrl-C after the swap (while the summary is built or printed) is not 'nothing was written':
    OUT holds the complete new student, and the one line says so."""
    from slicer.cli import app

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    if where == "job summary":
        monkeypatch.setattr(job, "_summary", interrupt)
    else:
        monkeypatch.setattr(app, "_print_summary", interrupt)
    out = tmp_path / "out"
    assert cli.main(_args(e, e.teacher, out, "--quiet")) == 130
    assert capsys.readouterr().err.strip() == f"slicer: interrupted; {out} holds the complete new student"
    assert _tree(out) == _new_student(e)
