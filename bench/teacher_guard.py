"""What guarding the teacher costs: a clean run with the lease + mmap path (the default),
with the pread path (taken where no lease can be had), and, with ``--also DIR``, another
checkout's run (e.g. /work/main, before the guard), interleaved, whole processes.

    python bench/teacher_guard.py [--workdir DIR] [--repeats 3] [--also /work/main]

The teacher is bench/teachers.py's "llama" pair (7.77 GB -> 1.76 GB), built on first use.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from teachers import ensure_pair, teacher_dir, template_dir  # noqa: E402

RUN = ("import sys, slicer.io.reader; slicer.io.reader.USE_LEASES = {lease}\n"
       "from slicer.cli import main\nsys.exit(main(sys.argv[1:]))\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/slicer-bench"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--also", type=Path, action="append", default=[])
    args = ap.parse_args(argv)
    ensure_pair(args.workdir, "llama", log=lambda m: print(m, file=sys.stderr))
    teacher, template = teacher_dir(args.workdir, "llama"), template_dir(args.workdir, "llama") / "model.safetensors"
    out = args.workdir / "guard-bench-out"
    ways = {"lease + mmap (default)": (HERE.parent, RUN.format(lease=True)),
            "pread (no lease)": (HERE.parent, RUN.format(lease=False)),
            **{str(p): (p, "import sys\nfrom slicer.cli import main\nsys.exit(main(sys.argv[1:]))\n") for p in args.also}}
    times: dict[str, list[tuple[float, float, int]]] = {w: [] for w in ways}
    for rep in range(args.repeats + 1):  # the first round warms the page cache and is not counted
        for way, (root, code) in ways.items():
            shutil.rmtree(out, ignore_errors=True)
            env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
            t = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", code, "shrink", str(teacher), str(out), "--template", str(template),
                                "--quiet", "--json"], env=env, capture_output=True, text=True,
                               cwd=root)  # `-c` looks in the current folder before PYTHONPATH
            wall = time.perf_counter() - t
            if r.returncode:
                raise SystemExit(r.stderr)
            s = json.loads(r.stdout)
            if rep:
                times[way].append((wall, s["seconds"], s["peak_memory_bytes"]))
            print(f"[{rep}] {way}: {wall:.2f} s (run {s['seconds']:.2f} s, peak {s['peak_memory_bytes'] / 1e6:.0f} MB)",
                  file=sys.stderr)
    shutil.rmtree(out, ignore_errors=True)
    base = statistics.median(w for w, _, _ in times["lease + mmap (default)"])
    print("| way | whole process, s | in-run, s | x default | peak MB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for way, rows in times.items():
        wall = statistics.median(r[0] for r in rows)
        print(f"| {way} | {wall:.2f} | {statistics.median(r[1] for r in rows):.2f} | {wall / base:.2f} | "
              f"{max(r[2] for r in rows) / 1e6:.0f} |")
    print(f"\nmedian of {args.repeats} after one warm-up round; teacher {teacher}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
