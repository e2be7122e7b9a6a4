"""A short fine-tuning run of half-width SmolLM2-135M students: random init vs uniform vs
importance selection, on the CPU, loss curves plotted.

The students are the half-width ones bench/importance_quality.py writes (hidden 576 -> 288,
FFN 1536 -> 768, heads 9 -> 6); the random-init student has the same config, initialized by
transformers (seed 0). Each is trained with the same recipe (AdamW, constant learning rate,
the same batches in the same order) on prose shipped with slicer (slicer's calibration text
and bench/data/finetune.txt), and evaluated on bench/data/heldout.txt (written for slicer,
seen by no student) every ``--eval-every`` steps.

    python bench/importance_quality.py smollm          # writes the students first
    python bench/importance_finetune.py [--steps 150] [--plot finetune.png] [--json finetune.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"


def texts() -> tuple[str, str]:
    train = (ROOT / "slicer" / "importance" / "calibration.txt").read_text() + "\n\n" + (DATA / "finetune.txt").read_text()
    return train, (DATA / "heldout.txt").read_text()


def batches(ids: torch.Tensor, steps: int, batch: int, seq_len: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len - 1, (steps, batch), generator=gen)
    return [torch.stack([ids[s:s + seq_len] for s in row.tolist()]) for row in starts]


def heldout_loss(model, ids: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        loss = float(model(ids.unsqueeze(0), labels=ids.unsqueeze(0)).loss)
    model.train()
    return loss


def train(model, plan: list[torch.Tensor], heldout: torch.Tensor, lr: float, eval_every: int, name: str) -> dict:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    curve, evals = [], [(0, heldout_loss(model, heldout))]
    t0 = time.perf_counter()
    for step, x in enumerate(plan, 1):
        loss = model(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        curve.append(float(loss))
        if step % eval_every == 0 or step == len(plan):
            evals.append((step, heldout_loss(model, heldout)))
            print(f"  {name}: step {step} train {curve[-1]:.3f} held-out {evals[-1][1]:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return {"train": curve, "heldout": evals, "seconds": time.perf_counter() - t0}


def plot(results: dict, path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        curve = r["train"]
        smooth, s = [], curve[0]
        for v in curve:
            s = 0.9 * s + 0.1 * v
            smooth.append(s)
        a.plot(range(1, len(curve) + 1), smooth, label=name)
        steps_, losses = zip(*r["heldout"])
        b.plot(steps_, losses, marker="o", label=name)
    a.set(title="train loss (EMA 0.9)", xlabel="step", ylabel="cross-entropy")
    b.set(title="held-out loss (bench/data/heldout.txt)", xlabel="step", ylabel="cross-entropy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"SmolLM2-135M -> half width, {steps} steps of AdamW on the CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/work/tmp/importance/bench/smollm", type=Path)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--plot", type=Path, default=Path("finetune.png"))
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    import transformers

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    teacher = args.workdir / "smollm2-135m"
    tok = transformers.AutoTokenizer.from_pretrained(str(teacher))
    train_text, heldout_text = texts()
    ids = torch.tensor(tok(train_text)["input_ids"])
    heldout = torch.tensor(tok(heldout_text)["input_ids"])
    plan = batches(ids, args.steps, args.batch, args.seq_len)
    results = {}
    for name in ("random init", "uniform", "importance"):
        folder = args.workdir / "width-uniform" if name == "random init" else args.workdir / f"width-{name}"
        if not folder.exists():
            raise SystemExit(f"{folder} missing: run bench/importance_quality.py smollm first")
        if name == "random init":
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(str(folder)))
        else:
            model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        results[name] = train(model, plan, heldout, args.lr, args.eval_every, name)
    print(f"| student | held-out loss at 0 | at {args.steps} | perplexity at {args.steps} | train loss, last 10 | seconds |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        last = r["heldout"][-1][1]
        print(f"| {name} | {r['heldout'][0][1]:.3f} | {last:.3f} | {math.exp(last):.1f} | "
              f"{sum(r['train'][-10:]) / 10:.3f} | {r['seconds']:.0f} |")
    plot(results, args.plot, args.steps)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))


if __name__ == "__main__":
    main()
