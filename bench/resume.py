"""--resume after a kill at 60%, against a clean run of the same student, side by side.

For each repeat, interleaved: a clean ``slicer shrink`` into a fresh OUT (timed, whole
process); a run into another OUT that is SIGKILLed as soon as its staging record lists
completed shards holding >= 60% of the student's bytes (so it dies inside the next
shard, as a real kill would); then ``slicer shrink --resume`` into that OUT (timed,
whole process). The resumed student must equal the clean one (same manifest bytes:
every shard's sha256). Medians of the repeats, and the in-run seconds each process
reports (``--json``), so the fixed start-up cost shows separately.

``--also DIR`` runs the same for another checkout (e.g. /work/main: the code before
this change), interleaved with this one.

    python bench/resume.py [--workdir DIR] [--repeats 3] [--max-shard-size 100MB] [--also /work/main]

The teacher is bench/teachers.py's "llama" pair (7.77 GB, Llama-shaped; the student
1.76 GB), built on first use under WORKDIR (~9.5 GB of disk, plus ~2 GB per OUT).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from teachers import ensure_pair, teacher_dir, template_dir  # noqa: E402

STAGING, DONE = ".slicer-partial", "done.json"


def shrink_cmd(teacher: Path, template: Path, out: Path, shard: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "slicer", "shrink", str(teacher), str(out), "--template", str(template),
            "--max-shard-size", shard, "--quiet", "--json", *extra]


def env_for(root: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))


def _cwd(env: dict) -> str:
    """Run in the checkout itself: `python -m` looks in the current folder before PYTHONPATH."""
    return env["PYTHONPATH"]


def timed(cmd: list[str], env: dict) -> tuple[float, dict]:
    """(wall seconds, the --json summary plus "cpu": user + system seconds of the process,
    which a busy machine disturbs less than wall time)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=_cwd(env), capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    summary["cpu"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, summary


def kill_at(cmd: list[str], env: dict, out: Path, sizes: dict[str, int], fraction: float) -> list[str]:
    """Run cmd, SIGKILL it once completed shards hold >= fraction of the bytes; -> those shards."""
    total = sum(sizes.values())
    p = subprocess.Popen(cmd, env=env, cwd=_cwd(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done: list[str] = []
    while p.poll() is None:
        try:
            done = list(json.loads((out / STAGING / DONE).read_text()))
        except (OSError, ValueError):
            done = []
        if sum(sizes.get(n, 0) for n in done) >= fraction * total:
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.003)
    p.wait()
    if p.returncode != -signal.SIGKILL:
        raise SystemExit(f"the run to kill ended by itself ({p.returncode}): {p.stderr.read()}")
    return done


def plan_sizes(teacher: Path, template: Path, shard: str, env: dict) -> dict[str, int]:
    r = subprocess.run([sys.executable, "-m", "slicer", "plan", str(teacher), "--template", str(template),
                        "--max-shard-size", shard, "--json"], env=env, cwd=_cwd(env), capture_output=True, text=True,
                       check=True)
    return {s["name"]: s["size"] for s in json.loads(r.stdout)["shards"]}


def sha256_speed(path: Path) -> float:
    """GB/s of the sha256 a resume falls back to (a shard whose inode or ctime changed)."""
    h = hashlib.sha256()
    n = 0
    t = time.perf_counter()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
            n += len(block)
    return n / 1e9 / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/slicer-bench"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-shard-size", default="100MB")
    ap.add_argument("--fraction", type=float, default=0.6)
    ap.add_argument("--also", type=Path, action="append", default=[], help="another checkout to measure the same way")
    ap.add_argument("--keep", action="store_true", help="keep the outputs")
    args = ap.parse_args(argv)

    ensure_pair(args.workdir, "llama", log=lambda m: print(m, file=sys.stderr))
    teacher, template = teacher_dir(args.workdir, "llama"), template_dir(args.workdir, "llama") / "model.safetensors"
    roots = {"this": HERE.parent, **{str(p): p for p in args.also}}
    sizes = plan_sizes(teacher, template, args.max_shard_size, env_for(HERE.parent))
    print(f"teacher {teacher} ; student {sum(sizes.values()) / 1e9:.2f} GB in {len(sizes)} shards "
          f"(--max-shard-size {args.max_shard_size}); kill once >= {args.fraction:.0%} of the bytes are in complete shards",
          file=sys.stderr)
    rows: dict[str, dict[str, list[float]]] = {k: {"clean": [], "resume": [], "clean_run": [], "resume_run": [],
                                                   "clean_cpu": [], "resume_cpu": [], "ratio": [], "kept": []}
                                               for k in roots}
    for rep in range(args.repeats + 1):  # round 0 warms the page cache and is not counted
        for name, root in roots.items():
            env = env_for(root)
            work = args.workdir / "resume-bench"
            clean, resumed = work / "clean", work / "resumed"
            for d in (clean, resumed):
                shutil.rmtree(d, ignore_errors=True)
            wall, summary = timed(shrink_cmd(teacher, template, clean, args.max_shard_size), env)
            if rep == 0:
                continue
            rows[name]["clean"].append(wall)
            rows[name]["clean_run"].append(summary["seconds"])
            kept = kill_at(shrink_cmd(teacher, template, resumed, args.max_shard_size), env, resumed, sizes, args.fraction)
            wall_r, summary_r = timed(shrink_cmd(teacher, template, resumed, args.max_shard_size, "--resume"), env)
            rows[name]["resume"].append(wall_r)
            rows[name]["resume_run"].append(summary_r["seconds"])
            rows[name]["clean_cpu"].append(summary["cpu"])
            rows[name]["resume_cpu"].append(summary_r["cpu"])
            rows[name]["ratio"].append(wall_r / wall)
            rows[name]["kept"].append(sum(sizes[n] for n in kept) / sum(sizes.values()))
            same = (clean / "slicer_manifest.json").read_bytes() == (resumed / "slicer_manifest.json").read_bytes()
            if not same:
                raise SystemExit(f"{name}: the resumed student differs from the clean one")
            print(f"[{rep}/{args.repeats}] {name}: clean {wall:.2f} s (run {summary['seconds']:.2f}), "
                  f"killed with {len(kept)} shards complete ({rows[name]['kept'][-1]:.0%} of the bytes), "
                  f"resume {wall_r:.2f} s (run {summary_r['seconds']:.2f}): {wall_r / wall:.2f}x", file=sys.stderr)
    shard = args.workdir / "resume-bench" / "clean" / next(iter(sorted(sizes)))
    cold, warm = sha256_speed(shard), sha256_speed(shard)  # written with O_DIRECT: the first pass reads the disk
    print("| code | clean, s | resume, s | resume / clean (median of pairs) | CPU s: clean | CPU s: resume | CPU ratio "
          "| in-run s: clean | in-run s: resume | in-run ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        m = {k: statistics.median(v) for k, v in r.items()}
        print(f"| {name} | {m['clean']:.2f} | {m['resume']:.2f} | {m['ratio']:.2f} | {m['clean_cpu']:.2f} | "
              f"{m['resume_cpu']:.2f} | {m['resume_cpu'] / m['clean_cpu']:.2f} | {m['clean_run']:.2f} | "
              f"{m['resume_run']:.2f} | {m['resume_run'] / m['clean_run']:.2f} |")
    print(f"\nmedian of {args.repeats} after a warm-up round, whole processes (python start and imports included); sha256 of one kept "
          f"shard (the fallback check): {cold:.2f} GB/s from disk, {warm:.2f} GB/s from the page cache")
    if not args.keep:
        shutil.rmtree(args.workdir / "resume-bench", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
