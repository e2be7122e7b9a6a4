"""Layer selection: map student tensor names to teacher tensor names.

A layer list shows in a checkpoint as an integer path component (``blocks.7.``,
``model.layers.7.``, ``stages.2.blocks.5.``, ``stages.2.5.``). For each prefix before
such a component, teacher and student each count their layers; where the counts
differ the component is a depth axis and is mapped by the layer selection, where
they agree the index is kept. Prefixes are resolved left to right, so a stage's own
depth is looked up under the (mapped) stage index: hierarchical models select per
stage.
"""
from __future__ import annotations

from collections.abc import Iterable

from .errors import SlicerError
from .selection import layer_indices


def depths(names: Iterable[str]) -> dict[str, int]:
    """For every prefix followed by an integer component, 1 + the largest integer."""
    out: dict[str, int] = {}
    for name in names:
        parts = name.split(".")
        for k, part in enumerate(parts):
            if _is_layer_index(part):
                prefix = ".".join(parts[:k])
                out[prefix] = max(out.get(prefix, 0), int(part) + 1)
    return out


def _is_layer_index(part: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²' or '٣', which int() refuses or
    reads as another number, and which a mapped name could never spell back."""
    return part.isascii() and part.isdigit()


class LayerMapper:
    """Student name -> teacher name, with the depth axes it found."""

    def __init__(self, teacher_names: Iterable[str], student_names: Iterable[str], mode: str):
        self.teacher_depths = depths(teacher_names)
        self.student_depths = depths(student_names)
        self.mode = mode
        layer_indices(1, 1, mode)  # validate the mode early
        self.maps: dict[str, list[int]] = {}  # student prefix -> teacher layer per student layer
        self.mapped_depths: dict[str, int] = {}  # student prefix -> the teacher's depth there

    def teacher_name(self, student_name: str) -> str:
        parts = student_name.split(".")
        mapped = list(parts)
        for k, part in enumerate(parts):
            if not _is_layer_index(part):
                continue
            student_prefix = ".".join(parts[:k])
            teacher_prefix = ".".join(mapped[:k])
            s = self.student_depths[student_prefix]
            t = self.teacher_depths.get(teacher_prefix)
            if t is None or t == s:
                continue  # no such list in the teacher (reported as a missing source), or same depth: keep
            if s > t:
                raise SlicerError(
                    f"student has {s} layers under {student_prefix!r} but the teacher has only {t} under {teacher_prefix!r}; "
                    "a student cannot be deeper than its teacher"
                )
            layer_map = self.maps.get(student_prefix)
            if layer_map is None:
                layer_map = self.maps[student_prefix] = layer_indices(t, s, self.mode)
                self.mapped_depths[student_prefix] = t
            mapped[k] = str(layer_map[int(part)])
        return ".".join(mapped)
