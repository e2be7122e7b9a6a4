"""Two source trees of slicer side by side on the Llama-shaped pair, with both I/O floors.

For a before/after figure: ``python -m slicer shrink`` run from each tree (its own
folder as the working directory and on PYTHONPATH, so an installed copy never shadows
it), and the floors of bench/e2e.py (``cat`` of the teacher + ``dd`` of the student's
size, buffered and ``oflag=direct``), interleaved in rounds; medians and spread, and
the load average during the runs (the machine may be shared). Warm cache: the teacher
is read once before every measurement, the previous output deleted and synced, then a
``--settle`` pause.

    git worktree add /tmp/before <commit>   # or: git archive <commit> | tar -x -C /tmp/before
    python bench/compare_trees.py /tmp/before . [--workdir DIR] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import teachers  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs="+", type=Path, help="source trees (folders holding slicer/)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/slicer-bench"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--settle", type=float, default=3.0)
    args = ap.parse_args(argv)
    facts = teachers.ensure_pair(args.workdir, "llama")
    teacher, template = teachers.teacher_dir(args.workdir, "llama"), Path(facts["template"])
    files = [str(p) for p in teachers.checkpoint_files(teacher)]
    out = args.workdir / "llama" / "out-compare"
    size = template.stat().st_size
    ways: dict[str, object] = {str(t): t.resolve() for t in args.trees}
    ways.update({"floor": "", "floor-direct": "direct"})
    times: dict[str, list[float]] = {k: [] for k in ways}
    loads = []
    for r in range(args.rounds):
        for name, way in ways.items():
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
            time.sleep(args.settle)
            loads.append(os.getloadavg()[0])
            t0 = time.perf_counter()
            if isinstance(way, Path):
                subprocess.run([sys.executable, "-m", "slicer", "shrink", str(teacher), str(out), "--template",
                                str(template), "--overwrite", "--quiet"], cwd=way,
                               env=dict(os.environ, PYTHONPATH=str(way)), check=True)
            else:
                subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
                out.mkdir(parents=True, exist_ok=True)
                n = size + (-size % 4096 if way else 0)
                subprocess.run(["dd", "if=/dev/zero", f"of={out / 'x'}", "bs=16M", f"count={n}", "iflag=count_bytes",
                                *(["oflag=direct"] if way else [])], stderr=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.2f}" for k, v in times.items()), flush=True)
    shutil.rmtree(out, ignore_errors=True)
    print(f"load average during the runs: median {statistics.median(loads):.2f} ({min(loads):.2f}..{max(loads):.2f})")
    for name, ts in times.items():
        print(f"{name:<40} median {statistics.median(ts):6.2f} s  {min(ts):5.2f}..{max(ts):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
