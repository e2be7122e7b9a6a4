"""Per-layer lists of a config follow the layers the student really takes from the teacher.

A config may describe its layers one by one (``layer_types``, ``no_rope_layers``: one entry
per layer) or name some of them (Llama 4's ``moe_layers``, Qwen-MoE's ``mlp_only_layers``:
layer indices). When the depth shrinks, both must describe the student's layers:
1. which lists are which is asked of transformers' config class itself: built without them
   at two other depths, a per-layer list comes back one entry per layer, an index list as
   increasing indices below the depth, anything else (an image size of two numbers) does
   not depend on the depth and is left alone. Where the class computes no default, the
   teacher's value decides (one entry per layer, or increasing indices);
2. the student first gets the teacher's pattern of its first layers (``provisional``): an
   MoE-every-other-layer teacher gives an MoE-every-other-layer student, whatever the
   layer selection;
3. the plan's layer map is made from the student built so (a student layer is fed only by a
   teacher layer of its own kind, the layer selection applied within each kind), and the
   lists are then rewritten to follow it (``follow``): entry j is the teacher's entry of the
   layer student layer j is selected from, an index list names the student layers whose
   teacher layers it named. Lists that decide a layer's kind come out the same by
   construction; the others (sliding or full attention, RoPE or NoPE) are those of the
   teacher layers whose weights the student holds.
An edited list (``--set layer_types=[...]``) is the user's and is never rewritten.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from .common import depth_key_of, quiet

PER_LAYER, INDICES = "per-layer", "indices"


@dataclass(frozen=True)
class LayerList:
    path: str  # "" for the top config, "text_config." for a nested one
    key: str
    kind: str  # PER_LAYER or INDICES
    teacher: tuple  # the teacher's (base config's) value
    t: int  # depth of the base config
    s: int  # depth of the student


def find(base: dict, student: dict, edits: dict, config_cls, depth_key: str) -> list[LayerList]:
    """The lists of every (sub-)config whose depth shrinks from ``base`` to ``student``."""
    out: list[LayerList] = []

    def visit(b: dict, s: dict, prefix: str, cls, depth: str) -> None:
        t_depth, s_depth = b.get(depth), s.get(depth)
        if _is_int(t_depth) and _is_int(s_depth) and 0 < s_depth < t_depth:
            for key, kind in classify(cls, b, depth).items():
                if prefix + key in edits or s.get(key) != b.get(key):
                    continue  # the user's own list
                out.append(LayerList(prefix, key, kind, tuple(b[key]), t_depth, s_depth))
        subs = getattr(cls, "sub_configs", None) or {}
        for key, value in s.items():
            if isinstance(value, dict) and isinstance(b.get(key), dict):
                sub = subs.get(key) if isinstance(subs, dict) else None
                visit(b[key], value, prefix + key + ".", sub, depth_key_of(sub))

    visit(base, student, "", config_cls, depth_key)
    return out


def classify(config_cls, d: dict, depth_key: str) -> dict[str, str]:
    """key -> PER_LAYER or INDICES for the lists of config dict ``d`` (of class ``config_cls``)."""
    t = d[depth_key]
    lists = {k: v for k, v in d.items() if k != "architectures" and isinstance(v, list) and v
             and all(isinstance(x, (str, int, float, bool)) for x in v)}
    if not lists:
        return {}
    probes = [(p, _defaults(config_cls, d, depth_key, lists, p)) for p in (t + 1, 2 * t + 3)]
    out = {}
    for key, value in lists.items():
        got = [(p, found.get(key)) for p, found in probes if found is not None]
        kind = None
        if len(got) == 2 and all(isinstance(v, list) and v for _, v in got) and got[0][1] != got[1][1]:
            if all(_indices(v, p) for p, v in got):
                kind = INDICES
            elif all(len(v) == p for p, v in got):
                kind = PER_LAYER
            else:
                continue
        elif len(got) == 2 and all(isinstance(v, list) and v for _, v in got):
            continue  # the same at every depth: not about layers
        if kind is None:  # the class computes no default: the value says what it is
            kind = INDICES if _indices(value, t) and len(value) < t else PER_LAYER if len(value) == t else None
        if kind == INDICES and _indices(value, t) or kind == PER_LAYER and len(value) == t:
            out[key] = kind
    return out


def provisional(lists: list[LayerList], student: dict) -> None:
    """The teacher's pattern of its first layers, before the layer map is known."""
    for lst in lists:
        _set(student, lst, follow(lst, list(range(lst.s))))


def follow(lst: LayerList, layer_map: list[int]) -> list:
    """The list for a student whose layer j is the teacher's layer ``layer_map[j]``."""
    if lst.kind == PER_LAYER:
        return [lst.teacher[i] for i in layer_map]
    named = set(lst.teacher)
    return [j for j, i in enumerate(layer_map) if i in named]


def apply(lists: list[LayerList], student: dict, maps: dict[str, list[int]]) -> bool:
    """Rewrite the lists to follow ``maps`` (config path -> layer map); True if anything changed."""
    changed = False
    for lst in lists:
        layer_map = maps.get(lst.path)
        if layer_map is None or len(layer_map) != lst.s:
            continue
        value = follow(lst, layer_map)
        if _get(student, lst) != value:
            _set(student, lst, value)
            changed = True
    return changed


def _get(d: dict, lst: LayerList):
    for part in lst.path.split(".")[:-1]:
        d = d[part]
    return d.get(lst.key)


def _set(d: dict, lst: LayerList, value: list) -> None:
    for part in lst.path.split(".")[:-1]:
        d = d[part]
    d[lst.key] = value


def _defaults(config_cls, d: dict, depth_key: str, lists: dict, depth: int) -> dict | None:
    """The config class's own values for ``d`` without its lists, at another depth (None: it refuses)."""
    if config_cls is None:
        return None

    probe = {k: copy.deepcopy(v) for k, v in d.items() if k not in lists}
    probe[depth_key] = depth
    try:
        with quiet():
            return config_cls.from_dict(probe).to_dict()
    except Exception:  # noqa: BLE001 - a class that cannot be built so: the values decide
        return None





def _indices(value: list, depth: int) -> bool:
    """Strictly increasing layer indices below ``depth``."""
    return (all(_is_int(v) for v in value) and all(0 <= v < depth for v in value)
            and all(a < b for a, b in zip(value, value[1:])))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def in_proportion(named: list[int], t: int, s: int) -> list[int] | None:
    """A list of layer indices (Qwen2.5-VL's ``fullatt_block_indexes``) for the first ``s`` of ``t`` layers
    that keeps the share of layers it names: the teacher's pattern of its first layers, as ``provisional``
    gives per-layer lists. None where those layers hold another share (a student too shallow for the pattern)."""
    kept = [i for i in named if i < s]
    want = max(1, int(len(named) * s / t + 0.5)) if named else 0
    return kept if len(kept) == want else None


def depths_holding(named: list[int], t: int) -> list[int]:
    """The depths below ``t`` whose first layers keep the share of ``named`` (see ``in_proportion``)."""
    return [d for d in range(1, t) if in_proportion(named, t, d) is not None]
