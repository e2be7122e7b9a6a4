"""What ``--hidden rotate`` costs inside the engine, at two teacher sizes (random Llama-shaped bf16).

For each teacher: a plain shrink (hidden selected, uniform) and the same student with the
hidden axis rotated, each a fresh process sampled by bench/memsample.py (RssAnon peak, wall).
The rotated run's summary (``--json``) gives its engine time (``seconds``: plan, read, multiply,
write) apart from the statistics (the observing forward and the two calibration forwards:
``rotation.statistics_seconds``), the GFLOP/s of its products and ``torch.matmul`` alone on this
machine at the same shapes. The target: the engine's time with rotation <= 2x the plain shrink's. Peak memory: the whole
process's (memsample: the rotated run's is its calibration forward's) and the engine's own
(the summary's, sampled while the engine runs, with what the process held before it).

    python bench/rotation_cost.py [--workdir DIR] [--sizes small,1b] [--json rows.json]
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
        for mode in ("select", "rotate"):
            out = work / f"out-{name}-{mode}"
            cmd = [sys.executable, "-m", "slicer", "shrink", str(teacher), str(out), *student_args(shape),
                   "--device", "cpu", "--overwrite", "--json", "--method", args.method]
            if mode == "rotate" or args.method == "importance":
                cmd += ["--calibration", str(calib), "--samples", str(args.rows), "--seq-len", str(args.seq_len)]
            if mode == "rotate":
                cmd += ["--hidden", "rotate"]
            r = run(cmd, stdout=str(work / f"{name}-{mode}.json"))
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
                row.update(statistics_s=rot["statistics_seconds"], **rot["engine"])
                row["anon_before_engine_mb"] = round(row.pop("anon_before_engine_bytes") / 1e6)
            rows.append(row)
            print(json.dumps(row), flush=True)
    for name in args.sizes.split(","):
        plain, rotated = (next(r for r in rows if r["teacher"] == name and r["mode"] == m) for m in ("select", "rotate"))
        print(f"{name}: engine {rotated['engine_s']:.2f} s rotated vs {plain['engine_s']:.2f} s selected "
              f"({rotated['engine_s'] / plain['engine_s']:.2f}x; target <= 2x); statistics {rotated['statistics_s']:.1f} s "
              f"apart; products {rotated['gflop_per_s']:.1f} GFLOP/s, torch.matmul alone "
              f"{rotated['matmul_alone_gflop_per_s']:.1f}; peak RssAnon, whole process {plain['peak_anon_mb']} / "
              f"{rotated['peak_anon_mb']} MB, engine {plain['engine_peak_mb']} / {rotated['engine_peak_mb']} MB "
              f"({rotated['anon_before_engine_mb']} MB before the engine started); whole run without the statistics "
              f"{rotated['wall_s'] - rotated['statistics_s']:.1f} s vs {plain['wall_s']:.1f} s "
              f"({(rotated['wall_s'] - rotated['statistics_s']) / plain['wall_s']:.2f}x)")
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
