"""Mixture of experts and hybrid layer patterns, proven from the values (tests/consistency.py).

- Every option combination (first/uniform layers x uniform/consecutive/random elements x experts
  kept/halved) on per-expert (Mixtral), packed interleaved (gpt-oss) and group-routed MLA
  (DeepSeek-V3, experts halved) teachers: every kept expert sits at the same place in its per-expert or packed
  tensors and in its router's rows and biases, and the experts are the ones --method chooses,
  never --layer-selection.
- Config edits a router cannot honour are one line ``slicer: error:`` naming the key; nothing is written.
- Hybrid patterns (Jamba, Llama 4, Qwen3-Next, DeepSeek-V3's first dense layers): every student
  layer is fed by a teacher layer of its own kind, read from the values; the per-layer config
  lists follow the layers really taken.
"""
from __future__ import annotations

import json
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

import slicer  # noqa: E402
from slicer import cli  # noqa: E402
from slicer.selection import consecutive_indices, random_indices, uniform_indices  # noqa: E402
from consistency import check, layer_map  # noqa: E402
from families import FAMILIES, build  # noqa: E402

EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
LAYERS = r"(model\.layers\.)(\d+)(\..*)"


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    made = {}

    def get(fam: str, coded: bool = True):
        if (fam, coded) not in made:
            made[fam, coded] = build(root / f"{fam}-{coded}", FAMILIES[fam], coded=coded)
        return made[fam, coded]

    return get


def _edits(fam: str, experts: str) -> dict:
    edits = dict(FAMILIES[fam].edits)
    if experts == "kept":
        for key in EXPERT_KEYS:
            edits.pop(key, None)
    return edits


def _experts_of(config: dict) -> int:
    return next(config[k] for k in EXPERT_KEYS if k in config)


def _expected_members(method: str, t: int, s: int, groups: int = 1) -> list[int]:
    """What --method keeps of t experts (per group of t / groups where the router groups them)."""
    per_t, per_s = t // groups, s // groups
    if per_t == per_s:
        local = list(range(per_t))
    elif method == "uniform":
        local = uniform_indices(per_t, per_s)
    elif method == "consecutive":
        local = consecutive_indices(per_t, per_s)
    else:
        local = random_indices(per_t, per_s, f"0/{per_t}/{per_s}")
    return [g * per_t + i for g in range(groups) for i in local]


COMBINATIONS = [(fam, layers, method, experts) for fam in ("mixtral", "gpt_oss", "deepseek_v3")
                for layers in ("first", "uniform") for method in ("uniform", "consecutive", "random")
                for experts in ("kept", "halved") if fam != "deepseek_v3" or experts == "halved"]


@pytest.mark.parametrize("fam, layers, method, experts", COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def test_experts_are_one_axis_chosen_by_the_method_in_every_option_combination(teachers, tmp_path, fam, layers,
                                                                               method, experts):
    family = FAMILIES[fam]
    teacher = teachers(fam)
    out = tmp_path / "out"
    edits = _edits(fam, experts)
    slicer.shrink(str(teacher), str(out), config_set=edits, method=method, layer_selection=layers, progress=False)
    report = check(out, teacher, family.spec)
    assert not report.problems, "\n".join(report.problems[:10])
    t = _experts_of(family.config)
    s = _experts_of({**family.config, **edits})
    groups = family.config.get("n_group", 1)
    experts_axes = {a: m for a, m in report.members.items() if a.endswith(".E")}
    assert experts_axes, "no experts axis was checked"
    for name, members in experts_axes.items():  # whatever the layer selection: the method's experts
        assert members == _expected_members(method, t, s, groups), (name, members)


def test_the_layer_selection_never_chooses_the_experts(teachers, tmp_path):
    """first layers, uniform elements: the experts are uniform (0, 2, 4, 6), not the first four."""
    out = tmp_path / "out"
    slicer.shrink(str(teachers("mixtral")), str(out), config_set=FAMILIES["mixtral"].edits, method="uniform",
                  layer_selection="first", progress=False)
    report = check(out, teachers("mixtral"), FAMILIES["mixtral"].spec)
    assert report.members["L0.E"] == [0, 2, 4, 6] == report.members["L1.E"]
    manifest = json.loads((out / "slicer_manifest.json").read_text())
    entry = manifest["component_maps"]["model.layers.0.block_sparse_moe.experts"]
    assert entry == {"axis": "model.layers.0.block_sparse_moe:experts", "members": [0, 2, 4, 6]}


def test_group_limited_routing_keeps_whole_groups_and_the_same_experts_in_each(teachers, tmp_path):
    """DeepSeek-V3, n_group=2: 8 experts (2 groups of 4) -> 4 (2 groups of 2): student group g is
    teacher group g, the same local experts in both."""
    out = tmp_path / "out"
    slicer.shrink(str(teachers("deepseek_v3")), str(out), config_set=FAMILIES["deepseek_v3"].edits, method="random",
                  progress=False)
    report = check(out, teachers("deepseek_v3"), FAMILIES["deepseek_v3"].spec)
    assert not report.problems, report.problems[:5]
    for name, members in report.members.items():
        if name.endswith(".E"):
            first, second = members[:2], members[2:]
            assert all(m < 4 for m in first) and all(m >= 4 for m in second), members
            assert [m - 4 for m in second] == first, members


REFUSALS = [
    ("mixtral", {"num_local_experts": 1}, "num_experts_per_tok=2 exceeds the 1 experts"),
    ("mixtral", {"num_experts_per_tok": 9}, "num_experts_per_tok=9 exceeds the 8 experts"),
    ("mixtral", {"num_local_experts": 16}, "num_local_experts=16 exceeds the teacher's 8 experts"),
    ("deepseek_v3", {"n_routed_experts": 3}, "do not split into n_group=2 equal groups"),
    ("deepseek_v3", {"n_group": 4}, "n_group=4 exceeds the teacher's 2"),
    ("deepseek_v3", {"n_routed_experts": 2, "num_experts_per_tok": 1}, "keep at least 2 per group"),
    ("deepseek_v3", {"topk_group": 3}, "topk_group=3 exceeds the student's n_group=2"),
    ("deepseek_v3", {"n_routed_experts": 4, "num_experts_per_tok": 3}, "num_experts_per_tok=3 exceeds the 2 experts of"),
    ("deepseek_v3", {"n_group": 1, "topk_group": 1}, "puts 8 experts in each of its n_group=1 groups"),
    ("deepseek_v3", {"qk_rope_head_dim": 2}, "keep qk_rope_head_dim"),
    ("deepseek_v3", {"num_attention_heads": 4}, "set num_key_value_heads=4"),
    ("deepseek_v3", {"q_lora_rank": None}, "keep q_lora_rank"),
    # 3 value heads over 2 key heads: no whole number of value heads per key head (4 -> 2 is bound now)
    ("qwen3_next", {"linear_num_value_heads": 3}, "linear_num_value_heads"),
    ("llama4_text", {"num_hidden_layers": 5, "moe_layers": [0, 1, 2, 3, 4]}, "a student layer is only ever selected"),
]


@pytest.mark.parametrize("fam, edits, message", REFUSALS, ids=[f"{f}-{'-'.join(e)}" for f, e, _ in REFUSALS])
def test_an_edit_the_model_cannot_honour_is_one_error_line_naming_it(teachers, tmp_path, capfd, fam, edits, message):
    out = tmp_path / "out"
    argv = ["shrink", str(teachers(fam, coded=False)), str(out)]
    for key, value in edits.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    capfd.readouterr()
    rc = cli.main(argv)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("[transformers]")]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("slicer: error: "), err
    assert message in lines[0], lines[0]
    assert not out.exists()


def _kinds(names) -> dict[int, frozenset]:
    """Layer -> the set of its parameter names, member indices blanked (what makes a layer MoE, Mamba, ...)."""
    out: dict[int, set] = {}
    for name in names:
        m = re.fullmatch(LAYERS, name)
        if m:
            out.setdefault(int(m.group(2)), set()).add(re.sub(r"\.\d+\.", ".#.", m.group(3)))
    return {k: frozenset(v) for k, v in out.items()}


HYBRIDS = {  # family -> the layer map each layer selection must give (kinds of the teacher in comments)
    # [attn+dense, mamba+moe, mamba+dense, mamba+moe] x 2 -> the pattern once
    "jamba": {"first": [0, 1, 2, 3], "uniform": [0, 1, 2, 5]},
    # [dense, moe] x 4: dense from 0, 2, 4, 6 and MoE from 1, 3, 5, 7
    "llama4_text": {"first": [0, 1, 2, 3], "uniform": [0, 1, 4, 5]},
    # [linear, full] x 4
    "qwen3_next": {"first": [0, 1, 2, 3], "uniform": [0, 1, 4, 5]},
    # [dense, moe, moe, moe] -> [dense, moe, moe]: the MoE layers uniformly from 1, 2, 3
    "deepseek_v3": {"first": [0, 1, 2], "uniform": [0, 1, 3]},
    # [moe, dense, moe, moe] (mlp_only_layers [1]) -> [moe, dense, moe]
    "qwen2_moe": {"first": [0, 1, 2], "uniform": [0, 1, 3]},
}


@pytest.mark.parametrize("layers", ["first", "uniform"])
@pytest.mark.parametrize("fam", sorted(HYBRIDS))
def test_every_student_layer_is_fed_by_a_teacher_layer_of_its_kind(teachers, tmp_path, fam, layers):
    family = FAMILIES[fam]
    teacher = teachers(fam)
    out = tmp_path / "out"
    slicer.shrink(str(teacher), str(out), config_set=family.edits, layer_selection=layers, progress=False)
    report = check(out, teacher, family.spec)
    assert not report.problems, report.problems[:5]
    got = layer_map(report, LAYERS)
    assert [got[j] for j in sorted(got)] == HYBRIDS[fam][layers]
    student_kinds = _kinds(report.sources)
    teacher_kinds = _kinds(report.sources.values())
    for j, i in got.items():
        assert student_kinds[j] == teacher_kinds[i], (j, i)
    # the config's per-layer lists describe the layers the student holds
    t_cfg, s_cfg = (json.loads((p / "config.json").read_text()) for p in (teacher, out))
    for key in ("layer_types", "no_rope_layers"):
        if key in t_cfg:
            assert s_cfg[key] == [t_cfg[key][got[j]] for j in sorted(got)], key
    for key in ("moe_layers", "mlp_only_layers"):
        if key in t_cfg:
            assert s_cfg[key] == [j for j in sorted(got) if got[j] in t_cfg[key]], key


@pytest.mark.parametrize("fam", ["llama4_text", "jamba"])
def test_depth_only_copies_the_layers_of_each_kind_bit_for_bit(teachers, tmp_path, fam):
    from consistency import read_folder

    teacher = teachers(fam, coded=False)
    out = tmp_path / "out"
    slicer.shrink(str(teacher), str(out), config_set={"num_hidden_layers": 4}, layer_selection="uniform",
                  progress=False)
    got, want = read_folder(out), read_folder(teacher)
    layers = json.loads((out / "slicer_manifest.json").read_text())["layer_maps"]["model.layers"]
    for name, tensor in got.items():
        m = re.fullmatch(LAYERS, name)
        source = f"{m.group(1)}{layers[int(m.group(2))]}{m.group(3)}" if m else name
        assert torch.equal(tensor, want[source]), name
    assert _kinds(got) == {j: _kinds(want)[i] for j, i in enumerate(layers)}


def test_per_layer_lists_that_are_not_about_layers_are_left_alone():
    from slicer.hf.layer_lists import INDICES, PER_LAYER, classify

    llama4 = {**FAMILIES["llama4_text"].config, "num_hidden_layers": 8, "moe_layers": [1, 3, 5, 7],
              "no_rope_layers": [1, 1, 1, 0, 1, 1, 1, 0]}
    got = classify(transformers.Llama4TextConfig, llama4, "num_hidden_layers")
    assert got == {"moe_layers": INDICES, "no_rope_layers": PER_LAYER}
    # InternVL's vision tower: two layers, and an image size of two numbers that has nothing to do with them
    vision = {"num_hidden_layers": 2, "image_size": [448, 448], "patch_size": [14, 14]}
    assert classify(transformers.InternVLVisionConfig, vision, "num_hidden_layers") == {}


def _template(folder, fam: str, edits: dict, with_config: bool = True):
    """What a user has: a randomly initialized student saved with save_pretrained."""
    family = FAMILIES[fam]
    config = {**family.config, **edits}
    cfg = getattr(transformers, family.config_class)(**{k: v for k, v in config.items() if k != "architectures"})
    model = getattr(transformers, config["architectures"][0])(cfg)
    model.config.architectures = config["architectures"]
    model.save_pretrained(folder)
    if not with_config:
        (folder / "config.json").unlink()
    return folder


def test_a_template_with_a_config_keeps_experts_consistent(teachers, tmp_path):
    family = FAMILIES["mixtral"]
    template = _template(tmp_path / "template", "mixtral", family.edits)
    out = tmp_path / "out"
    slicer.shrink(str(teachers("mixtral")), str(out), template=str(template), method="consecutive",
                  layer_selection="uniform", progress=False)
    report = check(out, teachers("mixtral"), family.spec)
    assert not report.problems, report.problems[:5]
    assert report.members["L0.E"] == [0, 1, 2, 3]  # the method's, while the layers are uniform (0, 2)
    assert layer_map(report, LAYERS) == {0: 0, 1: 2}


def test_packed_experts_without_a_config_are_refused(teachers, tmp_path):
    edits = {**FAMILIES["gpt_oss"].edits, "layer_types": ["sliding_attention", "full_attention"]}
    template = _template(tmp_path / "template", "gpt_oss", edits, with_config=False)
    with pytest.raises(slicer.SlicerError, match="packs every expert of a layer"):
        slicer.plan(str(teachers("gpt_oss")), template=str(template))


def test_lists_of_a_nested_text_config_follow_its_layer_map():
    from slicer.hf import layer_lists

    text = {**FAMILIES["llama4_text"].config}
    text.pop("architectures")
    base = {"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"],
            "text_config": {**transformers.Llama4TextConfig(**text).to_dict()}}
    student = json.loads(json.dumps(base))
    student["text_config"]["num_hidden_layers"] = 4
    found = layer_lists.find(base, student, {"text_config.num_hidden_layers": 4}, transformers.Llama4Config,
                             "num_hidden_layers")
    assert {(x.path, x.key, x.kind) for x in found} == {
        ("text_config.", "moe_layers", "indices"), ("text_config.", "no_rope_layers", "per-layer"),
        ("text_config.", "layer_types", "per-layer")}
    layer_lists.provisional(found, student)
    assert student["text_config"]["moe_layers"] == [1, 3]  # the teacher's first four layers: [dense, moe] x 2
    assert layer_lists.apply(found, student, {"text_config.": [0, 1, 4, 5]})
    assert student["text_config"]["moe_layers"] == [1, 3]
    assert student["text_config"]["no_rope_layers"] == [1, 1, 1, 1]  # teacher layers 0, 1, 4, 5: no NoPE layer
