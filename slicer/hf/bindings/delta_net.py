"""Gated DeltaNet mixers (Qwen3-Next's linear attention): their heads, bound whole.

The module holds ``num_k_heads`` key heads of ``head_k_dim`` and ``num_v_heads`` value heads of
``head_v_dim``, ``num_v_heads / num_k_heads`` value heads per key head (a group). Its tensors,
per key head h (axes ``B:k-heads``, ``B:v-group``, ``B:k-head-dim``, ``B:v-head-dim``):

- ``in_proj_qkvz`` rows: per key head [q (head_k_dim) | k (head_k_dim) | v (group x head_v_dim) | z (same)];
- ``in_proj_ba`` rows: per key head [b (group) | a (group)];
- ``conv1d`` channels: [all q | all k | all v], q and k key head by key head, v value head by value head;
- ``dt_bias``, ``A_log``: one per value head; ``norm``: over one value head's dims;
- ``out_proj`` columns: the value heads' dims.

The per-key-head grouping of ``in_proj_qkvz`` is not taken on trust: a copy of the module runs with
the projection's row numbers as its output, and the channels its depthwise conv receives must be
the q, k and v rows this layout names (``observe.conv_input``). Where they are not (another
release, another ordering), the heads are refused as before (``linear_attention``).
"""
from __future__ import annotations

from ...axes import Layout, axis, concat, product
from .binder import ModelBinder, TensorRef
from .geometry import positive_int
from .observe import conv_input

_PARTS = ("in_proj_qkvz", "in_proj_ba", "conv1d", "out_proj", "norm")
_SIZES = ("num_k_heads", "num_v_heads", "head_k_dim", "head_v_dim")


def _mixer(b: ModelBinder, path: str, view) -> tuple[str, object] | None:
    """(path, module) of the Gated DeltaNet module holding ``path`` (the module itself or its parent)."""
    for p in (path, path.rsplit(".", 1)[0] if "." in path else ""):
        m = view.modules.get(p)
        if m is not None and all(hasattr(m, n) for n in _PARTS) and all(positive_int(m, n) for n in _SIZES):
            return p, m
    return None


_VERIFIED: dict = {}


def _verified(module) -> bool:
    key = (type(module), tuple(positive_int(module, n) for n in _SIZES))
    if key not in _VERIFIED:
        kh, vh, dk, dv = key[1]
        g = vh // kh
        width = 2 * dk + 2 * g * dv
        want = [h * width + i for h in range(kh) for i in range(dk)]
        want += [h * width + dk + i for h in range(kh) for i in range(dk)]
        want += [h * width + 2 * dk + j * dv + i for h in range(kh) for j in range(g) for i in range(dv)]
        seen = conv_input(module, "in_proj_qkvz", "conv1d", kh * width)
        _VERIFIED[key] = (module, seen is not None and seen == want)
    return _VERIFIED[key][1]


def bind(ref: TensorRef, b: ModelBinder) -> tuple[Layout | None, ...] | None:
    found = _mixer(b, ref.owner.module_path, b.teacher)
    if found is None or b.attention != "heads":
        return None
    path, t_mod = found
    s_found = _mixer(b, ref.student_owner.module_path, b.student)
    if s_found is None or not _verified(t_mod):
        return None  # linear_attention refuses a change of its heads, naming the sizes
    s_mod = s_found[1]
    T = [positive_int(t_mod, n) for n in _SIZES]
    S = [positive_int(s_mod, n) for n in _SIZES]
    if T[1] % T[0] or S[1] % S[0]:
        return None
    # axes are named after the teacher's checkpoint path of the mixer
    block = ref.teacher_name.rsplit(".", 1 if ref.owner.module_path == path else 2)[0]

    def ax(kind: str, t: int, s: int, parts=None) -> str:
        return b.add(f"{block}:{kind}", kind, t, s, parts)

    kh = ax("k-heads", T[0], S[0])
    vg = ax("v-group", T[1] // T[0], S[1] // S[0])
    dk = ax("k-head-dim", T[2], S[2])
    dv = ax("v-head-dim", T[3], S[3])
    leaf, param, rank = ref.module_name, ref.param, len(ref.tshape)
    if param in ("dt_bias", "A_log") and rank == 1:
        return (product(kh, vg),)
    if leaf == "norm" and param == "weight" and rank == 1:
        return (axis(dv),)
    if leaf == "conv1d" and param == "weight":
        return (concat(product(kh, dk), product(kh, dk), product(kh, vg, dv)),) + (None,) * (rank - 1)
    if rank != 2 or param != "weight":
        return None
    if leaf == "in_proj_qkvz":
        slot = ax("qkvz", 2 * T[2] + 2 * T[1] // T[0] * T[3], 2 * S[2] + 2 * S[1] // S[0] * S[3],
                  concat(axis(dk), axis(dk), product(vg, dv), product(vg, dv)))
        return product(kh, slot), b.hidden(ref, 1)
    if leaf == "in_proj_ba":
        slot = ax("ba", 2 * T[1] // T[0], 2 * S[1] // S[0], concat(axis(vg), axis(vg)))
        return product(kh, slot), b.hidden(ref, 1)
    if leaf == "out_proj":
        return b.hidden(ref, 0), product(kh, vg, dv)
    return None
