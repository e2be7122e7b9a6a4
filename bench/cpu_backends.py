"""The CPU backends side by side: numpy (the default) against torch, on the Llama-shaped pair.

Two measurements, interleaved rounds, medians with spread (the machine may be shared):

  run      in one process with torch already imported, ``slicer.shrink(...,
           backend=B)`` timed alone: the gather paths compared without any import;
  process  ``python -m slicer shrink ... --backend B`` as a whole process, what a user
           waits for (torch's import included where the backend needs it).

Before every measurement the teacher is read once with ``cat`` (warm cache) and the
previous output is deleted and synced. Outputs go to WORKDIR/llama/out-backends.

    python bench/cpu_backends.py [--workdir DIR] [--rounds 5] [--dtype keep]
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
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import teachers  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/slicer-bench"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dtype", default="keep")
    args = ap.parse_args(argv)

    import torch  # noqa: F401 - imported before any "run" timing

    import slicer

    facts = teachers.ensure_pair(args.workdir, "llama")
    teacher, template = teachers.teacher_dir(args.workdir, "llama"), Path(facts["template"])
    out = args.workdir / "llama" / "out-backends"
    files = [str(p) for p in teachers.checkpoint_files(teacher)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    results: dict[str, list[float]] = {}

    def fresh() -> None:
        shutil.rmtree(out, ignore_errors=True)
        os.sync()
        subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)

    for _ in range(args.rounds):
        for backend in ("numpy", "torch"):
            fresh()
            t0 = time.perf_counter()
            slicer.shrink(teacher, out, template=template, backend=backend, device="cpu", dtype=args.dtype)
            results.setdefault(f"run {backend}", []).append(time.perf_counter() - t0)
            fresh()
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "slicer", "shrink", str(teacher), str(out), "--template", str(template),
                            "--backend", backend, "--device", "cpu", "--dtype", args.dtype, "--quiet"],
                           env=env, cwd=ROOT, check=True)
            results.setdefault(f"process {backend}", []).append(time.perf_counter() - t0)
    shutil.rmtree(out, ignore_errors=True)
    print(f"shared machine: load average {os.getloadavg()[0]:.2f}; {args.rounds} interleaved rounds; --dtype {args.dtype}")
    for name, ts in results.items():
        print(f"{name:<16} median {statistics.median(ts):6.2f} s  {min(ts):5.2f}..{max(ts):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
