"""``slicer demo``: the whole job on an embedded default, in a temporary folder.

Builds a small Llama-shaped teacher (random bf16 weights, two shards, config.json)
and a randomly initialized half-size student as the template, shows the plan,
shrinks, and checks a few tensors bit for bit against the spec's formulas.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from .. import api
from ..errors import SlicerError
from .report import format_plan

TEACHER = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
               num_key_value_heads=2, vocab_size=8000)
STUDENT = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=1, vocab_size=8000)


def llama_shapes(hidden_size: int, intermediate_size: int, num_hidden_layers: int, num_attention_heads: int,
                 num_key_value_heads: int, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Hugging Face LlamaForCausalLM (untied embeddings)."""
    head_dim = hidden_size // num_attention_heads
    kv = num_key_value_heads * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab_size, hidden_size)}
    for i in range(num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (hidden_size, hidden_size),
            p + "self_attn.k_proj.weight": (kv, hidden_size),
            p + "self_attn.v_proj.weight": (kv, hidden_size),
            p + "self_attn.o_proj.weight": (hidden_size, hidden_size),
            p + "mlp.gate_proj.weight": (intermediate_size, hidden_size),
            p + "mlp.up_proj.weight": (intermediate_size, hidden_size),
            p + "mlp.down_proj.weight": (hidden_size, intermediate_size),
            p + "input_layernorm.weight": (hidden_size,),
            p + "post_attention_layernorm.weight": (hidden_size,),
        }
    shapes |= {"model.norm.weight": (hidden_size,), "lm_head.weight": (vocab_size, hidden_size)}
    return shapes


def llama_config(**dims: int) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
            "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "tie_word_embeddings": False, **dims}


def write_checkpoint(folder: Path, shapes: dict[str, tuple[int, ...]], config: dict, shards: int = 1, seed: int = 0) -> None:
    """A Hugging Face style folder: config.json and (sharded) model.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {n: (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for n, s in shapes.items()}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if shards == 1:
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        return
    names = list(tensors)
    per = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        filename = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i * per:(i + 1) * per]}
        save_file(part, folder / filename, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, filename)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def run_demo(keep: str | None = None, progress: bool = False, quiet: bool = False,
             on_summary: Callable[[api.Summary], None] = lambda s: None, *, overwrite: bool = False,
             say: Callable[[str], None] = print) -> int:
    """Build, plan, shrink and check in a temporary folder, or in ``keep`` (which must be
    empty or new; with ``overwrite`` the demo's own files in it are replaced, others kept)."""
    def show(text: str = "") -> None:
        if not quiet:
            say(text)

    with tempfile.TemporaryDirectory(prefix="slicer-demo-") as tmp:
        root = Path(keep) if keep else Path(tmp)
        if keep:
            _prepare_keep(root, overwrite)
        teacher, template, out = root / "teacher", root / "student-init", root / "student"
        try:
            show(f"building a Llama-shaped bf16 teacher in {teacher} ({TEACHER['num_hidden_layers']} layers, hidden {TEACHER['hidden_size']})")
            write_checkpoint(teacher, llama_shapes(**TEACHER), llama_config(**TEACHER), shards=2, seed=0)
            show(f"building a randomly initialized half-size student template in {template}")
            write_checkpoint(template, llama_shapes(**STUDENT), llama_config(**STUDENT), seed=1)
        except OSError as e:
            raise SlicerError(f"{e.filename or root}: cannot write the demo's checkpoints: {e.strerror or e}") from e
        show(f"\n$ slicer plan {teacher} --template {template} --layer-selection uniform\n")
        show(format_plan(api.plan(teacher, template=template, layer_selection="uniform")))
        show(f"\n$ slicer shrink {teacher} {out} --template {template} --layer-selection uniform"
             f"{' --overwrite' if overwrite else ''}\n")
        sys.stdout.flush()
        summary = api.shrink(teacher, out, template=template, layer_selection="uniform", overwrite=overwrite,
                             progress=progress)
        on_summary(summary)
        ok, verdict = _check(teacher, out)
        if not ok:  # the demo's own proof failed: exit 1, as verify does when something differs
            print(f"slicer: error: {out}: {verdict}", file=sys.stderr)
            return 1
        show("\n" + verdict)
        if keep:
            show(f"files kept in {root}")
    return 0


def _prepare_keep(root: Path, overwrite: bool) -> None:
    """--keep DIR: a new or empty folder, or (with overwrite) one whose demo files may be replaced."""
    try:
        if root.exists() and not root.is_dir():
            raise SlicerError(f"{root}: exists and is not a folder; name a new or empty folder for --keep")
        if root.is_dir() and any(root.iterdir()) and not overwrite:
            raise SlicerError(f"{root}: folder is not empty; name a new or empty folder, or pass --overwrite "
                              "to replace the demo's files in it")
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK | os.X_OK):
            raise SlicerError(f"{root}: folder is not writable")
    except OSError as e:
        raise SlicerError(f"{root}: cannot create the demo folder: {e.strerror or e}") from e


def _check(teacher: Path, out: Path) -> tuple[bool, str]:
    """Compare every student tensor of the demo's layers with the spec's formulas, computed
    here independently for what the run recorded it did (OUT's manifest: each dimension's
    axes, each axis's sizes). Whether attention went by whole heads (with transformers) or
    flat (the plain install) is read from the run, never assumed; the index sets themselves
    are recomputed from the reference's own formula (float32 linspace, rounded), and the
    layer map from the same formula over the depths."""
    from safetensors import safe_open

    def load(folder: Path, name: str) -> torch.Tensor:
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(f, "pt") as h:
                if name in h.keys():
                    return h.get_tensor(name)
        raise KeyError(name)

    def uniform(t: int, s: int) -> list[int]:
        """The reference code's uniform selection (Xu et al.), with its multiple-of shortcut."""
        if t % s == 0:
            return list(range(0, t, t // s))
        return torch.round(torch.linspace(0, t - 1, s, dtype=torch.float32)).to(torch.int64).tolist()

    try:
        record = json.loads((out / "slicer_manifest.json").read_text())
        axes, tensors = record["axes"], record["tensors"]
    except (OSError, ValueError, KeyError) as e:
        return False, f"cannot read the run's manifest: {e}"

    def members(name: str, side: str) -> list[int]:
        """Teacher indices an axis keeps (side "s"), or all its teacher members (side "t")."""
        ax = axes[name]
        if "parts" not in ax:
            return uniform(ax["t"], ax["s"]) if side == "s" else list(range(ax["t"]))
        return compose(ax["parts"], side)

    def compose(layout: str, side: str) -> list[int]:
        """``a * b | c``: row-major products, concatenated; an integer factor is a block kept whole."""
        rows, base = [], 0
        for seg in layout.split("|"):
            kept, width = [0], 1
            for f in (f.strip() for f in seg.split("*")):
                n, picked = (int(f), list(range(int(f)))) if f.isdecimal() else (axes[f]["t"], members(f, side))
                kept, width = [k * n + i for k in kept for i in picked], width * n
            rows += [base + k for k in kept]
            base += width
        return rows

    want_layers = uniform(TEACHER["num_hidden_layers"], STUDENT["num_hidden_layers"])
    if record.get("layer_maps", {}).get("model.layers") != want_layers:
        return False, f"the layer map {record.get('layer_maps')} is not the uniform {want_layers}"
    q_rows = tensors["model.layers.0.self_attn.q_proj.weight"]["axes"][0]
    how = "whole attention heads" if "q-heads" in q_rows else "attention rows selected flat"
    checked = 0
    for j, i in enumerate(want_layers):
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm"):
            name = f"model.layers.{j}.{part}.weight"
            entry = tensors.get(name)
            if entry is None or entry["source"] != f"model.layers.{i}.{part}.weight":
                return False, f"student tensor {name} is not recorded as selected from teacher layer {i}"
            want = load(teacher, entry["source"])
            for dim, layout in enumerate(entry["axes"]):
                want = want.index_select(dim, torch.tensor(compose(layout, "s")))
            got = load(out, name)
            if want.shape != got.shape or not torch.equal(want.view(torch.int16), got.view(torch.int16)):
                return False, f"student tensor {name} differs from the spec's selection"
            checked += 1
    return True, f"checked {checked} tensors bit for bit against the spec's formulas ({how}): all equal"
