"""Axes and layouts: which teacher members each tensor dimension holds. Pure.

An *axis* is a set of members of which the student keeps a subset: the hidden channels of
a model, the FFN neurons of one layer, the kv heads of one attention block, the experts of
one MoE block. Every dimension of every student tensor is *bound* to axes by a layout:

    layout  = segment | segment | ...     concatenation along the dimension ([gate | up])
    segment = factor * factor * ...       row-major product (q rows = kv-heads * group * head-dim)
    factor  = an axis name, or an int     an int n is a block of n kept whole (interleaved
                                          gate/up pairs: ffn * 2)

An axis may be *derived*: its members are a layout of other axes (the query heads of a GQA
block are kv-heads * group, so whole kv groups are kept by construction). Every leaf axis
gets exactly one index set; the index set of a dimension is composed from them, so two
dimensions bound to the same axis can never disagree. That is the consistency the paper
asks for, held by construction instead of by the luck of equal sizes.

A derived axis may be *nested*: ``outer * inner`` where the inner members may differ from one
outer member to the next (the query heads of each kv head). It is composed from its parts
(the same inner members under every outer member) unless it holds an index set of its own
(``choose.Chooser.own``: a ranking that scores the axis itself); then run k of ``inner.s``
members all come from the k-th kept outer member, in the outer axis's order
(``nested_problem`` checks it), and every dimension bound to the axis uses that one set.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import SlicerError

Factor = str | int
Segment = tuple[Factor, ...]
Layout = tuple[Segment, ...]


@dataclass(frozen=True)
class Axis:
    """One axis instance: its teacher and student sizes, and how it is built if derived."""

    name: str  # e.g. "hidden", "model.layers.3.mlp:ffn", "model.layers.3.self_attn:kv-heads"
    kind: str  # what sort of members: "hidden", "ffn", "kv-heads", "experts", "flat", ...
    t: int
    s: int
    parts: Layout | None = None  # derived axes only: the members are this layout of other axes
    nested: bool = False  # derived ``outer * inner`` whose inner members may be chosen per outer member

    def describe(self) -> dict:
        out: dict = {"kind": self.kind, "t": self.t, "s": self.s}
        if self.parts is not None:
            out["parts"] = format_layout(self.parts)
        if self.nested:
            out["nested"] = True
        return out


def axis(name: str) -> Layout:
    """The layout of a dimension bound to one axis."""
    return ((name,),)


def product(*factors: Factor) -> Layout:
    return (tuple(factors),)


def concat(*layouts: Layout) -> Layout:
    return tuple(seg for layout in layouts for seg in layout)


def format_layout(layout: Layout) -> str:
    """``a * b | c``: the manifest's form (``parse_layout`` reads it back)."""
    return " | ".join(" * ".join(str(f) for f in seg) for seg in layout)


def parse_layout(text: str) -> Layout:
    out = []
    for seg in text.split("|"):
        factors: list[Factor] = []
        for f in seg.split("*"):
            f = f.strip()
            if not f:
                raise ValueError(f"empty factor in layout {text!r}")
            factors.append(int(f) if f.isdecimal() and f.isascii() else f)
        out.append(tuple(factors))
    return tuple(out)


class AxisTable:
    """Every axis instance of one plan, by name. Adding the same name twice must agree."""

    def __init__(self) -> None:
        self.axes: dict[str, Axis] = {}

    def add(self, ax: Axis) -> str:
        known = self.axes.get(ax.name)
        if known is None:
            if ax.nested and (ax.parts is None or len(ax.parts) != 1 or len(ax.parts[0]) != 2
                              or not all(isinstance(f, str) for f in ax.parts[0])):
                raise SlicerError(f"internal error: nested axis {ax.name} must be derived from two axes, outer * inner")
            if ax.parts is not None:
                for side in ("t", "s"):
                    got = self.size(ax.parts, side)
                    if got != getattr(ax, side):
                        raise SlicerError(f"axis {ax.name}: its parts {format_layout(ax.parts)} hold {got} members, "
                                          f"not {getattr(ax, side)} ({'teacher' if side == 't' else 'student'})")
            if not 1 <= ax.s <= ax.t and not ax.s == ax.t == 0:
                raise SlicerError(f"axis {ax.name}: the student keeps {ax.s} of {ax.t} {ax.kind}")
            self.axes[ax.name] = ax
        elif known != ax:
            raise SlicerError(f"axis {ax.name} is {known.t} -> {known.s} {known.kind} in one tensor "
                              f"and {ax.t} -> {ax.s} {ax.kind} in another")
        return ax.name

    def refine(self, name: str, parts: Layout) -> None:
        """Make the leaf axis ``name`` derived from ``parts`` (of the same sizes): every dimension
        bound to it then keeps whole members of the parts (whole quantization blocks)."""
        ax = self.axes[name]
        if ax.parts is not None:
            raise SlicerError(f"internal error: axis {name} is already derived")
        del self.axes[name]
        try:
            self.add(Axis(ax.name, ax.kind, ax.t, ax.s, parts, ax.nested))
        except SlicerError:
            self.axes[name] = ax
            raise

    def __getitem__(self, name: str) -> Axis:
        return self.axes[name]

    def __contains__(self, name: str) -> bool:
        return name in self.axes

    def size(self, layout: Layout, side: str) -> int:
        """Members along a layout, on the teacher's side ("t") or the student's ("s")."""
        return sum(math.prod(self._factor(f, side) for f in seg) for seg in layout)

    def _factor(self, f: Factor, side: str) -> int:
        if isinstance(f, int):
            return f
        ax = self.axes.get(f)
        if ax is None:
            raise SlicerError(f"internal error: layout names an unknown axis {f!r}")
        return ax.t if side == "t" else ax.s

    def leaves(self, layout: Layout) -> list[str]:
        """The leaf axes a layout is built from, derived axes expanded, in order."""
        out: list[str] = []
        for seg in layout:
            for f in seg:
                if isinstance(f, str):
                    parts = self.axes[f].parts
                    out += self.leaves(parts) if parts is not None else [f]
        return out


def nest(ax: Axis) -> tuple[str, str]:
    """(outer, inner): the two axes a nested axis is made of."""
    outer, inner = ax.parts[0]
    return outer, inner


def compose(table: AxisTable, layout: Layout, leaf: Callable[[Axis], Sequence[int]],
            own: Callable[[Axis], Sequence[int] | None] | None = None) -> list[int]:
    """The teacher indices a dimension keeps: ``leaf(axis)`` for every leaf axis, combined.

    A segment's members are a row-major product: member (i, j) of ``a * b`` is teacher index
    ``i * b.t + j``; segments follow one another, each offset by the teacher sizes before it.
    ``own(axis)``, asked for nested axes: their own index set, or None to compose their parts.
    """
    out: list[int] = []
    offset = 0
    for seg in layout:
        idx = [0]
        for f in seg:
            if isinstance(f, int):
                size, members = f, range(f)
            else:
                ax = table[f]
                size = ax.t
                members = own(ax) if own is not None and ax.nested else None
                if members is None:
                    members = compose(table, ax.parts, leaf, own) if ax.parts is not None else leaf(ax)
            idx = [i * size + m for i in idx for m in members]
        out += [offset + i for i in idx]
        offset += math.prod(f if isinstance(f, int) else table[f].t for f in seg)
    return out


def nested_problem(table: AxisTable, ax: Axis, members: Sequence[int], outer: Sequence[int]) -> str | None:
    """Why ``members`` cannot be the own index set of the nested axis ``ax`` whose outer axis keeps
    ``outer``, or None: run k of ``inner.s`` members must be increasing members of outer member
    ``outer[k]`` (so student member j belongs to student outer member j // inner.s)."""
    inner = table[nest(ax)[1]]
    if len(members) != len(outer) * inner.s:
        return f"axis {ax.name}: {len(members)} members, not {len(outer)} x {inner.s}"
    for k, o in enumerate(outer):
        run = list(members[k * inner.s:(k + 1) * inner.s])
        if any(m // inner.t != o for m in run) or run != sorted(set(run)):
            return (f"axis {ax.name}: members {run} are not {inner.s} of the {inner.kind} of its kept "
                    f"{table[nest(ax)[0]].kind} member {o}, in order")
    return None
