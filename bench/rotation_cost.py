"""What ``--hidden rotate`` costs, at two teacher sizes (random Llama-shaped bf16).

For each teacher: a plain shrink (hidden selected) and the same student with the hidden axis
rotated, each a fresh process sampled by bench/memsample.py (RssAnon peak, wall). The target:
the rotated run's whole wall time <= 2x the plain run's, counting everything (with
``--method importance`` both score the teacher on the same calibration; the rotated run
gathers its statistics on that forward). The rotated run's summary (``--json``) splits its
time: scoring (importance's forward), statistics (the observing forward, what gathering the
covariance and the gains' sample added, the eigendecomposition and the gains), engine (plan,
read, multiply, write), and its products' GFLOP/s beside ``torch.matmul`` alone on the same
shapes, measured in the same process right after the engine. Peak memory: the whole
process's (memsample) and the engine's own (the summary's, with what the process held before).

``--compare TREE`` runs the rotated shrink a second time from another checkout of slicer
(e.g. ``git worktree add /tmp/main-tree main``), in the same run: before and after side by side.

    python bench/rotation_cost.py [--workdir DIR] [--sizes small,1b] [--method importance] [--compare TREE] [--json rows.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from memsample import run  # noqa: E402
from teachers import LlamaShape, build_teacher, write_config  # noqa: E402

SIZES = {
    # 16 layers x 15.2M + 2 x 32.8M = 0.31 B parameters, 0.62 GB bf16
    "small": LlamaShape(hidden=1024, intermediate=4096, heads=16, kv_heads=4, head_dim=64, layers=16, vocab=32000),
    # 16 layers x 60.8M + 2 x 65.5M = 1.10 B parameters, 2.20 GB bf16
    "1b": LlamaShape(hidden=2048, intermediate=8192, heads=32, kv_heads=8, head_dim=64, layers=16, vocab=32000),
}


def student_args(shape: LlamaShape) -> list[str]:
    return ["--set", f"hidden_size={shape.hidden // 2}", "--set", f"intermediate_size={shape.intermediate // 2}",
            "--set", f"num_attention_heads={shape.heads // 2}", "--set", f"num_key_value_heads={shape.kv_heads // 2}"]


def calibration(path: Path, rows: int, length: int, vocab: int) -> Path:
    import torch
    from safetensors.torch import save_file

    ids = torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(0))
    save_file({"input_ids": ids}, str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.environ.get("SLICER_BENCH_DIR", "/tmp/slicer-rotation-cost"))
    ap.add_argument("--sizes", default="small,1b")
    ap.add_argument("--rows", type=int, default=4, help="calibration rows (x --seq-len tokens)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--method", default="uniform", choices=("uniform", "importance"),
                    help="how the other axes are chosen, in both runs (importance: scored on the same calibration)")
    ap.add_argument("--compare", help="another slicer source tree: its rotated run too, labelled 'before'")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    rows = []
    for name in args.sizes.split(","):
        shape = SIZES[name]
        teacher = work / f"teacher-{name}"
        build_teacher(teacher, shape)
        write_config(teacher, shape)
        calib = calibration(work / "calib.safetensors", args.rows, args.seq_len, shape.vocab)
        modes = [("select", None), *([("rotate-before", args.compare)] if args.compare else []), ("rotate", None)]
        for mode, tree in modes:
            out = work / f"out-{name}-{mode}"
            cmd = [sys.executable, "-m", "slicer", "shrink", str(teacher), str(out), *student_args(shape),
                   "--device", "cpu", "--overwrite", "--json", "--method", args.method]
            rotated = mode.startswith("rotate")
            if rotated or args.method == "importance":
                cmd += ["--calibration", str(calib), "--samples", str(args.rows), "--seq-len", str(args.seq_len)]
            if rotated:
                cmd += ["--hidden", "rotate"]
            env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())} if tree else None
            # cwd: the workdir, so that `-m slicer` imports the tree asked for, not one in the current folder
            r = run(cmd, stdout=str(work / f"{name}-{mode}.json"), env=env, cwd=str(work))
            if r.returncode != 0:
                print(r.stderr_tail, file=sys.stderr)
                return 1
            summary = json.loads((work / f"{name}-{mode}.json").read_text())
            row = {"teacher": name, "method": args.method, "params_b": round(sum(_n(s) for _, s in shape.tensors()) / 1e9, 3),
                   "mode": mode, "wall_s": round(r.wall_s, 2), "engine_s": round(summary["seconds"], 2),
                   "peak_anon_mb": round(r.peak_anon_bytes / 1e6), "user_s": round(r.user_s, 1),
                   "engine_peak_mb": round(summary["peak_memory_bytes"] / 1e6),
                   "load_1min": os.getloadavg()[0]}
            rot = summary.get("rotation")
            if rot:
                row.update(statistics_s=rot["statistics_seconds"], scoring_s=rot.get("scoring_seconds"),
                           statistics_split=rot.get("statistics_split"),
                           calibration_forwards=rot.get("calibration_forwards", 2 + (args.method == "importance")),
                           **rot["engine"])
                row["anon_before_engine_mb"] = round(row.pop("anon_before_engine_bytes") / 1e6)
            rows.append(row)
            print(json.dumps(row), flush=True)
    for name in args.sizes.split(","):
        plain = next(r for r in rows if r["teacher"] == name and r["mode"] == "select")
        for rotated in (r for r in rows if r["teacher"] == name and r["mode"].startswith("rotate")):
            print(f"{name} {rotated['mode']}: wall {rotated['wall_s']:.1f} s rotated vs {plain['wall_s']:.1f} s selected "
                  f"({rotated['wall_s'] / plain['wall_s']:.2f}x counting everything; target <= 2x; CPU user "
                  f"{rotated['user_s']:.0f} / {plain['user_s']:.0f} s: {rotated['user_s'] / plain['user_s']:.2f}x; "
                  f"{rotated['calibration_forwards']} calibration forward(s) after the observing one); statistics "
                  f"{rotated['statistics_s']:.1f} s; engine {rotated['engine_s']:.2f} s vs {plain['engine_s']:.2f} s; "
                  f"products {rotated['gflop']:.0f} GFLOP at {rotated['gflop_per_s']:.1f} GFLOP/s, torch.matmul alone "
                  f"{rotated['matmul_alone_gflop_per_s']} GFLOP/s (same shapes: "
                  f"{'yes' if 'matmul_alone_seconds' in rotated else 'no, one 8 MB shape'}); peak RssAnon, whole "
                  f"process {plain['peak_anon_mb']} / {rotated['peak_anon_mb']} MB, engine {plain['engine_peak_mb']} / "
                  f"{rotated['engine_peak_mb']} MB ({rotated['anon_before_engine_mb']} MB before it); load "
                  f"{plain['load_1min']:.1f} / {rotated['load_1min']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def _n(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


if __name__ == "__main__":
    sys.exit(main())
