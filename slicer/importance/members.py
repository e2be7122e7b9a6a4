"""Which axis member every element of a tensor dimension belongs to, and derived scores
handed down to their leaves. Pure (the plan's axis table and layouts only).

A dimension bound to ``q-heads * head-dim`` holds, at element ``e``, member ``e // head_dim``
of ``q-heads`` and member ``e % head_dim`` of ``head-dim``; ``ffn | ffn`` holds member
``e % ffn`` of ``ffn`` in both halves. The scorer groups an activation's elements by these
maps (a head's elements give the head's output norm).

Importance ranks leaf axes only (those are what a student keeps); a derived axis's scores
are handed down to the leaves its members are made of, by summing: a kv head's score is the
sum of the scores of its query heads, a group member's score the sum over *all* teacher kv
heads of that member's query head (read only when the query heads are not ranked themselves: a
scores file without ``…:q-heads``; the derived scores are kept in the output, and ``q-heads``,
a nested axis, is then chosen per kept kv head: ``slicer.axes.choose``).
"""
from __future__ import annotations

import math

import torch

from ..axes import AxisTable, Layout


def element_members(table: AxisTable, layout: Layout) -> dict[str, torch.Tensor]:
    """Axis named as a factor of ``layout`` -> the member of each element (int64, -1: not in it)."""
    size = table.size(layout, "t")
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for seg in layout:
        sizes = [f if isinstance(f, int) else table[f].t for f in seg]
        span = math.prod(sizes)
        positions = torch.arange(span, dtype=torch.int64)
        for i, f in enumerate(seg):
            if isinstance(f, int):
                continue
            inner = math.prod(sizes[i + 1:])
            member = out.setdefault(f, torch.full((size,), -1, dtype=torch.int64))
            member[offset:offset + span] = (positions // inner) % sizes[i]
        offset += span
    return out


def hand_down(table: AxisTable, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``scores`` with every derived axis's scores summed into the leaves it is made of
    (recursively; a leaf's own scores, if any, are added to)."""
    out = {name: s.clone() for name, s in scores.items()}
    # a derived axis's parts may be derived again: hand down outer axes first
    pending = [n for n in out if n in table and table[n].parts is not None]
    while pending:
        name = pending.pop(0)
        values = out[name]
        for part, members in element_members(table, table[name].parts).items():
            t = table[part].t
            keep = members >= 0
            add = torch.zeros(t, dtype=values.dtype).index_add_(0, members[keep], values[keep])
            if part in out:
                out[part] = out[part] + add
            else:
                out[part] = add
            if table[part].parts is not None and part not in pending:
                pending.append(part)
    return out

