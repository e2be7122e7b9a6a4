"""Flat selection (no config), with a guard: refuse the names whose structure it would break.

Without a config nothing says which dimensions are one axis, so every dimension is selected
by its sizes (the paper's rule). That is consistent for plain checkpoints; where the names
show a structure, the guard checks the index sets flat selection chose and refuses, with one
line naming the tensor and the way out (pass the teacher's config), exactly when they are
inconsistent:
- numbered experts (``experts.N.``) whose layer-selected members differ from the rows kept
  in their router (``gate`` / ``router``), and packed expert tensors that change at all;
- fused projections (``qkv``, ``gate_up_proj``, ...) whose kept rows are not the same rows
  of every equal part (the paper's ViT ``qkv`` [1152, 384] -> [576, 192] passes: 384 is even);
  GPT-NeoX's per-head ``query_key_value`` whenever its rows change;
- quantized weights and their scales (``weight_scale_inv``, ``*_blocks``, ``*_scales``):
  selected apart, a row would be paired with another block's scale.
"""
from __future__ import annotations

import re

from ...axes import Binder
from ...errors import SlicerError

_FUSED_PARTS = {"qkv": 3, "qkv_proj": 3, "wqkv": 3, "c_attn": 3, "in_proj_weight": 3, "in_proj_bias": 3,
                "gate_up_proj": 2, "w13": 2}
_PER_HEAD_FUSED = {"query_key_value"}
_QUANT = re.compile(r"(_scale_inv|weight_scale|input_scale|_blocks|_scales|\.scales|qweight|qzeros|g_idx)$")
_EXPERT = re.compile(r"^(?P<block>.*)\.experts\.(?P<n>\d+)\.")
_PACKED_EXPERTS = re.compile(r"\.experts\.[A-Za-z_]+$")
HINT = "pass the teacher's config (--student-config / --set, or a config.json beside the template and the teacher)"


class NamesBinder(Binder):
    """``fused_ok``: the user asked for --attention flat, the paper's rule for fused qkv too."""

    name = "flat"

    def __init__(self, fused_ok: bool = False):
        self.fused_ok = fused_ok

    def finish(self, jobs, layer_maps) -> None:
        routers = {}
        for job in jobs:
            m = re.match(r"^(?P<block>.*)\.(gate|router)\.weight$", job.name)
            if m:
                routers[m.group("block")] = job
        for job in jobs:
            _check(job, layer_maps, routers, self.fused_ok)


def _changes(job) -> bool:
    return job.shape != job.source.shape


def _check(job, layer_maps: dict[str, list[int]], routers: dict, fused_ok: bool) -> None:
    name = job.name
    leaf = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name
    param = name.rsplit(".", 1)[-1]
    if _QUANT.search(name) and _changes(job):
        raise SlicerError(f"tensor {name!r} is a quantization scale or packed block; flat selection would pair weights "
                          f"with other blocks' scales: {HINT}")
    expert = _EXPERT.match(name)
    if expert:
        block = expert.group("block")
        kept = layer_maps.get(f"{block}.experts")
        router = routers.get(block)
        if router is not None and (kept is not None or _changes(router)):
            rows = router.index[0].indices()
            members = kept if kept is not None else list(range(len(rows)))
            if rows != members:
                raise SlicerError(f"tensor {name!r}: flat selection keeps teacher experts {members[:8]} but router "
                                  f"{router.name!r} keeps the rows of experts {rows[:8]}: {HINT}")
    if _PACKED_EXPERTS.search(name) and _changes(job):
        raise SlicerError(f"tensor {name!r} packs every expert of a layer; flat selection cannot tell its layout: {HINT}")
    for part in (leaf, param):
        if part in _PER_HEAD_FUSED and _changes(job):
            raise SlicerError(f"tensor {name!r} interleaves q, k and v per head; flat selection would mix them: {HINT}")
        n = _FUSED_PARTS.get(part)
        if n and not fused_ok and job.shape and job.shape[0] != job.source.shape[0]:
            _check_fused(job, n)


def _check_fused(job, n: int) -> None:
    t, s = job.source.shape[0], job.shape[0]
    rows = job.index[0].indices()
    if t % n == 0 and s % n == 0:
        c, k = t // n, s // n
        first = rows[:k]
        if all(rows[i * k:(i + 1) * k] == [i * c + r for r in first] for i in range(n)) and all(r < c for r in first):
            return
    raise SlicerError(f"tensor {job.name!r} fuses {n} projections along its rows; flat selection of {t} -> {s} rows would "
                      f"mix them: {HINT}; or pass --attention flat to select them flat anyway (the paper's rule)")


def names_binder(options=None) -> Binder:
    """StudentSpec.make_binder for a student without a config: flat, guarded."""
    return NamesBinder()


def names_binder_fused_ok(options=None) -> Binder:
    """The same after an explicit --attention flat: fused projections selected flat, as asked."""
    return NamesBinder(fused_ok=True)
