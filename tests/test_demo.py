"""`slicer demo` proves its own student, and its proof can fail."""
from __future__ import annotations

import shutil

import torch
from safetensors.torch import load_file, save_file

import slicer
from slicer import cli
from slicer.cli.demo import _check


def test_demo_checks_its_student_and_the_check_catches_flat_and_swapped_heads(tmp_path, capfd):
    d = tmp_path / "d"
    assert cli.main(["demo", "--keep", str(d)]) == 0
    assert "all equal" in capfd.readouterr().out
    ok, _ = _check(d / "teacher", d / "student")
    assert ok

    # The selection that used to be written by the demo's template route: q/k/v rows flat.
    flat = tmp_path / "flat"
    slicer.shrink(d / "teacher", flat, template=d / "student-init", layer_selection="uniform", attention="flat",
                  progress=False)
    ok, verdict = _check(d / "teacher", flat)
    assert not ok and "self_attn" in verdict, verdict

    # Two query heads swapped in one layer.
    swapped = tmp_path / "swapped"
    shutil.copytree(d / "student", swapped)
    shard = swapped / "model.safetensors"
    state = load_file(shard)
    name = "model.layers.1.self_attn.q_proj.weight"
    w = state[name]
    state[name] = torch.cat([w[64:128], w[0:64], w[128:]])
    save_file(state, shard, metadata={"format": "pt"})
    ok, verdict = _check(d / "teacher", swapped)
    assert not ok and name in verdict, verdict


def test_a_failed_demo_check_exits_1_with_one_line(tmp_path, capfd, monkeypatch):
    import slicer.cli.demo

    monkeypatch.setattr(slicer.cli.demo, "_check", lambda teacher, out: (False, "student tensor x differs"))
    assert cli.main(["demo", "--keep", str(tmp_path / "d"), "--quiet"]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("slicer: error: ") and "differs" in err[0], err
