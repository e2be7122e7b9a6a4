"""Attention: rows of q/k/v (separate, fused, or interleaved per head), columns of the output
projection, and the per-head parameters (q/k norms, sinks), bound to whole heads.

Axes of one attention block ``B`` (teacher path):
- ``B:kv-heads`` and ``B:group`` (query heads per kv head) are leaves chosen by the method;
  ``B:q-heads`` is derived, ``kv-heads * group``, so a kept kv head keeps its own queries;
- ``B:head-dim`` is whole when the head size is kept; when it shrinks it is a leaf, or for
  rotary models derived from ``B:rotary-pairs`` so each pair stays together: ``2 * pairs``
  for pairs (i, i + r/2), ``pairs * 2`` for interleaved pairs (2i, 2i + 1), followed by
  ``B:head-dims-unrotated`` where the rotation is partial.
With ``--attention flat`` the rows are selected like any other axis (the paper's rule).
"""
from __future__ import annotations

from ..axes import Layout, axis, concat, product
from .binder import ModelBinder, TensorRef
from .geometry import HeadGeometry

# Leaf module names, by what their output rows (input columns for "o") hold.
_Q = {"q_proj", "query", "q", "wq", "q_lin", "query_proj", "q_attn", "to_q"}
_K = {"k_proj", "key", "k", "wk", "k_lin", "key_proj", "to_k"}
_V = {"v_proj", "value", "v", "wv", "v_lin", "value_proj", "to_v"}
_O = {"o_proj", "out_proj", "o", "wo", "out_lin", "proj", "c_proj", "dense", "to_out"}
_QKV = {"qkv", "qkv_proj", "wqkv", "c_attn", "in_proj"}  # [q | k | v] (or [k | v] for GPT-2 cross-attention)
_INTERLEAVED = {"query_key_value"}  # GPT-NeoX: per head [q, k, v]
_IN_MAJOR = {"Conv1D"}  # GPT-2's Conv1D stores its weight [in, out]


def _inside_attention(ref: TensorRef) -> bool:
    names = [p.lower() for p in ref.owner.module_path.split(".")]
    return any("attn" in p or "attention" in p for p in names) or "Attention" in ref.module_class


def role(ref: TensorRef) -> str | None:
    """'q', 'k', 'v', 'o', 'qkv', 'interleaved' for an attention projection, else None."""
    if not _inside_attention(ref):
        return None
    leaf = ref.module_name.lower()
    if ref.param in ("in_proj_weight", "in_proj_bias"):  # torch.nn.MultiheadAttention
        return "qkv"
    if ref.param not in ("weight", "bias"):
        return None
    if leaf == "dense":  # BERT/ViT attention.output.dense, GPT-NeoX attention.dense; not an FFN's output.dense
        parent = ref.ancestors()[-1].lower() if ref.ancestors() else ""
        return "o" if parent == "output" or "attn" in parent or "attention" in parent else None
    for name, leaves in (("q", _Q), ("k", _K), ("v", _V), ("o", _O), ("qkv", _QKV), ("interleaved", _INTERLEAVED)):
        if leaf in leaves:
            return name
    return None


def bind(ref: TensorRef, b: ModelBinder) -> tuple[Layout | None, ...] | None:
    which = role(ref)
    if which is None:
        return _head_parameters(ref, b) if _inside_attention(ref) else None
    rank = len(ref.tshape)
    if rank not in (1, 2):
        return None
    in_major = ref.module_class in _IN_MAJOR
    if rank == 1:
        head_dim = None if which == "o" else 0
    elif which == "o":
        head_dim = 0 if in_major else 1
    else:
        head_dim = 1 if in_major else 0
    pair = b.heads(ref)
    out: list[Layout | None] = [None] * rank
    for d in range(rank):
        if d != head_dim:
            out[d] = b.hidden(ref, d)
    if head_dim is None:
        return tuple(out)
    if pair is None:  # --attention flat, or no head counts: the rows are one flat axis
        out[head_dim] = b.flat(ref, head_dim)
        return tuple(out)
    axes = HeadAxes(ref, b, *pair)
    out[head_dim] = axes.rows(which)
    return tuple(out)


class HeadAxes:
    """The head axes of one attention block, added to the plan's table on first use."""

    def __init__(self, ref: TensorRef, b: ModelBinder, teacher: HeadGeometry, student: HeadGeometry):
        self.b, self.T, self.S = b, teacher, student
        self.block = ref.block("attn", "attention") or ref.owner.module_path

    def _name(self, kind: str) -> str:
        return f"{self.block}:{kind}"

    @property
    def kv(self) -> str:
        return self.b.add(self._name("kv-heads"), "kv-heads", self.T.kv_heads, self.S.kv_heads)

    @property
    def q(self) -> str:
        group = self.b.add(self._name("group"), "group", self.T.group, self.S.group)
        return self.b.add(self._name("q-heads"), "q-heads", self.T.heads, self.S.heads, product(self.kv, group))

    @property
    def dim(self) -> str:
        T, S, name = self.T, self.S, self._name("head-dim")
        if T.head_dim == S.head_dim or not T.rotary_dim:
            return self.b.add(name, "head-dim", T.head_dim, S.head_dim)
        pairs = self.b.add(self._name("rotary-pairs"), "rotary-pairs", T.rotary_dim // 2, S.rotary_dim // 2)
        rotated = product(2, pairs) if T.rotary == "halves" else product(pairs, 2)
        if T.head_dim > T.rotary_dim:
            rest = self.b.add(self._name("head-dims-unrotated"), "head-dims-unrotated",
                              T.head_dim - T.rotary_dim, S.head_dim - S.rotary_dim)
            rotated = concat(rotated, axis(rest))
        return self.b.add(name, "head-dim", T.head_dim, S.head_dim, rotated)

    def rows(self, which: str) -> Layout:
        q, kv, dim = (lambda: self.q), (lambda: self.kv), self.dim
        if which in ("q", "o"):
            return product(q(), dim)
        if which in ("k", "v"):
            return product(kv(), dim)
        if which == "interleaved":
            return product(q(), 3, dim)
        return concat(product(q(), dim), product(kv(), dim), product(kv(), dim))


def _head_parameters(ref: TensorRef, b: ModelBinder) -> tuple[Layout | None, ...] | None:
    """Per-head parameters of an attention module: q/k norms over a head or all heads, sinks."""
    leaf = ref.module_name.lower()
    on_attention = "Attention" in ref.module_class  # a parameter of the attention module itself (sinks)
    per_head_norm = "norm" in leaf and leaf.startswith(("q", "k"))  # q_norm, k_layernorm, query_norm, ...
    if not (on_attention or per_head_norm):
        return None  # e.g. BERT's attention.output.LayerNorm: the residual's norm, over the hidden axis
    pair = b.heads(ref)
    if pair is None or len(ref.tshape) not in (1, 2):
        return None
    T, S = pair
    axes = HeadAxes(ref, b, T, S)
    keys = per_head_norm and leaf.startswith("k")
    heads, heads_s = (T.kv_heads, S.kv_heads) if keys else (T.heads, S.heads)
    head_axis = (lambda: axes.kv) if keys else (lambda: axes.q)
    shape, sshape = ref.tshape, ref.sshape
    if len(shape) == 1:
        n, m = shape[0], sshape[0]
        if (n, m) == (T.head_dim, S.head_dim):
            return (axis(axes.dim),)
        if (n, m) == (heads * T.head_dim, heads_s * S.head_dim):
            return (product(head_axis(), axes.dim),)
        if (n, m) == (heads, heads_s):
            return (axis(head_axis()),)
        return None
    if (shape, sshape) == ((heads, T.head_dim), (heads_s, S.head_dim)):
        return axis(head_axis()), axis(axes.dim)
    return None
