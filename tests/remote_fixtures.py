"""Shared pieces of the remote-teacher tests: a Llama-shaped teacher, its half-size template, servers.

The teacher is bf16, Llama-shaped (hidden 256, 4 layers, intermediate 512, 128-wide
k/v, vocab 256), in 3 shards with an index, a config.json and tokenizer files; the
template is half its width and half its depth. ``local_student`` is what the local run
writes: every remote run must write the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import helpers
from remote_server import RangeServer

TEACHER = dict(hidden=256, inter=512, layers=4, kv=128, vocab=256)
STUDENT = dict(hidden=128, inter=256, layers=2, kv=64, vocab=256)
SIDE_FILES = {"tokenizer.json": '{"version": "1.0", "note": "not a real tokenizer"}\n',
              "tokenizer_config.json": '{"model_max_length": 32}\n',
              "generation_config.json": '{"bos_token_id": 1}\n'}


def build_teacher(dest: Path) -> Path:
    spec = {k: (v, torch.bfloat16) for k, v in helpers.llama_shapes(**TEACHER).items()}
    state = helpers.make_state(spec, seed=7)
    helpers.write_checkpoint(state, dest, "sharded", config={"model_type": "llama", "note": "remote tests"})
    for name, text in SIDE_FILES.items():
        (dest / name).write_text(text)
    return dest


def build_template(dest: Path) -> Path:
    state = helpers.make_state(helpers.llama_shapes(**STUDENT), seed=8)
    return helpers.write_checkpoint(state, dest, "folder")


def tree(root: Path, manifest: bool = False) -> dict:
    """File name -> sha256 of a student folder (the manifest left out: it names the teacher)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(root).iterdir())
            if p.is_file() and (manifest or p.name != "slicer_manifest.json")}


def header_bytes(folder: Path) -> int:
    """Length prefix + JSON of every safetensors file (what a header read must fetch)."""
    total = 0
    for p in sorted(folder.glob("*.safetensors")):
        with open(p, "rb") as f:
            total += 8 + int.from_bytes(f.read(8), "little")
    return total


@pytest.fixture(scope="session")
def remote_root(tmp_path_factory) -> dict:
    """Served files (teacher/), the template, and the local run's student."""
    root = tmp_path_factory.mktemp("remote")
    served = root / "served"
    teacher = build_teacher(served / "teacher")
    template = build_template(root / "template")
    local = root / "local"
    import slicer

    slicer.shrink(teacher, local, template=template, max_shard_size="300KB")
    return {"root": root, "served": served, "teacher": teacher, "template": template, "local": local,
            "local_tree": tree(local), "manifest": json.loads((local / "slicer_manifest.json").read_text())}


@pytest.fixture
def server(remote_root, tmp_path):
    """A fresh copy of the teacher (tests change files) behind a RangeServer."""
    served = tmp_path / "served"
    shutil.copytree(remote_root["served"], served)
    with RangeServer(served) as srv:
        srv.teacher_dir = served / "teacher"
        srv.teacher_url = srv.url + "/teacher/"
        yield srv


@pytest.fixture
def hub_at(monkeypatch, tmp_path):
    """A function: point huggingface_hub at a RangeServer (no token, no offline mode from the machine)."""
    from huggingface_hub import constants

    def point(srv: RangeServer) -> RangeServer:
        monkeypatch.setattr(constants, "ENDPOINT", srv.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", srv.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        return srv

    return point
