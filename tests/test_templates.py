"""Templates: a config.json beside both folders gives the model's structure; without one,
flat selection behind a guard that refuses what it would break. The manifest never claims
what was not done."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import slicer
from slicer import SlicerError

transformers = pytest.importorskip("transformers")

from consistency import check  # noqa: E402
from families import FAMILIES, build  # noqa: E402


def _template_from_config(folder, config: dict):
    """What a user has: a randomly initialized student saved with save_pretrained."""
    cfg = transformers.LlamaConfig(**{k: v for k, v in config.items() if k != "architectures"})
    model = transformers.LlamaForCausalLM(cfg)
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(folder)
    return folder


def test_a_template_with_a_config_keeps_whole_heads_and_says_so(tmp_path):
    family = FAMILIES["llama"]
    teacher = build(tmp_path / "teacher", family, coded=True)
    template = _template_from_config(tmp_path / "template", {**family.config, **family.edits})
    out = tmp_path / "out"
    slicer.shrink(str(teacher), str(out), template=str(template), progress=False, layer_selection="uniform")
    manifest = json.loads((out / "slicer_manifest.json").read_text())
    assert manifest["binding"] == "transformers"
    assert manifest["options"]["attention"] == "heads"
    report = check(out, teacher, family.spec)
    assert not report.problems, report.problems[:5]


def test_a_template_without_a_config_is_flat_and_refuses_attention_heads(tmp_path):
    teacher = tmp_path / "teacher.safetensors"
    template = tmp_path / "template.safetensors"
    save_file({"layers.0.self_attn.q_proj.weight": torch.zeros(16, 16)}, str(teacher))
    save_file({"layers.0.self_attn.q_proj.weight": torch.zeros(8, 8)}, str(template))
    with pytest.raises(SlicerError, match="--attention heads needs the model's structure"):
        slicer.plan(str(teacher), template=str(template), attention="heads")
    plan = slicer.plan(str(teacher), template=str(template))
    assert plan.options.attention == "flat" and plan.binding == "flat"


def _flat_pair(tmp_path, teacher_state, template_shapes):
    teacher, template = tmp_path / "t.safetensors", tmp_path / "s.safetensors"
    save_file(teacher_state, str(teacher))
    save_file({k: torch.zeros(v) for k, v in template_shapes.items()}, str(template))
    return str(teacher), str(template)


def test_numbered_experts_whose_router_rows_differ_are_refused(tmp_path):
    # 8 -> 4 experts: layer selection "first" keeps experts 0..3, uniform rows of the router keep 0, 2, 4, 6
    state = {f"l.0.moe.experts.{e}.w1.weight": torch.zeros(4, 4) for e in range(8)}
    state["l.0.moe.gate.weight"] = torch.zeros(8, 4)
    shapes = {f"l.0.moe.experts.{e}.w1.weight": (4, 4) for e in range(4)} | {"l.0.moe.gate.weight": (4, 4)}
    teacher, template = _flat_pair(tmp_path, state, shapes)
    with pytest.raises(SlicerError, match=r"keeps teacher experts \[0, 1, 2, 3\] but router 'l.0.moe.gate.weight'"):
        slicer.plan(teacher, template=template)
    # consecutive rows agree with first-N experts: consistent, so allowed
    slicer.plan(teacher, template=template, method="consecutive")


@pytest.mark.parametrize("name, t, s, ok", [
    ("blocks.0.attn.qkv.weight", 48, 24, True),    # 16 -> 8 per part, step 2: the paper's ViT case
    ("blocks.0.attn.qkv.weight", 48, 21, False),   # 16 -> 7: linspace rows straddle q, k, v
    ("model.layers.0.mlp.gate_up_proj.weight", 24, 10, False),
])
def test_fused_projections_are_refused_where_flat_selection_mixes_their_parts(tmp_path, name, t, s, ok):
    teacher, template = _flat_pair(tmp_path, {name: torch.zeros(t, 4)}, {name: (s, 4)})
    if ok:
        slicer.plan(teacher, template=template)
    else:
        with pytest.raises(SlicerError, match="would mix them"):
            slicer.plan(teacher, template=template)
        slicer.plan(teacher, template=template, attention="flat")  # asked for: the paper's rule


def test_quantization_scales_are_never_selected_flat(tmp_path):
    state = {"l.w.weight": torch.zeros(256, 256), "l.w.weight_scale_inv": torch.ones(2, 2)}
    teacher, template = _flat_pair(tmp_path, state, {"l.w.weight": (128, 128), "l.w.weight_scale_inv": (1, 1)})
    with pytest.raises(SlicerError, match="block scales; flat selection cannot tell"):
        slicer.plan(teacher, template=template)
