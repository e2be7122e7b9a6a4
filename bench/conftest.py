"""Make ``pytest bench --benchmark-only`` collect the suites ``bench/bench_*.py``.

pyproject's ``testpaths`` is ``tests`` and ``python_files`` keeps its default, so
``python -m pytest -q`` at the root never comes here and runs tests/ only. This
conftest is loaded only when bench/ (or a file in it) is named on the command line;
it then collects ``bench_*.py`` too. A file named explicitly is collected by pytest
itself, so it is skipped here (no double collection).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the suites import teachers.py, memsample.py
    sys.path.insert(0, str(HERE))


def pytest_collect_file(file_path: Path, parent):
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_") and file_path.parent == HERE
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None

