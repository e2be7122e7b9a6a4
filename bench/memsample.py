"""Run a command as a subprocess and sample its anonymous memory while it runs.

Peak anonymous memory is the max over samples of the sum, over the child and its
descendants, of ``RssAnon + RssShmem`` from ``/proc/<pid>/status``: memory the
process owns, not page-cache pages of files it reads or maps (those show in RssFile
and are what a warm-cache run shares with the kernel). A thread in the parent samples
every ``interval`` seconds (20 ms by default), so a spike shorter than that can be
missed. As a cross-check, the peak resident set (file-backed pages included) is the
max over samples of the tree's summed ``VmHWM``; ``wait4`` gives the CPU times. (Not
``ru_maxrss``: a child inherits its parent's high-water mark through fork and exec.)

    python bench/memsample.py [--interval 0.02] -- CMD [ARGS...]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field


@dataclass
class RunResult:
    argv: list[str]
    returncode: int
    wall_s: float
    peak_anon_bytes: int  # max over samples of sum(RssAnon + RssShmem) over the process tree
    maxrss_bytes: int  # max over samples of sum(VmHWM) over the tree: peak RSS, file pages included
    user_s: float
    sys_s: float
    samples: int
    stdout_tail: str = ""
    stderr_tail: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _memory(pid: int) -> tuple[int, int]:
    """(RssAnon + RssShmem, VmHWM) of one process in bytes ((0, 0) if it is gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return 0, 0
    anon = hwm = 0
    for line in text.splitlines():
        if line.startswith(b"RssAnon:") or line.startswith(b"RssShmem:"):
            anon += int(line.split()[1]) * 1024
        elif line.startswith(b"VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return anon, hwm


def _children(pid: int) -> list[int]:
    """Direct children of pid, from /proc/<pid>/task/*/children (no full /proc scan)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def tree_memory(root: int) -> tuple[int, int]:
    """(anonymous memory, summed VmHWM) of root and all its descendants."""
    anon = hwm = 0
    todo, seen = [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        a, h = _memory(pid)
        anon, hwm = anon + a, hwm + h
        todo += _children(pid)
    return anon, hwm


class _Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak, self.peak_hwm, self.samples = 0, 0, 0
        self.stop = threading.Event()

    def run(self) -> None:
        # The first sample comes one interval in: before its exec, a (v)forked child
        # shows the parent's memory.
        while not self.stop.wait(self.interval):
            anon, hwm = tree_memory(self.pid)
            self.peak, self.peak_hwm = max(self.peak, anon), max(self.peak_hwm, hwm)
            self.samples += 1


def _tail(f, limit: int = 4000) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - limit))
    return f.read().decode(errors="replace")


def run(
    argv: list[str],
    *,
    interval: float = 0.02,
    stdout: str | None = None,
    cwd: str | None = None,
    env: dict | None = None,
) -> RunResult:
    """Run argv to completion, sampling its memory; stdout goes to the path `stdout` or is captured."""
    out_f = open(stdout, "wb") if stdout else tempfile.TemporaryFile()
    err_f = tempfile.TemporaryFile()
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out_f, stderr=err_f, stdin=subprocess.DEVNULL, cwd=cwd, env=env)
        sampler = _Sampler(proc.pid, interval)
        sampler.start()
        # Wait for exit without reaping, so the sampler never reads a recycled pid.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        return RunResult(
            argv=list(argv),
            returncode=proc.returncode,
            wall_s=wall,
            peak_anon_bytes=sampler.peak,
            maxrss_bytes=sampler.peak_hwm,
            user_s=ru.ru_utime,
            sys_s=ru.ru_stime,
            samples=sampler.samples,
            stdout_tail="" if stdout else _tail(out_f),
            stderr_tail=_tail(err_f),
        )
    finally:
        out_f.close()
        err_f.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("give a command after --")
    r = run(cmd, interval=args.interval)
    sys.stdout.write(r.stdout_tail)
    sys.stderr.write(r.stderr_tail)
    print(
        f"rc={r.returncode} wall={r.wall_s:.3f}s peak_anon={r.peak_anon_bytes / 1e6:.1f}MB "
        f"maxrss={r.maxrss_bytes / 1e6:.1f}MB user={r.user_s:.2f}s sys={r.sys_s:.2f}s samples={r.samples}",
        file=sys.stderr,
    )
    return r.returncode


if __name__ == "__main__":
    raise SystemExit(main())
