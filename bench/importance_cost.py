"""What ``slicer score`` costs: seconds and peak anonymous memory on generated Llama-shaped
teachers of one width and different depths (so different sizes), to show that memory stays
flat in the number of layers (one module's weights plus the activations) while time grows
with it. Optionally the same forward with the whole model loaded (``from_pretrained``), the
way every other importance tool runs it, for the smallest teacher.

Each run is a whole ``python -m slicer score`` process sampled by bench/memsample.py
(RssAnon + RssShmem of the process tree, every 20 ms). Teachers are bf16, random N(0, 0.02)
(bench/teachers.py), with a config.json; the calibration is random token ids.

    python bench/importance_cost.py [--workdir /tmp/slicer-bench-importance/cost] [--depths 19,41] [--baseline]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parent.parent

import memsample  # noqa: E402
import teachers  # noqa: E402

WIDTH = dict(hidden=2048, intermediate=5632, heads=16, kv_heads=4, head_dim=128, vocab=32000)


def config(shape: teachers.LlamaShape) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": shape.hidden,
            "intermediate_size": shape.intermediate, "num_hidden_layers": shape.layers,
            "num_attention_heads": shape.heads, "num_key_value_heads": shape.kv_heads, "head_dim": shape.head_dim,
            "vocab_size": shape.vocab, "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 4096, "dtype": "bfloat16"}


def teacher(workdir: Path, layers: int) -> Path:
    shape = teachers.LlamaShape(**WIDTH, layers=layers)
    d = workdir / f"llama-{layers}L"
    teachers.build_teacher(d, shape, log=lambda m: print(m, file=sys.stderr))
    (d / "config.json").write_text(json.dumps(config(shape), indent=1))
    return d


def calibration(workdir: Path, samples: int, seq_len: int) -> Path:
    import torch
    from safetensors.torch import save_file

    path = workdir / f"ids-{samples}x{seq_len}.safetensors"
    if not path.exists():
        gen = torch.Generator().manual_seed(0)
        save_file({"input_ids": torch.randint(0, WIDTH["vocab"], (samples, seq_len), generator=gen)}, str(path))
    return path


WHOLE = """
import sys, torch, transformers
from safetensors.torch import load_file
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids = load_file(sys.argv[2])["input_ids"]
with torch.no_grad():
    m.model(input_ids=ids, use_cache=False)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/slicer-bench-importance/cost", type=Path)
    p.add_argument("--depths", default="19,41", help="layers of each teacher (about 2 GB and 4 GB at this width)")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--baseline", action="store_true", help="also run the whole model (from_pretrained) on the smallest")
    p.add_argument("--keep", action="store_true", help="keep the generated teachers (default: deleted at the end)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    ids = calibration(args.workdir, args.samples, args.seq_len)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    rows = []
    depths = [int(d) for d in args.depths.split(",")]
    for layers in depths:
        d = teacher(args.workdir, layers)
        size = sum(f.stat().st_size for f in d.glob("*.safetensors"))
        out = args.workdir / f"scores-{layers}L.safetensors"
        cmd = [sys.executable, "-m", "slicer", "score", str(d), "--calibration", str(ids), "-o", str(out), "--json",
               "--device", "cpu"]
        r = memsample.run(cmd, env=env)
        if r.returncode != 0:
            raise SystemExit(f"slicer score failed: {r.stderr_tail}")
        rows.append({"run": "slicer score (streamed)", "layers": layers, "teacher_gb": size / 1e9, "seconds": r.wall_s,
                     "peak_anon_gb": r.peak_anon_bytes / 1e9, "maxrss_gb": r.maxrss_bytes / 1e9})
        print(rows[-1], file=sys.stderr)
        if args.baseline and layers == min(depths):
            r = memsample.run([sys.executable, "-c", WHOLE, str(d), str(ids)], env=env)
            rows.append({"run": "whole model (from_pretrained fp32)", "layers": layers, "teacher_gb": size / 1e9,
                         "seconds": r.wall_s, "peak_anon_gb": r.peak_anon_bytes / 1e9, "maxrss_gb": r.maxrss_bytes / 1e9,
                         "ok": r.returncode == 0})
            print(rows[-1], file=sys.stderr)
    print("| run | layers | teacher GB | seconds | peak RssAnon GB | peak RSS GB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['layers']} | {r['teacher_gb']:.2f} | {r['seconds']:.1f} | {r['peak_anon_gb']:.2f} | "
              f"{r['maxrss_gb']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"calibration": [args.samples, args.seq_len], "rows": rows}, indent=1))
    if not args.keep:
        for layers in depths:
            d = args.workdir / f"llama-{layers}L"
            for f in d.iterdir():
                f.unlink()
            d.rmdir()


if __name__ == "__main__":
    main()
