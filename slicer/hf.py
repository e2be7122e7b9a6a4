"""The student from a Hugging Face config (the ``--student-config`` / ``--set`` route)."""
from __future__ import annotations

from pathlib import Path

from .errors import SlicerError
from .student import StudentSpec


def from_config(teacher: str | Path, student_config: str | Path | None, edits: dict, *, attention: str) -> StudentSpec:
    raise SlicerError("the config route is not implemented yet")
