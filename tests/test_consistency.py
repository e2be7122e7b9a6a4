"""Consistency across tensors, proven from the values (tests/consistency.py), family by family.

For each family a tiny teacher is built by transformers twice: with random weights (its
student must load with from_pretrained, no missing / unexpected / mismatched keys, and give
finite outputs) and with coded weights (its student is decoded element by element: each
kept teacher neuron, head, expert or block must sit at the same place in every tensor that
touches it). Identity (the teacher's own config) must give back the teacher bit for bit.
"""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import slicer  # noqa: E402
from consistency import check, layer_map, read_folder  # noqa: E402
from families import FAMILIES, build, example_inputs  # noqa: E402

METHODS = ["uniform", "consecutive", "random"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    made = {}

    def get(fam: str, coded: bool):
        key = (fam, coded)
        if key not in made:
            made[key] = build(root / f"{fam}-{'coded' if coded else 'random'}", FAMILIES[fam], coded=coded)
        return made[key]

    return get


def _shrink(teacher, out, **kw):
    kw.setdefault("progress", False)
    return slicer.shrink(str(teacher), str(out), **kw)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fam", sorted(FAMILIES))
def test_every_kept_member_sits_at_the_same_place_in_every_tensor(teachers, tmp_path, fam, method):
    family = FAMILIES[fam]
    teacher = teachers(fam, coded=True)
    out = tmp_path / "out"
    _shrink(teacher, out, config_set=family.edits, method=method, layer_selection="uniform")
    report = check(out, teacher, family.spec)
    assert not report.problems, "\n".join(report.problems[:10])
    assert report.members, "the spec checked nothing"
    assert layer_map(report)  # the depth really changed and was read from the values
    verified = slicer.verify(out, teacher=teacher)  # the manifest proves the same from its axes
    assert verified.ok, verified.problems[:5]
    assert verified.dimensions_audited > 0


@pytest.mark.parametrize("fam", sorted(FAMILIES))
def test_student_loads_cleanly_and_runs(teachers, tmp_path, fam):
    family = FAMILIES[fam]
    teacher = teachers(fam, coded=False)
    out = tmp_path / "out"
    _shrink(teacher, out, config_set=family.edits)
    config = json.loads((out / "config.json").read_text())
    cls = getattr(transformers, config["architectures"][0])
    model, info = cls.from_pretrained(out, output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(key), f"{key}: {info.get(key)}"
    with torch.no_grad():
        out = model.eval()(**example_inputs(family, config))
    logits = out["logits"] if "logits" in out else out["logits_per_image"]  # dual encoders (CLIP) score image-text pairs
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("fam", sorted(FAMILIES))
def test_the_teachers_own_config_gives_back_the_teacher(teachers, tmp_path, fam):
    teacher = teachers(fam, coded=False)
    out = tmp_path / "out"
    _shrink(teacher, out, student_config=teacher / "config.json")
    got, want = read_folder(out), read_folder(teacher)
    assert sorted(got) == sorted(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_the_checker_catches_an_inconsistent_student(teachers, tmp_path):
    """A test that cannot fail is a defect: the ablation that breaks consistency must be caught."""
    family = FAMILIES["llama"]
    teacher = teachers("llama", coded=True)
    out = tmp_path / "out"
    _shrink(teacher, out, config_set=family.edits, method="random-inconsistent")
    report = check(out, teacher, family.spec)
    assert any("axis" in p for p in report.problems), report.problems[:3]


def test_the_checker_catches_a_row_of_another_neuron(teachers, tmp_path):
    from safetensors.torch import load_file, save_file

    family = FAMILIES["llama"]
    teacher = teachers("llama", coded=True)
    out = tmp_path / "out"
    _shrink(teacher, out, config_set=family.edits)
    shard = next(p for p in sorted(out.glob("*.safetensors")) if "model.layers.0.mlp.up_proj.weight" in load_file(p))
    state = load_file(shard)
    w = state["model.layers.0.mlp.up_proj.weight"]
    state["model.layers.0.mlp.up_proj.weight"] = torch.cat([w[1:2], w[0:1], w[2:]])  # two neurons swapped in `up`
    save_file(state, shard, metadata={"format": "pt"})
    report = check(out, teacher, family.spec)
    assert any("L0.ffn" in p or "ffn" in p for p in report.problems), report.problems[:3]


def test_verify_catches_a_manifest_whose_dimension_leaves_its_axes(teachers, tmp_path):
    family = FAMILIES["llama"]
    teacher = teachers("llama", coded=True)
    out = tmp_path / "out"
    _shrink(teacher, out, config_set=family.edits)
    path = out / "slicer_manifest.json"
    manifest = json.loads(path.read_text())
    rec = manifest["tensors"]["model.layers.1.mlp.up_proj.weight"]
    other = "consecutive:128->48"  # a set of the right size, but not the FFN axis's
    manifest["index_sets"][other] = {"t": 128, "s": 48, "start": 0, "step": 1}
    rec["index"][0] = other
    path.write_text(json.dumps(manifest))
    report = slicer.verify(out)
    assert any("model.layers.1.mlp.up_proj.weight" in p and "inconsistent" in p for p in report.problems), report.problems
