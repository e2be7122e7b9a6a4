"""The transformers route paid once (slicer.hf.route_cache): a repeated run of an HF pair (config.json
beside teacher and template) replays the bindings without importing transformers or torch, writes
the very bytes a derived run writes, and never trusts an entry that is damaged or answers other
questions."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import slicer

transformers = pytest.importorskip("transformers")

from families import FAMILIES, build  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _pair(tmp_path):
    """A coded Llama teacher and a save_pretrained student template (narrower, shallower), both with config.json."""
    family = FAMILIES["llama"]
    teacher = build(tmp_path / "teacher", family, coded=True)
    cfg = dict(family.config, **family.edits)
    config = transformers.LlamaConfig(**{k: v for k, v in cfg.items() if k != "architectures"})
    model = transformers.LlamaForCausalLM(config)
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(tmp_path / "template")
    return teacher, tmp_path / "template"


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "routes").glob("*.json")) if (cache / "routes").is_dir() else []


def _bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix == ".safetensors"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("SLICER_CACHE", str(folder))
    return folder


def test_a_repeated_run_replays_the_bindings_and_writes_the_same_bytes(tmp_path, cache):
    teacher, template = _pair(tmp_path)
    derived = slicer.shrink(teacher, tmp_path / "derived", template=template, route_cache=False)
    assert _entries(cache) == []  # --no-cache neither reads nor writes
    slicer.shrink(teacher, tmp_path / "first", template=template)
    (entry,) = _entries(cache)
    replayed = slicer.shrink(teacher, tmp_path / "again", template=template)
    assert _entries(cache) == [entry]
    want = _bytes(tmp_path / "derived")
    assert want and _bytes(tmp_path / "first") == want and _bytes(tmp_path / "again") == want
    assert derived.bytes_written == replayed.bytes_written
    manifest = json.loads((tmp_path / "again" / "slicer_manifest.json").read_text())
    assert manifest["binding"] == "transformers" and manifest["options"]["attention"] == "heads"
    derived_manifest = json.loads((tmp_path / "derived" / "slicer_manifest.json").read_text())
    assert manifest["axes"] == derived_manifest["axes"]


def test_a_replayed_plan_imports_neither_transformers_nor_torch(tmp_path, cache, subprocess_env):
    teacher, template = _pair(tmp_path)
    first = slicer.plan(teacher, template=template)
    assert len(_entries(cache)) == 1
    code = ("import sys, json, slicer\n"
            f"p = slicer.plan({str(teacher)!r}, template={str(template)!r})\n"
            "print(json.dumps([p.binding, len(p.jobs), 'transformers' in sys.modules, 'torch' in sys.modules]))\n")
    env = dict(subprocess_env, SLICER_CACHE=str(cache))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == ["transformers", len(first.jobs), False, False]


def test_a_damaged_entry_is_ignored_and_rewritten(tmp_path, cache, caplog):
    teacher, template = _pair(tmp_path)
    slicer.shrink(teacher, tmp_path / "derived", template=template, route_cache=False)
    slicer.plan(teacher, template=template)
    (entry,) = _entries(cache)
    good = entry.read_bytes()
    damaged = good.replace(b'"bind"', b'"bynd"', 1)  # the checksum no longer matches
    assert damaged != good
    for bad in (damaged, good[: len(good) // 2], b"\x00\xff not json"):
        entry.write_bytes(bad)
        caplog.clear()
        out = tmp_path / f"out{len(bad)}"
        slicer.shrink(teacher, out, template=template)
        assert "damaged bindings cache entry" in caplog.text
        assert _bytes(out) == _bytes(tmp_path / "derived")
        assert json.loads(entry.read_bytes())["sha256"] == json.loads(good)["sha256"]  # derived and kept again


def test_an_entry_that_answers_other_questions_is_not_replayed(tmp_path, cache, caplog):
    """A valid checksum over a recording of another plan (a bug, or a key that missed a dependency):
    the first question it cannot answer sends the plan back to the derived bindings."""
    import hashlib

    from slicer.hf.route_cache import _canonical

    teacher, template = _pair(tmp_path)
    slicer.shrink(teacher, tmp_path / "derived", template=template, route_cache=False)
    slicer.plan(teacher, template=template)
    (entry,) = _entries(cache)
    obj = json.loads(entry.read_text())
    binds = [c for c in obj["payload"]["calls"] if c[0] == "bind"]
    binds[0][1][0] = "model.layers.0.not_a_tensor.weight"  # the question it recorded is not the one asked
    obj["sha256"] = hashlib.sha256(_canonical(obj["payload"])).hexdigest()
    entry.write_text(json.dumps(obj))
    caplog.clear()
    slicer.shrink(teacher, tmp_path / "out", template=template)
    assert "deriving them again" in caplog.text
    assert _bytes(tmp_path / "out") == _bytes(tmp_path / "derived")


def test_the_key_follows_the_configs_and_the_options(tmp_path, cache):
    teacher, template = _pair(tmp_path)
    slicer.plan(teacher, template=template)
    slicer.plan(teacher, template=template, attention="flat")
    slicer.plan(teacher, template=template, method="random", seed=3)
    assert len(_entries(cache)) == 3
    config = json.loads((template / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3  # any change of the student's config is another key
    (template / "config.json").write_text(json.dumps(config))
    slicer.plan(teacher, template=template)
    assert len(_entries(cache)) == 4


def test_cli_no_cache_and_the_cache_folder(tmp_path, cache, subprocess_env):
    teacher, template = _pair(tmp_path)
    env = dict(subprocess_env, SLICER_CACHE=str(cache))
    run = lambda *a: subprocess.run([sys.executable, "-m", "slicer", "plan", str(teacher), "--template", str(template),
                                     *a], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    r = run("--no-cache")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _entries(cache) == []
    r = run()
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(_entries(cache)) == 1
    xdg = dict(env, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    xdg.pop("SLICER_CACHE")
    r = subprocess.run([sys.executable, "-m", "slicer", "plan", str(teacher), "--template", str(template)], cwd=ROOT,
                       env=xdg, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(_entries(tmp_path / "xdg" / "slicer")) == 1


def test_an_unwritable_cache_costs_only_a_warning(tmp_path, monkeypatch, caplog):
    teacher, template = _pair(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SLICER_CACHE", str(blocker))
    slicer.shrink(teacher, tmp_path / "out", template=template)
    assert "cannot keep the bindings" in caplog.text
    assert _bytes(tmp_path / "out")
    assert os.listdir(tmp_path / "out")


def test_the_config_route_is_kept_too(tmp_path, cache, subprocess_env):
    """--set: the student's names, shapes, origin and config.json, and its bindings, replayed."""
    family = FAMILIES["llama"]
    teacher = build(tmp_path / "teacher", family, coded=True)
    (teacher / "tokenizer_config.json").write_text("{}")
    edits = dict(family.edits)
    slicer.shrink(teacher, tmp_path / "derived", config_set=edits, route_cache=False)
    assert _entries(cache) == []
    slicer.shrink(teacher, tmp_path / "first", config_set=edits)
    assert len(_entries(cache)) == 2  # the student spec and its bindings
    code = ("import sys, json, slicer\n"
            f"s = slicer.shrink({str(teacher)!r}, {str(tmp_path / 'again')!r}, config_set={edits!r}, backend='numpy',\n"
            "                   device='cpu')\n"
            "print(json.dumps(['transformers' in sys.modules, s.tensors_written]))\n")
    env = dict(subprocess_env, SLICER_CACHE=str(cache))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)[0] is False
    want = _bytes(tmp_path / "derived")
    assert want and _bytes(tmp_path / "first") == want and _bytes(tmp_path / "again") == want
    for name in ("config.json", "tokenizer_config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "derived" / name).read_bytes()
    a = json.loads((tmp_path / "again" / "slicer_manifest.json").read_text())
    b = json.loads((tmp_path / "derived" / "slicer_manifest.json").read_text())
    assert a["student"] == b["student"] and a["axes"] == b["axes"]
