"""Nested configs, multimodal bridges, vision stages and Mamba sections: what is refused (one line,
before anything is written), what config.json keeps, and which axes the manifest names.

The consistency of every family (values decoded tensor by tensor) is tests/test_consistency.py's;
these tests pin the edges around it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import slicer  # noqa: E402
from families import FAMILIES, build  # noqa: E402
from slicer.errors import SlicerError  # noqa: E402

@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("nested")
    made = {}

    def get(fam: str) -> Path:
        if fam not in made:
            made[fam] = build(root / fam, FAMILIES[fam], coded=False)
        return made[fam]

    return get


def _shrink(teacher: Path, out: Path, **edits):
    return slicer.shrink(str(teacher), str(out), config_set=edits, progress=False)


def _axes(out: Path) -> dict[str, list[str]]:
    """Student tensor -> the layout of each dimension, as the manifest records it."""
    manifest = json.loads((out / "slicer_manifest.json").read_text())
    return {name: t["axes"] for name, t in manifest["tensors"].items()}


def _refused(teacher: Path, out: Path, edits: dict, *words: str) -> str:
    with pytest.raises(SlicerError) as e:
        slicer.shrink(str(teacher), str(out), config_set=edits, progress=False)
    message = str(e.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message
    assert not out.exists(), "nothing may be written for a refused edit"
    return message


# ------------------------------------------------------------------ config edits

def test_a_typo_in_a_nested_key_is_refused_naming_the_key_and_its_config_class(teacher, tmp_path):
    _refused(teacher("llava"), tmp_path / "out", {"text_config.hiden_size": 32},
             "text_config.hiden_size", "LlamaConfig", "no such key")
    _refused(teacher("llava"), tmp_path / "out", {"vision_config.hidden_sise": 16},
             "vision_config.hidden_sise", "CLIPVisionConfig")


def test_a_nested_key_goes_through_its_own_attribute_map(teacher, tmp_path):
    # Qwen2-VL's vision config calls its depth "depth" and its heads "num_heads"
    _shrink(teacher("qwen2_vl"), tmp_path / "out", **{"vision_config.num_hidden_layers": 1,
                                                       "vision_config.num_attention_heads": 2,
                                                       "vision_config.embed_dim": 16})
    vision = json.loads((tmp_path / "out" / "config.json").read_text())["vision_config"]
    assert (vision["depth"], vision["num_heads"]) == (1, 2)
    assert "num_hidden_layers" not in vision and "num_attention_heads" not in vision


def test_impossible_nested_heads_are_refused_with_one_line_before_anything_is_written(teacher, tmp_path, capfd,
                                                                                    monkeypatch):
    from slicer import cli

    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["slicer", "shrink", str(teacher("llava")), str(out), "--quiet",
                                      "--set", "text_config.num_key_value_heads=3"])
    capfd.readouterr()
    try:  # the console script's entry point, in-process (a subprocess costs seconds)
        rc = cli.main()
    except SystemExit as e:
        rc = e.code
    err = capfd.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("slicer: error: "), err
    assert "text_config.num_key_value_heads=3" in lines[0] and "not a multiple" in lines[0], lines[0]
    assert not out.exists()


def test_a_vision_depth_edit_leaves_lists_that_merely_have_the_depths_length(teacher, tmp_path):
    # InternVL's vision config: depth 2, image_size [16, 16], patch_size [4, 4]
    _shrink(teacher("internvl"), tmp_path / "out", **{"vision_config.num_hidden_layers": 1})
    vision = json.loads((tmp_path / "out" / "config.json").read_text())["vision_config"]
    assert vision["num_hidden_layers"] == 1
    assert vision["image_size"] == [16, 16] and vision["patch_size"] == [4, 4]


def test_a_nested_depth_edit_still_shortens_the_per_layer_lists(teacher, tmp_path):
    _shrink(teacher("gemma3"), tmp_path / "out", **{"text_config.num_hidden_layers": 2})
    text = json.loads((tmp_path / "out" / "config.json").read_text())["text_config"]
    assert len(text["layer_types"]) == 2


def test_layer_numbers_in_a_nested_config_follow_the_kept_layers_or_are_refused(teacher, tmp_path):
    src = teacher("qwen2_5_vl")  # vision depth 2, fullatt_block_indexes [0]
    _shrink(src, tmp_path / "kept", **{"vision_config.depth": 1})
    assert json.loads((tmp_path / "kept" / "config.json").read_text())["vision_config"]["fullatt_block_indexes"] == [0]
    config = json.loads((src / "config.json").read_text())
    config["vision_config"]["fullatt_block_indexes"] = [1]
    (tmp_path / "t").mkdir()
    for f in src.iterdir():
        (tmp_path / "t" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "t" / "config.json").write_text(json.dumps(config))
    # one layer cannot hold a pattern of one full-attention block in two
    _refused(tmp_path / "t", tmp_path / "out", {"vision_config.depth": 1},
             "vision_config.fullatt_block_indexes = [1]", "the first 1 hold 0 of them", "no shallower depth keeps it")
    # other layer selections renumber to the layers they keep, and refuse one that names a cut layer
    with pytest.raises(SlicerError, match=r"names teacher layers the student does not keep"):
        slicer.shrink(str(tmp_path / "t"), str(tmp_path / "out"), config_set={"vision_config.depth": 1},
                      layer_selection="uniform", progress=False)


def test_a_vision_tower_halved_in_depth_keeps_the_share_of_full_attention_blocks(tmp_path):
    """Qwen2.5-VL's vision blocks: window attention, except those fullatt_block_indexes names (one in two
    here, one in eight in the released models); halved by default, the student keeps one in two."""
    import copy

    import transformers

    fam = FAMILIES["qwen2_5_vl"]
    config = copy.deepcopy(fam.config)
    config["vision_config"].update(depth=4, fullatt_block_indexes=[1, 3])
    src = build(tmp_path / "teacher", fam, coded=False, config=config)
    _shrink(src, tmp_path / "out", **{"vision_config.depth": 2})
    vision = json.loads((tmp_path / "out" / "config.json").read_text())["vision_config"]
    assert vision["depth"] == 2 and vision["fullatt_block_indexes"] == [1]
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert model.config.vision_config.fullatt_block_indexes == [1]
    assert len(model.model.visual.blocks) == 2
    # three blocks cannot hold one in two: refused, naming the depths that can
    _refused(src, tmp_path / "out3", {"vision_config.depth": 3}, "vision_config.fullatt_block_indexes = [1, 3]",
             "the first 3 hold 1 of them", "a depth of 2 keeps it")


def test_a_config_transformers_wrote_with_infinity_is_read_back_and_kept_as_written(teacher, tmp_path):
    src = teacher("mamba2")
    written = json.loads((src / "config.json").read_text())
    assert written["time_step_limit"][1] == {"__float__": "Infinity"}  # how transformers 5 writes inf
    _shrink(src, tmp_path / "out", num_hidden_layers=2)
    student = json.loads((tmp_path / "out" / "config.json").read_text())
    assert student["time_step_limit"] == written["time_step_limit"]
    import transformers

    config = transformers.AutoConfig.from_pretrained(tmp_path / "out")
    assert list(config.time_step_limit) == [0.0, float("inf")]


def test_granite_4_hybrid_teachers_round_trip_their_config(teacher, tmp_path):
    src = teacher("granite_hybrid")
    assert "__float__" in (src / "config.json").read_text()
    _shrink(src, tmp_path / "out", mamba_d_state=4)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["mamba_d_state"] == 4


# ------------------------------------------------------------------ what the towers share

def test_a_projector_whose_output_no_longer_fits_the_language_model_is_refused_with_a_hint(teacher, tmp_path):
    _refused(teacher("qwen2_vl"), tmp_path / "out", {"text_config.hidden_size": 32},
             "model.visual.merger", "writes 64 features", "hidden size is 32", "vision_config.hidden_size")
    _refused(teacher("paligemma"), tmp_path / "out", {"text_config.hidden_size": 32}, "projection_dim")


def test_siglip_text_head_must_keep_landing_in_the_vision_width(teacher, tmp_path):
    _refused(teacher("siglip"), tmp_path / "out", {"vision_config.hidden_size": 16},
             "text_model.head.weight", "text_config.projection_size")


def test_the_manifest_binds_the_bridges_to_the_axes_of_both_towers(teacher, tmp_path):
    fam = FAMILIES["qwen2_5_vl"]
    _shrink(teacher("qwen2_5_vl"), tmp_path / "out", **fam.edits)
    axes = _axes(tmp_path / "out")
    assert axes["visual.merger.mlp.0.weight"] == ["visual.merger:ffn", "4 * vision_config.hidden"]
    assert axes["visual.merger.mlp.2.weight"] == ["text_config.hidden", "visual.merger:ffn"]
    assert axes["visual.merger.ln_q.weight"] == ["vision_config.hidden"]
    assert axes["model.layers.0.mlp.up_proj.weight"][1] == "text_config.hidden"


def test_clip_projections_share_one_projection_axis(teacher, tmp_path):
    fam = FAMILIES["clip"]
    _shrink(teacher("clip"), tmp_path / "out", **fam.edits)
    axes = _axes(tmp_path / "out")
    assert axes["text_projection.weight"] == ["projection", "text_config.hidden"]
    assert axes["visual_projection.weight"] == ["projection", "vision_config.hidden"]


def test_a_connector_holding_a_model_of_its_own_is_copied_and_never_guessed(tmp_path):
    """Idefics2's connector runs a perceiver (its own sub-config) between the towers: identity and depth-only
    runs copy it; a width change that reaches it is refused, naming it."""
    from consistency import Spec
    from families import Family
    from families_multimodal import TEXT as TEXT_BASE

    fam = Family("Idefics2Config", dict(
        architectures=["Idefics2ForConditionalGeneration"], image_token_id=95, text_config=dict(model_type="mistral",
                                                                                                **TEXT_BASE),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=16, patch_size=4),
        perceiver_config=dict(hidden_size=64, resampler_n_latents=4, resampler_depth=1, resampler_n_heads=4,
                              resampler_head_dim=8, num_key_value_heads=2)), {}, Spec([], {}))
    src = build(tmp_path / "idefics2", fam, coded=False)
    _shrink(src, tmp_path / "depth", **{"text_config.num_hidden_layers": 1})
    _refused(src, tmp_path / "out", {"text_config.intermediate_size": 48, "vision_config.hidden_size": 16},
             "model.connector", "holds a model of its own")


# ------------------------------------------------------------------ vision encoders

def test_a_smaller_patch_grid_is_refused_not_cut_to_the_first_positions(teacher, tmp_path):
    _refused(teacher("llava"), tmp_path / "out", {"vision_config.image_size": 8},
             "vision_tower.embeddings.position_embedding.weight", "patch grid", "image_size")


def test_a_smaller_swin_window_is_refused(teacher, tmp_path):
    _refused(teacher("swin"), tmp_path / "out", {"window_size": 2}, "relative_position_bias_table", "window_size")


def test_swin_stages_have_their_own_channel_axes(teacher, tmp_path):
    _shrink(teacher("swin"), tmp_path / "out", **FAMILIES["swin"].edits)
    axes = _axes(tmp_path / "out")
    assert axes["swin.encoder.layers.0.downsample.reduction.weight"] == [
        "swin.encoder.layers.1:channels", "4 * swin.encoder.layers.0:channels"]
    assert axes["swin.encoder.layers.1.blocks.0.attention.self.relative_position_bias_table"][1] == \
        "swin.encoder.layers.1.blocks.0.attention:q-heads"
    assert axes["classifier.weight"][1] == "swin.encoder.layers.1:channels"


def test_convnext_stages_and_layers_have_their_own_axes(teacher, tmp_path):
    _shrink(teacher("convnext"), tmp_path / "out", **FAMILIES["convnext"].edits)
    axes = _axes(tmp_path / "out")
    stage = "convnext.encoder.stages"
    assert axes[f"{stage}.1.downsampling_layer.1.weight"][:2] == [f"{stage}.1:channels", f"{stage}.0:channels"]
    assert axes[f"{stage}.0.layers.0.pwconv1.weight"] == [f"{stage}.0.layers.0:ffn", f"{stage}.0:channels"]
    assert axes[f"{stage}.0.layers.0.dwconv.weight"][0] == f"{stage}.0:channels"
    assert axes["convnext.embeddings.patch_embeddings.weight"][0] == f"{stage}.0:channels"


# ------------------------------------------------------------------ state-space models

def test_mamba2_heads_that_no_longer_fit_whole_groups_are_refused(teacher, tmp_path):
    _refused(teacher("mamba2"), tmp_path / "out", {"n_groups": 1}, "heads per group", "n_groups")


def test_mamba2_conv_kernel_is_kept_whole(teacher, tmp_path):
    _refused(teacher("mamba2"), tmp_path / "out", {"conv_kernel": 2}, "conv1d", "kernel")


def test_mamba2_in_proj_is_bound_section_by_section(teacher, tmp_path):
    _shrink(teacher("mamba2"), tmp_path / "out", **FAMILIES["mamba2"].edits)
    axes = _axes(tmp_path / "out")
    m = "backbone.layers.0.mixer"
    inner, bc = f"{m}:ssm-heads * {m}:ssm-head-dim", f"{m}:groups * {m}:state"
    assert axes[f"{m}.in_proj.weight"] == [f"{inner} | {inner} | {bc} | {bc} | {m}:ssm-heads", "hidden"]
    assert axes[f"{m}.conv1d.weight"][0] == f"{inner} | {bc} | {bc}"
    assert axes[f"{m}.A_log"] == [f"{m}:ssm-heads"]
