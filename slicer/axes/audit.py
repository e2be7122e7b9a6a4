"""Consistency from a manifest alone: every tensor dimension uses its axes' index sets. Pure.

The manifest records every axis instance (its sizes, its parts if derived, the key of its
index set if a leaf), the layout every tensor dimension is bound to, and the index set each
dimension actually used. Recomposing each layout from the axes' own index sets must give
the recorded index set, and every numbered component (``experts.N``) must keep the members
of its axis: then a kept neuron, head or expert is kept in every tensor that touches it. A
nested axis with an index set of its own (query heads chosen per kv head) must keep, run by
run, members of its outer axis's kept members, in order (``layout.nested_problem``).
A manifest that lies cannot make this allocate more than the tensors it describes: sizes
are checked before any index list is built.
"""
from __future__ import annotations

from .layout import Axis, AxisTable, axis, compose, nest, nested_problem, parse_layout


def audit(manifest: dict, indices_of, tensors=None) -> tuple[list[str], int]:
    """(problems, dimensions checked).

    ``indices_of(key, n)`` -> the members of an index set if it has ``n``, else None;
    ``tensors``: the names whose shapes are known to be true (their shard headers agree), all if None."""
    axes = manifest.get("axes")
    if not isinstance(axes, dict):
        return [], 0  # a manifest from before axes: nothing to check
    problems: list[str] = []
    table = AxisTable()
    leaves: dict[str, list[int]] = {}
    pending = dict(axes)
    for _ in range(len(pending) + 1):  # derived axes after their parts
        progressed = False
        for name, entry in list(pending.items()):
            try:
                parts = parse_layout(entry["parts"]) if "parts" in entry else None
                if parts is not None and any(isinstance(f, str) and f not in table for seg in parts for f in seg):
                    continue
                table.add(Axis(name, str(entry["kind"]), int(entry["t"]), int(entry["s"]), parts,
                               entry.get("nested") is True))
            except Exception as e:  # noqa: BLE001 - any malformed entry is one problem line
                problems.append(f"axis {name!r}: malformed entry ({e})")
            del pending[name]
            progressed = True
        if not progressed:
            break
    for name in pending:
        problems.append(f"axis {name!r}: its parts name axes the manifest does not have")
    ablation = manifest.get("options", {}).get("method") == "random-inconsistent"

    def leaf(ax: Axis) -> list[int]:
        if ax.name not in leaves:
            key = axes[ax.name].get("index")
            members = indices_of(key, ax.s) if key is not None else None
            if members is None or len(members) != ax.s:
                raise _Unknown(f"axis {ax.name!r} has no index set of {ax.s} members")
            leaves[ax.name] = members
        return leaves[ax.name]

    owned: dict[str, list[int] | None] = {}

    def own(ax: Axis) -> list[int] | None:
        """A nested axis's own index set (None: composed from its parts), checked against its outer axis once."""
        if ax.name not in owned:
            key = axes[ax.name].get("index")
            if key is None:
                owned[ax.name] = None
                return None
            members = indices_of(key, ax.s)
            if members is None or len(members) != ax.s:
                raise _Unknown(f"axis {ax.name!r} has no index set of {ax.s} members")
            problem = nested_problem(table, ax, members, compose(table, axis(nest(ax)[0]), leaf, own))
            if problem:
                problems.append(problem + " (an inconsistent student)")
            owned[ax.name] = members
        return owned[ax.name]

    checked = 0
    for tensor, rec in manifest.get("tensors", {}).items():
        layouts = rec.get("axes")
        if not isinstance(layouts, list) or ablation or (tensors is not None and tensor not in tensors):
            continue
        for d, text in enumerate(layouts):
            try:
                layout = parse_layout(text)
                t, s = table.size(layout, "t"), table.size(layout, "s")
                if (t, s) != (rec["teacher_shape"][d], rec["shape"][d]):
                    problems.append(f"tensor {tensor!r} dimension {d}: bound to {text} ({t} -> {s}) but it is "
                                    f"{rec['teacher_shape'][d]} -> {rec['shape'][d]}")
                    continue
                want = compose(table, layout, leaf, own)
                got = indices_of(rec["index"][d], s)
            except _Unknown as e:
                problems.append(f"tensor {tensor!r} dimension {d}: {e}")
                continue
            except Exception as e:  # noqa: BLE001 - a malformed layout string
                problems.append(f"tensor {tensor!r} dimension {d}: unreadable layout {text!r} ({e})")
                continue
            checked += 1
            if got != want:
                problems.append(f"tensor {tensor!r} dimension {d}: bound to {text} but keeps other members than "
                                "its axes (an inconsistent student)")
    for prefix, entry in (manifest.get("component_maps") or {}).items():
        if not isinstance(entry, dict) or entry.get("axis") not in table:
            problems.append(f"component {prefix!r}: no axis recorded")
            continue
        try:
            members = compose(table, ((entry["axis"],),), leaf, own)  # derived axes too (per-head norms: q heads)
        except _Unknown as e:
            problems.append(f"component {prefix!r}: {e}")
            continue
        if members is not None and not ablation and entry.get("members") != members:
            problems.append(f"component {prefix!r} keeps members {entry.get('members')} but its axis "
                            f"{entry['axis']!r} keeps {members}")
    return problems, checked


class _Unknown(Exception):
    pass
