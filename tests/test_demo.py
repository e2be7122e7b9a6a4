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
    out = capfd.readouterr().out
    assert "all equal" in out and "whole attention heads" in out  # transformers is installed here
    ok, _ = _check(d / "teacher", d / "student")
    assert ok

    # A flat run (what the plain install does) is checked as flat, from its own manifest.
    flat = tmp_path / "flat"
    slicer.shrink(d / "teacher", flat, template=d / "student-init", layer_selection="uniform", attention="flat",
                  progress=False)
    ok, verdict = _check(d / "teacher", flat)
    assert ok and "selected flat" in verdict, verdict

    # Flat bits under the heads run's manifest: the check reads the layouts and catches it.
    mixed = tmp_path / "mixed"
    shutil.copytree(d / "student", mixed)
    shutil.copy(flat / "model.safetensors", mixed / "model.safetensors")
    ok, verdict = _check(d / "teacher", mixed)
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


def test_the_demo_passes_without_transformers_and_says_it_selected_flat(tmp_path):
    """The README's first command on the plain install (no transformers): flat, checked as flat."""
    import subprocess
    import sys

    # A meta-path finder that refuses transformers, as on an install without the [hf] extra.
    code = ("import sys\n"
            "class NoHF:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'transformers' or name.startswith('transformers.'):\n"
            "            raise ModuleNotFoundError(\"No module named 'transformers'\", name='transformers')\n"
            "sys.meta_path.insert(0, NoHF())\n"
            "from slicer.cli import main\n"
            "sys.exit(main(['demo', '--keep', sys.argv[1]]))\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "d")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "selected flat" in r.stdout and "all equal" in r.stdout, r.stdout
    assert "Traceback" not in r.stderr, r.stderr


def test_a_failed_demo_check_exits_1_with_one_line(tmp_path, capfd, monkeypatch):
    import slicer.cli.demo

    monkeypatch.setattr(slicer.cli.demo, "_check", lambda teacher, out: (False, "student tensor x differs"))
    assert cli.main(["demo", "--keep", str(tmp_path / "d"), "--quiet"]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("slicer: error: ") and "differs" in err[0], err
