"""Shared fixtures: small checkpoints written once per session with safetensors.save_file."""

from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path

import pytest
import torch

_TESTS = Path(__file__).resolve().parent
_ROOT = _TESTS.parent
for p in (str(_ROOT), str(_TESTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

pytest.register_assert_rewrite("helpers")
pytest_plugins = ["remote_fixtures"]  # the remote tests' server and teacher fixtures, found by name

import helpers  # noqa: E402


def _seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


class Checkpoints:
    """Teacher and template checkpoints per (family, layout), written on first use."""

    def __init__(self, root: Path):
        self.root = root
        self._teachers: dict = {}
        self._templates: dict = {}
        self._states: dict = {}

    def teacher_state(self, fam: str) -> dict:
        if fam not in self._states:
            spec, _, bits = helpers.family(fam)
            self._states[fam] = helpers.make_state(spec, seed=_seed("teacher", fam), bits=bits)
        return self._states[fam]

    def teacher(self, fam: str, layout: str = "folder"):
        """-> (path to pass as TEACHER, state dict)."""
        key = (fam, layout)
        if key not in self._teachers:
            state = self.teacher_state(fam)
            dest = self.root / "teachers" / f"{fam}-{layout}"
            self._teachers[key] = helpers.write_checkpoint(state, dest, layout)
        return self._teachers[key], self._states[fam]

    def template(self, fam: str, layout: str = "folder"):
        """-> (path to pass as --template, {name: shape}). Folders get a config.json."""
        key = (fam, layout)
        _, student, _ = helpers.family(fam)
        if key not in self._templates:
            # The template's values are never used. Its dtypes follow the teacher's, except
            # for llama: a float32 template (fresh HF init) for a bf16 teacher, and
            # dtype="keep" must keep the teacher's dtype.
            spec, _, _ = helpers.family(fam)
            tspec = {}
            for n, s in student.items():
                t = spec.get(n)
                if fam != "llama" and isinstance(t, tuple) and isinstance(t[1], torch.dtype):
                    tspec[n] = (list(s), t[1])
                else:
                    tspec[n] = list(s)
            state = helpers.make_state(tspec, seed=_seed("template", fam))
            dest = self.root / "templates" / f"{fam}-{layout}"
            config = {"model_type": fam, "note": "student config for tests"}
            self._templates[key] = helpers.write_checkpoint(state, dest, layout, config=config)
        return self._templates[key], {n: tuple(s) for n, s in student.items()}


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory) -> Checkpoints:
    return Checkpoints(tmp_path_factory.mktemp("ckpts"))


@pytest.fixture(scope="session")
def subprocess_env() -> dict:
    """Environment for `python -m slicer` subprocesses: the repo on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(autouse=True)
def _slicer_cache(tmp_path_factory, monkeypatch):
    """The bindings cache (slicer.hf.route_cache) of each test: never the user's ~/.cache, and never an answer
    recorded by another test (one that patched transformers or a rule); subprocesses inherit it."""
    monkeypatch.setenv("SLICER_CACHE", str(tmp_path_factory.mktemp("slicer-cache")))
