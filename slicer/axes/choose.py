"""The one index set of every axis, by the run's method; composed per tensor dimension. Pure.

The method decides only which members a *leaf* axis keeps (uniform, consecutive, random,
or later a ranking); every dimension's index set is then composed from its layout
(``layout.compose``), so a kept neuron, head or expert sits at the same place in every
tensor that touches it.

Keys name the index sets in the manifest. A leaf's key depends only on what determines its
members: ``uniform:11008->5504`` for every axis of that size under a consistent method (the
reference's per-(t, s) rule, so a flat checkpoint gets the very keys and indices it always
did), the tensor and dimension for the inconsistent ablation, the axis itself for a ranking.
A composed set's key is its layout written with leaf keys, so all layers that share a
structure share one entry.

A nested axis (``layout.Axis.nested``: the query heads of a GQA block, ``kv-heads * group``) is
composed from its parts, the same group members in every kv head, unless a ranking scores the
axis itself: then each kept outer member keeps its own top ``inner.s`` inner members, one index
set for the axis (``own``), used by every dimension bound to it. Formulas (uniform,
consecutive, random) always compose, so their students stay those of the reference.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import SlicerError
from ..selection import IndexSet, consecutive_indices, method as method_named
from .layout import Axis, AxisTable, Layout, compose, nest, nested_problem

# Axes whose members are not interchangeable: a student keeps the first ones, whatever the
# method (position 7 of the student must be position 7 of the teacher).
FIRST_ALWAYS = frozenset({"positions"})


class Chooser:
    """Hands out index sets for one run: one per leaf axis (per dimension for the ablation)."""

    def __init__(self, method: str, seed: int = 0, ranking: "Ranking | None" = None):
        self.rule = method_named(method)
        if self.rule.ranked and ranking is None:
            raise SlicerError(f"--method {method} needs scores (--scores FILE or --calibration FILE)")
        self.method = method
        self.seed = seed
        self.ranking = ranking
        self.sets: dict[str, IndexSet] = {}  # every index set handed out, by key (the manifest's "index_sets")
        self.leaf_keys: dict[str, str] = {}  # leaf axis name -> its index set's key (consistent methods); nested
        # axes with an index set of their own too
        self.owned: dict[str, IndexSet | None] = {}  # nested axis -> its own index set, None: composed

    @property
    def consistent(self) -> bool:
        return self.rule.consistent

    # ------------------------------------------------------------------ leaves

    def leaf(self, ax: Axis, where: str = "") -> IndexSet:
        """The members a leaf axis keeps. ``where`` ("tensor/dim") matters only for the ablation."""
        key = self._leaf_key(ax, where)
        found = self.sets.get(key)
        if found is None:
            found = self.sets[key] = IndexSet.from_list(key, ax.t, self._members(ax, where))
        if self.consistent and ax.parts is None:
            self.leaf_keys[ax.name] = key
        return found

    def _leaf_key(self, ax: Axis, where: str) -> str:
        if ax.s == ax.t:
            return f"identity:{ax.t}"
        if ax.kind in FIRST_ALWAYS:
            return f"consecutive:{ax.t}->{ax.s}"
        if not self.rule.consistent:  # the ablation: a set per tensor dimension
            return f"{self.method}:{where}:{ax.t}->{ax.s}"
        if self.rule.ranked:  # a ranking: a set per axis instance
            return f"{self.method}:{ax.name}:{ax.t}->{ax.s}"
        return f"{self.method}:{ax.t}->{ax.s}"  # a formula: a set per (t, s), as the reference

    def _members(self, ax: Axis, where: str) -> list[int]:
        t, s = ax.t, ax.s
        if s == t:
            return list(range(t))
        if ax.kind in FIRST_ALWAYS:
            return consecutive_indices(t, s)
        if self.rule.ranked:
            return self.ranking.top(ax)
        salt = f"{self.seed}/{t}/{s}" if self.rule.consistent else f"{self.seed}/{where}/{t}/{s}"
        return self.rule.members(t, s, salt)

    def own(self, table: AxisTable, ax: Axis) -> IndexSet | None:
        """The index set a nested axis holds of its own, or None: composed from its parts.

        Only a ranking that scores the axis itself chooses per outer member (a scores file written
        before such scores: composed, the same inner members under every outer member); only when
        the inner axis shrinks and no other axis is made of it (Falcon's fused rows bind the group
        per kv head beside its key and value: one group for all)."""
        if not ax.nested or not (self.rule.ranked and self.consistent):
            return None
        if ax.name in self.owned:
            return self.owned[ax.name]
        outer, inner = nest(ax)
        I = table[inner]
        found = None
        shared = inner in self.leaf_keys or any(
            other.name != ax.name and other.parts is not None and inner in table.leaves(other.parts)
            for other in table.axes.values())
        if I.s < I.t and not shared and self.ranking.has(ax):
            kept = self.dim(table, ((outer,),)).indices()
            members = self.ranking.top_per(ax, [[o * I.t + j for j in range(I.t)] for o in kept], I.s)
            problem = nested_problem(table, ax, members, kept)
            if problem:
                raise SlicerError(f"internal error: {problem}")
            key = self._leaf_key(ax, "")
            found = self.sets[key] = IndexSet.from_list(key, ax.t, members)
            self.leaf_keys[ax.name] = key
        self.owned[ax.name] = found
        return found

    # ------------------------------------------------------------------ dimensions

    def dim(self, table: AxisTable, layout: Layout, where: str = "") -> IndexSet:
        """The index set of one tensor dimension bound by ``layout``."""
        if len(layout) == 1 and len(layout[0]) == 1 and isinstance(layout[0][0], str):
            ax = table[layout[0][0]]
            if ax.parts is None:
                return self.leaf(ax, where)
            mine = self.own(table, ax)
            if mine is not None:
                return mine
        key = "[" + self._signature(table, layout, where) + "]"
        if self.consistent:  # recorded for every leaf, also when the composed set is already known
            for name in self._leaves(table, layout):
                self.leaf(table[name], where)
        found = self.sets.get(key)
        if found is None:
            indices = compose(table, layout, lambda ax: self.leaf(ax, where).indices(),
                              lambda ax: None if (s := self.own(table, ax)) is None else s.indices())
            found = self.sets[key] = IndexSet.from_list(key, table.size(layout, "t"), indices)
        return found

    def _leaves(self, table: AxisTable, layout: Layout) -> list[str]:
        """The leaves ``layout`` is composed from: a nested axis with its own set gives only its outer
        axis. A leaf that is the inner axis of such a set may not be bound elsewhere (it has no one set)."""
        out: list[str] = []
        for seg in layout:
            for f in seg:
                if isinstance(f, int):
                    continue
                ax = table[f]
                if ax.parts is None:
                    if any(s is not None and nest(table[n])[1] == f for n, s in self.owned.items()):
                        raise SlicerError(f"internal error: axis {f} is chosen per outer member in one dimension "
                                          "and bound alone in another")
                    out.append(f)
                elif self.own(table, ax) is not None:
                    out += self._leaves(table, ((nest(ax)[0],),))
                else:
                    out += self._leaves(table, ax.parts)
        return out

    def _signature(self, table: AxisTable, layout: Layout, where: str) -> str:
        def factor(f) -> str:
            if isinstance(f, int):
                return str(f)
            ax = table[f]
            if ax.parts is not None:
                mine = self.own(table, ax)
                return mine.key if mine is not None else "(" + self._signature(table, ax.parts, where) + ")"
            return self._leaf_key(ax, where)

        return " | ".join(" * ".join(factor(f) for f in seg) for seg in layout)


class Ranking:
    """Scores per axis instance (importance selection): the top s members, kept in order."""

    def __init__(self, scores: Mapping[str, Sequence[float]], source: str = "scores"):
        self.scores = scores
        self.source = source

    def has(self, ax: Axis) -> bool:
        """Whether the axis itself is scored (a nested axis: its members chosen per outer member)."""
        return ax.name in self.scores

    def top(self, ax: Axis) -> list[int]:
        values = self._values(ax)
        order = sorted(range(ax.t), key=lambda i: (-float(values[i]), i))  # ties: the lower index, deterministic
        return sorted(order[:ax.s])

    def top_per(self, ax: Axis, blocks: Sequence[Sequence[int]], s: int) -> list[int]:
        """The top ``s`` members of each block of candidates, each block's in order, blocks in order."""
        values = self._values(ax)
        out: list[int] = []
        for block in blocks:
            order = sorted(block, key=lambda i: (-float(values[i]), i))
            out += sorted(order[:s])
        return out

    def _values(self, ax: Axis) -> Sequence[float]:
        values = self.scores.get(ax.name)
        if values is None:
            hint = ""
            if ax.kind in ("rotary-pairs", "head-dim"):  # scoring ranks whole heads, never the dimensions inside one
                hint = (f"; the student shrinks each head's dimensions ({ax.t} -> {ax.s} {ax.kind}), which importance "
                        "does not rank: keep the teacher's head_dim (--set head_dim=...) or choose --method uniform")
            raise SlicerError(f"{self.source}: no scores for axis {ax.name!r} ({ax.kind}, {ax.t} members){hint}")
        if len(values) != ax.t:
            raise SlicerError(f"{self.source}: axis {ax.name!r} has {len(values)} scores, the teacher {ax.t} members")
        return values
