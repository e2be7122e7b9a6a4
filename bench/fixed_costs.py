"""Fixed costs of the commands that never touch a tensor, and verify's hashing speed.

Whole processes, interleaved (one round runs every command once; the machine may be
shared, so every figure is a median over rounds, with its spread):

  python        `python -c pass`: the interpreter's own start (site packages included)
  numpy, torch  `python -c "import numpy"` / `"import torch"`: what an import costs here
  help          `python -m slicer --help`
  plan          `python -m slicer plan TEACHER --template TEMPLATE` (headers only)
  verify        `python -m slicer verify STUDENT` (sizes, sha256, headers, index)
  sha256sum     coreutils `sha256sum` of the student's shards
  hashlib       one Python process hashing the shards with hashlib.sha256, 8 MB reads

It also runs help, plan and verify under `python -X importtime` once each and prints
their five most expensive imports, and fails if any of them imports torch. The
teacher is the Llama-shaped pair of bench/e2e.py (built in WORKDIR if missing); the
student is written once by `slicer shrink` into WORKDIR/llama/student-verify.

    python bench/fixed_costs.py [--workdir DIR] [--rounds 7] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import teachers  # noqa: E402

HASHLIB = """
import hashlib, sys
for p in sys.argv[1:]:
    h = hashlib.sha256()
    with open(p, 'rb') as f:
        while b := f.read(8 << 20):
            h.update(b)
"""


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {r.returncode}: {r.stderr[-1000:]}")
    return wall


def top_imports(argv: list[str], n: int = 5) -> tuple[list[tuple[str, float]], bool]:
    """The n imports with the largest cumulative time (s), and whether torch was imported."""
    r = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    rows = []
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cum, name = line[len("import time:"):].split("|")
            rows.append((name.strip(), int(cum) / 1e6))
    torch = any(name == "torch" for name, _ in rows)
    top = [row for row in sorted(rows, key=lambda r: -r[1]) if not row[0].startswith(" ")]
    return top[:n], torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/slicer-bench"))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    os.environ.setdefault("SLICER_CACHE", str(args.workdir / "slicer-cache"))  # never the user's cache
    facts = teachers.ensure_pair(args.workdir, "llama")
    # HF folders (config.json beside both): the transformers route, its bindings cache filled by the first plan
    teacher, template = teachers.teacher_dir(args.workdir, "llama"), Path(facts["template_dir"])
    student = args.workdir / "llama" / "student-verify"
    py = sys.executable
    if not (student / "slicer_manifest.json").exists():
        subprocess.run([py, "-m", "slicer", "shrink", str(teacher), str(student), "--template", str(template),
                        "--overwrite", "--quiet"], cwd=ROOT, env=env(), check=True)
    shards = sorted(str(p) for p in student.glob("*.safetensors"))
    shard_bytes = sum(os.path.getsize(p) for p in shards)
    commands = {
        "python": [py, "-c", "pass"],
        "numpy": [py, "-c", "import numpy"],
        "torch": [py, "-c", "import torch"],
        "help": [py, "-m", "slicer", "--help"],
        "plan": [py, "-m", "slicer", "plan", str(teacher), "--template", str(template)],
        "verify": [py, "-m", "slicer", "verify", str(student), "--quiet"],
        "sha256sum": ["sha256sum", *shards],
        "hashlib": [py, "-c", HASHLIB, *shards],
    }
    subprocess.run(["cat", *shards], stdout=subprocess.DEVNULL, check=True)  # warm cache, untimed
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(args.rounds):
        for name, cmd in commands.items():
            times[name].append(timed(cmd))
    print(f"shared machine: load average {os.getloadavg()[0]:.2f}; {args.rounds} interleaved rounds, "
          f"student {shard_bytes / 1e9:.2f} GB in {len(shards)} shard(s)")
    print(f"{'command':<10} {'median s':>9} {'min..max s':>13} {'GB/s':>6}")
    result = {"rounds": args.rounds, "student_bytes": shard_bytes, "commands": {}}
    for name, ts in times.items():
        med = statistics.median(ts)
        rate = f"{shard_bytes / 1e9 / med:6.2f}" if name in ("verify", "sha256sum", "hashlib") else ""
        print(f"{name:<10} {med:9.3f} {min(ts):6.3f}..{max(ts):<6.3f} {rate:>6}")
        result["commands"][name] = {"median_s": med, "min_s": min(ts), "max_s": max(ts), "runs": ts}
    print()
    failed = False
    for name in ("help", "plan", "verify"):
        top, torch = top_imports(commands[name][1:])
        failed |= torch
        result["commands"][name]["top_imports"] = top
        result["commands"][name]["imports_torch"] = torch
        print(f"{name}: imports torch: {torch}; top imports (cumulative s): "
              + ", ".join(f"{n} {s:.3f}" for n, s in top))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
