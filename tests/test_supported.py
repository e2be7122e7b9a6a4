"""The supported range: pyproject.toml states it for transformers, torch, accelerate and huggingface_hub,
.ci/compat tests the oldest transformers in it, and a release outside it gets one warning line."""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest

from slicer.hf import supported

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib is Python 3.11+")
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _spec(requirements: list[str], name: str) -> str:
    for req in requirements:
        m = re.match(rf"{name}\s*([^;\s]+)", req)
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not in {requirements}")


def test_pyproject_bounds_every_checked_dependency_on_both_sides():
    project = _pyproject()["project"]
    every = project["dependencies"] + [r for reqs in project["optional-dependencies"].values() for r in reqs]
    for name in supported.CHECKED:
        spec = _spec(every, name)
        assert ">=" in spec and "<" in spec.replace("<=", ""), f"{name}{spec}: a range has two ends"


def test_the_compat_job_runs_the_oldest_supported_transformers():
    project = _pyproject()["project"]
    spec = _spec(project["optional-dependencies"]["hf"], "transformers")
    oldest = re.search(r">=([0-9.]+)", spec).group(1)
    script = (ROOT / ".ci" / "compat").read_text()
    assert re.search(rf"OLDEST_TRANSFORMERS=\"?{re.escape(oldest)}\"?", script), f"{oldest} not pinned in .ci/compat"


@pytest.mark.parametrize("version, spec, out", [
    ("5.25.0", ">=4.57,<6", False), ("4.57.6", ">=4.57,<6", False), ("4.56.2", ">=4.57,<6", True),
    ("6.0.0", ">=4.57,<6", True), ("6.0.0.dev0", ">=4.57,<6", True), ("2.13.0+cpu", ">=2.1,<3", False),
    ("not a version", ">=1", False)])
def test_outside(version, spec, out):
    assert supported.outside("x", version, spec) is out


def test_a_release_outside_the_range_gets_one_warning_line_once(monkeypatch, caplog):
    pytest.importorskip("transformers")
    monkeypatch.setattr(supported, "ranges", lambda: {"transformers": ">=99"})
    monkeypatch.setattr(supported, "_warned", set())
    caplog.set_level(logging.WARNING, logger="slicer")
    first = supported.check("transformers")
    assert len(first) == 1 and "\n" not in first[0]
    assert "outside the range slicer is tested with (>=99)" in first[0] and "pip install 'transformers>=99'" in first[0]
    assert supported.check("transformers") == []  # once per process
    assert [r.getMessage() for r in caplog.records] == first


def test_a_release_inside_the_range_is_quiet(monkeypatch, caplog):
    monkeypatch.setattr(supported, "ranges", lambda: {"transformers": ">=1"})
    monkeypatch.setattr(supported, "_warned", set())
    pytest.importorskip("transformers")
    assert supported.check("transformers") == []
    assert not caplog.records
