"""Layer selection: student layer j comes from the right teacher layer, per prefix and per stage.

The expected maps are written out by hand here (not computed), and each student tensor
is compared with the element-selected tensor of the teacher layer the map names.
"""

from __future__ import annotations

import pytest

import helpers
from helpers import assert_bit_equal, gather, read_output, ref_uniform

# Teacher depths: vit 4, llama 6, bert 5, convnext stages (3, 2, 5, 4).
# Student depths: vit 2 (vit_d3: 3, vit_d4: 4), llama 4, bert 2, convnext (1, 2, 3, 2).
CASES = [
    ("vit", "first", {"blocks": [0, 1]}, set()),
    ("vit", "uniform", {"blocks": [0, 2]}, set()),
    ("vit_d3", "first", {"blocks": [0, 1, 2]}, set()),
    ("vit_d3", "uniform", {"blocks": [0, 2, 3]}, set()),      # linspace(0, 3, 3) = [0, 1.5, 3]
    ("vit_d4", "first", {}, {"blocks"}),                      # equal depth: index kept
    ("vit_d4", "uniform", {}, {"blocks"}),
    ("llama", "first", {"model.layers": [0, 1, 2, 3]}, set()),
    ("llama", "uniform", {"model.layers": [0, 2, 3, 5]}, set()),  # 6 % 4 != 0: linspace
    ("bert", "first", {"encoder.layer": [0, 1]}, set()),
    ("bert", "uniform", {"encoder.layer": [0, 4]}, set()),
    ("convnext_timm", "first",
     {"stages.0.blocks": [0], "stages.2.blocks": [0, 1, 2], "stages.3.blocks": [0, 1]},
     {"stages", "stages.1.blocks", "stem", "stages.1.downsample", "stages.2.downsample",
      "stages.3.downsample"}),
    ("convnext_timm", "uniform",
     {"stages.0.blocks": [0], "stages.2.blocks": [0, 2, 4], "stages.3.blocks": [0, 2]},
     {"stages", "stages.1.blocks", "stem", "stages.1.downsample", "stages.2.downsample",
      "stages.3.downsample"}),
    ("convnext_orig", "first",
     {"stages.0": [0], "stages.2": [0, 1, 2], "stages.3": [0, 1]},
     {"stages", "stages.1", "downsample_layers", "downsample_layers.0", "downsample_layers.3"}),
    ("convnext_orig", "uniform",
     {"stages.0": [0], "stages.2": [0, 2, 4], "stages.3": [0, 2]},
     {"stages", "stages.1", "downsample_layers", "downsample_layers.0", "downsample_layers.3"}),
]


def _teacher_name(student_name: str, maps: dict) -> str:
    """Replace the layer index right after a mapped prefix with the mapped teacher index."""
    for prefix, m in maps.items():
        p = prefix.split(".")
        parts = student_name.split(".")
        if parts[:len(p)] == p and len(parts) > len(p) and parts[len(p)].isdigit():
            parts[len(p)] = str(m[int(parts[len(p)])])
            return ".".join(parts)
    return student_name


@pytest.mark.parametrize("fam,layer_selection,maps,kept", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_student_layer_comes_from_the_mapped_teacher_layer(ckpts, tmp_path, fam, layer_selection, maps, kept):
    import slicer
    teacher, tstate = ckpts.teacher(fam)
    template, shapes = ckpts.template(fam)
    # The hand-written maps agree with the test reference (guards the reference itself).
    assert helpers.ref_layer_maps(list(tstate), list(shapes), layer_selection) == maps
    mapper = helpers.LayerMapper(list(tstate), list(shapes), layer_selection)
    for n in shapes:
        mapper.source(n)
    assert kept <= mapper.kept
    slicer.shrink(str(teacher), str(tmp_path / "out"), template=str(template),
                  layer_selection=layer_selection, progress=False)
    got, info = read_output(tmp_path / "out")
    assert sorted(got) == sorted(shapes)
    for name, shape in shapes.items():
        src = tstate[_teacher_name(name, maps)]
        want = gather(src, [ref_uniform(t, s) for t, s in zip(src.shape, shape)])
        assert_bit_equal(got[name], want, f"{name} <- {_teacher_name(name, maps)}")
        assert info["manifest"]["tensors"][name]["source"] == _teacher_name(name, maps)
    # The manifest records the maps where depths differ; equal depths keep the index.
    recorded = {k.rstrip("."): list(v) for k, v in info["manifest"]["layer_maps"].items()}
    for prefix, m in maps.items():
        assert recorded.get(prefix) == m, (prefix, recorded)
    for prefix in kept:
        assert prefix not in recorded or recorded[prefix] == list(range(len(recorded[prefix]))), (
            prefix, recorded[prefix])


def test_convnext_stage_depths_are_mapped_per_stage_not_globally(ckpts, tmp_path):
    """Stage 2 of the student (3 blocks) draws from stage 2 of the teacher (5 blocks) only."""
    import slicer
    teacher, tstate = ckpts.teacher("convnext_timm")
    template, shapes = ckpts.template("convnext_timm")
    slicer.shrink(str(teacher), str(tmp_path / "out"), template=str(template),
                  layer_selection="uniform", progress=False)
    got, _ = read_output(tmp_path / "out")
    name = "stages.2.blocks.2.mlp.fc1.weight"
    src = tstate["stages.2.blocks.4.mlp.fc1.weight"]
    want = gather(src, [ref_uniform(t, s) for t, s in zip(src.shape, shapes[name])])
    assert_bit_equal(got[name], want, name)
    # Stage 1 has equal depth (2 -> 2) although every other stage is shallower.
    name = "stages.1.blocks.1.gamma"
    src = tstate["stages.1.blocks.1.gamma"]
    assert_bit_equal(got[name], gather(src, [ref_uniform(src.shape[0], shapes[name][0])]), name)
