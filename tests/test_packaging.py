"""The distribution ships every subpackage (a non-editable install must not lose one)."""
from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"slicer." + p.parent.name for p in (ROOT / "slicer").glob("*/__init__.py")} | {"slicer"}
    assert found - {"slicer.kernels"} <= listed, f"not shipped: {sorted(found - listed)}"
