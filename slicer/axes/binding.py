"""Binders: what the structure of a model says about every dimension of its tensors.

The plan asks its binder three things: the kind of every layer (a student layer is only
ever fed by a teacher layer of the same kind: dense or MoE, attention or Mamba), which path
components index an axis rather than a depth (``experts.5.`` is member 5 of the experts
axis, chosen by the method, not by the layer selection), and the layout of every tensor
dimension. The base binder knows nothing: every dimension is then its own *flat* axis keyed
by its sizes, the reference code's rule, consistent exactly where equal sizes mean the same
axis (plain checkpoints, the paper's ViTs and ConvNeXts). The config route's binder
(``slicer/bindings``) derives all three from the model's structure.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..errors import SlicerError
from .layout import Axis, AxisTable, Layout, axis, format_layout


class Binder:
    """Knows nothing about the model: flat selection, as the paper does it."""

    name = "flat"  # recorded in the manifest: how the dimensions were bound

    def layer_kinds(self) -> dict[str, tuple[Sequence[str], Sequence[str]]]:
        """Depth prefix (student names) -> (kind of each teacher layer, kind of each student layer)."""
        return {}

    def component(self, student_prefix: str, teacher_prefix: str, t: int, s: int, table: AxisTable) -> str | None:
        """The axis whose members the integer component after ``teacher_prefix`` indexes, if any
        (added to ``table``); None: a depth (layer selection)."""
        return None

    def bind(self, student_name: str, teacher_name: str, tshape: tuple[int, ...], sshape: tuple[int, ...],
             table: AxisTable) -> tuple[Layout | None, ...] | None:
        """The layout of every dimension of one tensor (axes added to ``table``); None, or None
        for a dimension: flat."""
        return None

    def unbound(self, student_name: str, d: int, t: int, s: int, table: AxisTable) -> Layout | None:
        """A changing dimension ``bind`` left open, asked once every tensor is bound (so it may
        be matched against every axis the others named); None: flat."""
        return None

    def finish(self, jobs: list, layer_maps: dict[str, list[int]]) -> None:
        """Called with every planned job (name, source, index sets, layouts) and the layer maps:
        refuse what this binder cannot vouch for."""


def flat_axis(t: int, s: int) -> Axis:
    """The axis of a dimension nothing is known about: shared by every dimension of its sizes."""
    return Axis(f"{t}->{s}", "flat", t, s)


def complete(binder: Binder, table: AxisTable, student_name: str, layouts: tuple[Layout | None, ...] | None,
             tshape: tuple[int, ...], sshape: tuple[int, ...]) -> tuple[Layout, ...]:
    """Every dimension's layout (the binder's, else flat), checked against the shapes.

    ``layouts`` is what ``binder.bind`` said; open changing dimensions go to ``binder.unbound``."""
    layouts = layouts or (None,) * len(tshape)
    if len(layouts) != len(tshape):
        raise SlicerError(f"internal error: {len(layouts)} layouts for {student_name!r} of rank {len(tshape)}")
    out = []
    for d, (layout, t, s) in enumerate(zip(layouts, tshape, sshape)):
        if layout is None and t != s:
            layout = binder.unbound(student_name, d, t, s, table)
        if layout is None:
            layout = axis(table.add(flat_axis(t, s)))
        got_t, got_s = table.size(layout, "t"), table.size(layout, "s")
        if (got_t, got_s) != (t, s):
            raise SlicerError(f"tensor {student_name!r} dimension {d} is {t} -> {s}, but the model's structure "
                              f"binds it to {format_layout(layout)} ({got_t} -> {got_s}); the config does not "
                              "describe these weights")
        out.append(layout)
    return tuple(out)
