"""FP8 block-scaled teachers: whole blocks vs dequantizing gather vs a plain BF16 teacher of the same shapes.

    python bench/quantized.py [--workdir DIR] [--hidden 2048] [--layers 4] [--repeats 3] [--json FILE]

Builds (once, in WORKDIR) a Llama-shaped FP8 teacher (F8_E4M3 projections with F32 ``weight_scale_inv``
per 128x128 block, ``quantization_config`` fp8) and a BF16 teacher of the same shapes, then runs, as
whole processes interleaved (median wall time of ``--repeats``; peak anonymous memory sampled by
bench/memsample.py):

| way        | command                                                                        |
| ---------- | ------------------------------------------------------------------------------ |
| floor      | ``cat`` of the FP8 teacher to /dev/null                                        |
| blocks     | ``slicer shrink FP8 --set ... --quantized blocks`` (bits copied, scales selected) |
| dequantize | ``slicer shrink FP8 --set ... --dtype bf16`` (every weight times its block scale) |
| bf16       | ``slicer shrink BF16 --set ...`` (the ordinary gather, same shapes, for scale)   |

The student halves hidden, heads and the FFN (all whole 128-blocks). The machine may be shared:
compare the ways within one run, not across runs.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memsample import run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 128


def build(folder: Path, hidden: int, layers: int, fp8: bool) -> Path:
    marker = folder / ".complete"
    if marker.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    heads, head_dim, ffn, vocab = hidden // 128, 128, int(hidden * 2.75) // 128 * 128, 32000
    gen = torch.Generator().manual_seed(0)
    state = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=gen).to(torch.bfloat16),
             "lm_head.weight": torch.randn(vocab, hidden, generator=gen).to(torch.bfloat16),
             "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, hidden),
                  "self_attn.v_proj": (hidden, hidden), "self_attn.o_proj": (hidden, hidden),
                  "mlp.gate_proj": (ffn, hidden), "mlp.up_proj": (ffn, hidden), "mlp.down_proj": (hidden, ffn)}
        for name, (r, c) in shapes.items():
            if fp8:
                bits = torch.randint(0, 256, (r, c), generator=gen, dtype=torch.uint8)
                bits[(bits & 0x7F) == 0x7F] = 0  # no NaN codes
                state[p + name + ".weight"] = bits.view(torch.float8_e4m3fn)
                state[p + name + ".weight_scale_inv"] = torch.rand(-(-r // BLOCK), -(-c // BLOCK), generator=gen) / 100
            else:
                state[p + name + ".weight"] = (torch.randn(r, c, generator=gen) * 0.02).to(torch.bfloat16)
        state[p + "input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        state[p + "post_attention_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": heads, "head_dim": head_dim, "vocab_size": vocab, "tie_word_embeddings": False,
              "torch_dtype": "bfloat16"}
    if fp8:
        config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic",
                                         "weight_block_size": [BLOCK, BLOCK]}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    marker.touch()
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/slicer-bench-quantized")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", dest="json_file")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    fp8 = build(work / f"fp8-{args.hidden}x{args.layers}", args.hidden, args.layers, True)
    bf16 = build(work / f"bf16-{args.hidden}x{args.layers}", args.hidden, args.layers, False)
    h = args.hidden // 2
    edits = ["--set", f"hidden_size={h}", "--set", f"num_attention_heads={h // 128}",
             "--set", f"num_key_value_heads={h // 128}", "--set", f"intermediate_size={int(args.hidden * 2.75) // 256 * 128}"]
    py = [sys.executable, "-m", "slicer", "shrink"]
    out = work / "out"
    ways = {
        "floor": ["sh", "-c", f"cat {fp8}/model.safetensors > /dev/null"],
        "blocks": py + [str(fp8), str(out), *edits, "--quantized", "blocks", "--overwrite", "--json"],
        "dequantize": py + [str(fp8), str(out), *edits, "--dtype", "bf16", "--overwrite", "--json"],
        "bf16": py + [str(bf16), str(out), *edits, "--overwrite", "--json"],
    }
    runs: dict[str, list] = {w: [] for w in ways}
    for _ in range(args.repeats):
        for way, cmd in ways.items():
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(["cat", str(fp8 / "model.safetensors"), str(bf16 / "model.safetensors")],
                           stdout=subprocess.DEVNULL, check=True)  # warm cache for every way
            r = run(cmd, cwd=str(ROOT))
            if r.returncode != 0:
                print(f"{way} failed: {r.stderr_tail}", file=sys.stderr)
                return 1
            summary = json.loads(r.stdout_tail.strip().splitlines()[-1]) if way != "floor" else {}
            runs[way].append({"wall_s": r.wall_s, "peak_anon_bytes": r.peak_anon_bytes, **summary})
    fp8_bytes = (fp8 / "model.safetensors").stat().st_size
    print(f"teacher FP8 {fp8_bytes / 1e6:.0f} MB, BF16 {(bf16 / 'model.safetensors').stat().st_size / 1e6:.0f} MB; "
          f"student hidden {h}; median of {args.repeats} (shared machine: compare within this run)")
    print(f"{'way':<11} {'wall s':>8} {'in-run s':>9} {'written MB':>11} {'peak anon MB':>13}")
    for way, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        inner = statistics.median(r.get("seconds", float("nan")) for r in rs)
        written = statistics.median(r.get("bytes_written", 0) for r in rs) / 1e6
        peak = statistics.median(r["peak_anon_bytes"] for r in rs) / 1e6
        print(f"{way:<11} {wall:>8.2f} {inner:>9.2f} {written:>11.0f} {peak:>13.0f}")
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
