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

from collections.abc import Callable, Iterable, Sequence

from ..errors import SlicerError
from ..selection import layer_indices


def depths(names: Iterable[str]) -> dict[str, int]:
    """For every prefix followed by an integer component, 1 + the largest integer."""
    out: dict[str, int] = {}
    for name in names:
        parts = name.split(".")
        for k, part in enumerate(parts):
            if _is_index(part):
                prefix = ".".join(parts[:k])
                out[prefix] = max(out.get(prefix, 0), int(part) + 1)
    return out


class LayerMapper:
    """Student name -> teacher name, with the depth axes it found.

    ``kinds`` (depth prefix -> kind of each teacher layer, kind of each student layer) keeps
    layer patterns: a student layer is fed only by a teacher layer of its own kind (an MoE
    layer by an MoE layer), the layer selection applied within each kind. ``component``
    (student prefix, teacher prefix, teacher count, student count) -> kept members or None
    says which integer components index an axis instead of a depth (``experts.5``).
    """

    def __init__(self, teacher_names: Iterable[str], student_names: Iterable[str], mode: str, *,
                 kinds: dict[str, tuple[Sequence[str], Sequence[str]]] | None = None,
                 component: Callable[[str, str, int, int], list[int] | None] | None = None,
                 layer_scores: dict[str, Sequence[float]] | None = None, unscored: str | None = None):
        self.teacher_depths = depths(teacher_names)
        self.student_depths = depths(student_names)
        self.mode = mode
        layer_indices(1, 1, mode, [0.0])  # validate the mode early
        self.layer_scores = layer_scores or {}  # teacher prefix -> a score per layer (--layer-selection importance)
        # a list importance has no scores for: refused (None), or selected by this mode instead (mappers that
        # only check shapes, and know no components: ``experts.N`` looks like a depth to them)
        self.unscored = unscored
        self.kinds = kinds or {}
        self.component = component or (lambda sp, tp, t, s: None)
        self.maps: dict[str, list[int]] = {}  # student prefix -> teacher layer per student layer
        self.mapped_depths: dict[str, int] = {}  # student prefix -> the teacher's depth there
        self.component_maps: dict[str, list[int]] = {}  # student prefix -> teacher member per student member
        self._seen: set[str] = set()

    def teacher_name(self, student_name: str) -> str:
        parts = student_name.split(".")
        mapped = list(parts)
        for k, part in enumerate(parts):
            if not _is_index(part):
                continue
            student_prefix = ".".join(parts[:k])
            teacher_prefix = ".".join(mapped[:k])
            s = self.student_depths[student_prefix]
            t = self.teacher_depths.get(teacher_prefix)
            if t is None:
                continue  # no such list in the teacher: reported as a missing source
            if student_prefix not in self._seen:  # first visit: an axis's members, a layer map, or kept
                self._seen.add(student_prefix)
                members = self.component(student_prefix, teacher_prefix, t, s)
                if members is not None:
                    self.component_maps[student_prefix] = members
                else:
                    layer_map = self._layer_map(student_prefix, teacher_prefix, t, s)
                    if layer_map is not None:
                        self.maps[student_prefix] = layer_map
                        self.mapped_depths[student_prefix] = t
            chosen = self.component_maps.get(student_prefix) or self.maps.get(student_prefix)
            if chosen is not None:  # else the same depth (and kinds): the index is kept
                mapped[k] = str(chosen[int(part)])
        return ".".join(mapped)

    def _layer_map(self, student_prefix: str, teacher_prefix: str, t: int, s: int) -> list[int] | None:
        kinds = self.kinds.get(student_prefix)
        if s > t:
            raise SlicerError(
                f"student has {s} layers under {student_prefix!r} but the teacher has only {t} under {teacher_prefix!r}; "
                "a student cannot be deeper than its teacher"
            )
        if kinds is None:
            return None if t == s else layer_indices(t, s, *self._mode_scores(teacher_prefix, t))
        teacher_kinds, student_kinds = list(kinds[0]), list(kinds[1])
        if teacher_kinds == student_kinds:
            return None
        mode, scores = self._mode_scores(teacher_prefix, t)
        out = [0] * s
        for kind in dict.fromkeys(student_kinds):
            mine = [j for j, k in enumerate(student_kinds) if k == kind]
            theirs = [i for i, k in enumerate(teacher_kinds) if k == kind]
            if len(mine) > len(theirs):
                raise SlicerError(f"student has {len(mine)} layers {_describe(kind, teacher_kinds + student_kinds)} under "
                                  f"{student_prefix!r} but the teacher has {len(theirs)} under {teacher_prefix!r}; a "
                                  "student layer is only ever selected from a teacher layer of its own kind")
            mine_scores = None if scores is None else [scores[i] for i in theirs]
            for j, i in zip(mine, layer_indices(len(theirs), len(mine), mode, mine_scores)):
                out[j] = theirs[i]
        return out

    def _mode_scores(self, teacher_prefix: str, t: int) -> tuple[str, Sequence[float] | None]:
        if self.mode != "importance":
            return self.mode, None
        scores = self.layer_scores.get(teacher_prefix)
        if scores is None and self.unscored is not None:
            return self.unscored, None
        if scores is None:
            raise SlicerError(f"--layer-selection importance: the scores hold no layer scores for {teacher_prefix!r} "
                              f"({teacher_prefix}:layers)")
        if len(scores) != t:
            raise SlicerError(f"--layer-selection importance: {len(scores)} layer scores for the {t} layers of "
                              f"{teacher_prefix!r}")
        return self.mode, scores


def _describe(kind: str, kinds: Sequence[str]) -> str:
    """A kind by what sets it apart: its modules that some other kind lacks (a kind is its parameter names)."""
    others = [set(k.split("|")) for k in set(kinds) if k != kind]
    own = [n for n in kind.split("|") if any(n not in o for o in others)]
    modules = list(dict.fromkeys(n.rsplit(".", 1)[0] if "." in n else n for n in own))
    if not modules:
        return "of one kind"
    more = f" and {len(modules) - 3} more" if len(modules) > 3 else ""
    return "with " + ", ".join(modules[:3]) + more


def _is_index(part: str) -> bool:
    """A list index in a tensor name: ASCII digits only ('²'.isdigit() is True)."""
    return part.isascii() and part.isdigit()
