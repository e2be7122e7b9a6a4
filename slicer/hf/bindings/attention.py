"""Attention: rows of q/k/v (separate, fused, or interleaved per head), columns of the output
projection, and the per-head parameters (q/k norms, sinks), bound to whole heads.

Axes of one attention block ``B`` (teacher path):
- ``B:kv-heads`` and ``B:group`` (query heads per kv head) are leaves chosen by the method;
  ``B:q-heads`` is derived, ``kv-heads * group``, so a kept kv head keeps its own queries, and
  nested: under importance with per-query-head scores each kept kv head keeps its own best
  ``group`` query heads (``slicer.axes.choose``), else the same group members in every kv head;
- ``B:head-dim`` is whole when the head size is kept; when it shrinks it is a leaf, or for
  rotary models derived from ``B:rotary-pairs`` so each pair stays together: ``2 * pairs``
  for pairs (i, i + r/2), ``pairs * 2`` for interleaved pairs (2i, 2i + 1), followed by
  ``B:head-dims-unrotated`` where the rotation is partial.
A fused projection's rows are [q | k | v], [k | v], per head [q, k, v] or per kv group
[its queries, k, v]: which one is observed by running the module (``qkv_layout``), never
assumed from the tensor's name; where every head is kept whole no layout is needed. Per-head parameters follow their heads: q/k norms over a head, over all heads
or one norm module per head (StableLM's ``q_layernorm.norms.N``, whose N indexes the heads),
a norm of the attention output inside the block (MiniMax), output gates, and parameters and
buffers of the attention module itself with a heads dimension (sinks, decay rates).
With ``--attention flat`` the rows are selected like any other axis (the paper's rule).
"""
from __future__ import annotations

import inspect
import re

from ...axes import Layout, axis, concat, product
from ...errors import SlicerError
from .binder import ModelBinder, TensorRef, attention_path
from .geometry import HeadGeometry
from .qkv_layout import fused_layout

# Leaf module names, by what their output rows (input columns for "o") hold.
_Q = {"q_proj", "query", "q", "wq", "q_lin", "query_proj", "q_attn", "to_q"}
_K = {"k_proj", "key", "k", "wk", "k_lin", "key_proj", "to_k"}
_V = {"v_proj", "value", "v", "wv", "v_lin", "value_proj", "to_v"}
_O = {"o_proj", "out_proj", "o", "wo", "out_lin", "proj", "c_proj", "dense", "to_out", "projection_layer"}
_FUSED = {"qkv", "qkv_proj", "wqkv", "c_attn", "in_proj", "query_key_value"}  # layout: qkv_layout
_GATE = {"output_gate", "o_gate", "g_proj", "gate_proj"}  # inside attention: gates of the heads' output
_IN_MAJOR = {"Conv1D"}  # GPT-2's Conv1D stores its weight [in, out]


def _inside_attention(ref: TensorRef) -> bool:
    names = [p.lower() for p in ref.owner.module_path.split(".")]
    return any("attn" in p or "attention" in p for p in names) or "Attention" in ref.module_class


def role(ref: TensorRef) -> str | None:
    """'q', 'k', 'v', 'o', 'fused' or 'gate' for an attention projection, else None."""
    if not _inside_attention(ref):
        return None
    leaf = ref.module_name.lower()
    if ref.param in ("in_proj_weight", "in_proj_bias"):  # torch.nn.MultiheadAttention
        return "fused"
    if ref.param not in ("weight", "bias"):
        return None
    if leaf == "dense":  # BERT/ViT attention.output.dense, GPT-NeoX attention.dense; not an FFN's output.dense
        parent = ref.ancestors()[-1].lower() if ref.ancestors() else ""
        return "o" if parent == "output" or "attn" in parent or "attention" in parent else None
    for name, leaves in (("q", _Q), ("k", _K), ("v", _V), ("o", _O), ("fused", _FUSED), ("gate", _GATE)):
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
    if which == "fused":
        which = _fused(ref, b, *pair, head_dim)
        if which == "whole":  # every head kept whole: every row kept, whatever their layout
            out[head_dim] = b.flat(ref, head_dim)
            return tuple(out)
    elif which == "gate" and (ref.tshape[head_dim], ref.sshape[head_dim]) == (pair[0].heads, pair[1].heads):
        out[head_dim] = axis(axes.q)  # one gate per head
        return tuple(out)
    out[head_dim] = axes.rows(which)
    if which == "q" and _gated_query(ref, b, pair[0], ref.tshape[head_dim]):
        out[head_dim] = product(axes.q, 2, axes.dim)  # per head [query | gate], gate over the head's dims
    return tuple(out)


def _gated_query(ref: TensorRef, b: ModelBinder, T: HeadGeometry, rows: int) -> bool:
    """Qwen3-Next: q_proj holds twice the query rows, viewed per head as (head_dim * 2) and chunked
    into [query | gate]; read from the attention module's forward, never assumed."""
    if rows != 2 * T.heads * T.head_dim:
        return False
    module = b.teacher.modules.get(attention_path(b.teacher, ref.owner.module_path) or "")
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        source = ""
    if re.search(r"view\([^)]*-1,\s*self\.head_dim\s*\*\s*2\s*\)", source) and re.search(r"chunk\(", source):
        return True
    raise SlicerError(f"tensor {ref.student_name!r}: {rows} query rows for {T.heads} heads of {T.head_dim}, and "
                      f"{type(module).__name__}.forward does not say how they split; its heads cannot be kept whole")


def _fused(ref: TensorRef, b: ModelBinder, T: HeadGeometry, S: HeadGeometry, d: int) -> str:
    """The layout of a fused projection's rows, the teacher's and the student's the same."""
    leaf = ref.module_name if ref.param in ("weight", "bias") else ref.param
    t_attn = b.teacher.modules[attention_path(b.teacher, ref.owner.module_path)]
    s_attn = b.student.modules[attention_path(b.student, ref.student_owner.module_path)]
    got_t = fused_layout(t_attn, leaf, ref.tshape[d], T)
    if got_t is None and T == S and ref.tshape[d] == ref.sshape[d] and type(t_attn) is type(s_attn):
        return "whole"  # identity, depth only, hidden only: no row moves, no layout needed
    if got_t is None:
        raise SlicerError(f"tensor {ref.student_name!r}: slicer cannot tell from {type(t_attn).__name__}.forward how "
                          f"{leaf} lays out the q, k and v rows of {T.describe()}, so whole heads cannot be kept; "
                          "pass --attention flat to select its rows like any other axis")
    got_s = fused_layout(s_attn, leaf, ref.sshape[d], S)
    if got_s != got_t:
        raise SlicerError(f"tensor {ref.student_name!r}: the teacher's {leaf} holds its rows as {got_t}, the student's "
                          f"as {got_s or 'something else'}; the student's config must keep the teacher's attention "
                          "layout (new_decoder_architecture, multi_query, ...)")
    return got_t


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
        # nested: under a ranking that scores the query heads, each kept kv head keeps its own best ones
        return self.b.add(self._name("q-heads"), "q-heads", self.T.heads, self.S.heads, product(self.kv, group),
                          nested=True)

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

    @property
    def group_slots(self) -> str:
        """Per kv head: its query heads, then one key and one value (Falcon's new architecture)."""
        group = self.b.add(self._name("group"), "group", self.T.group, self.S.group)
        return self.b.add(self._name("group-qkv"), "group-qkv", self.T.group + 2, self.S.group + 2,
                          concat(axis(group), product(1), product(1)))

    def rows(self, which: str) -> Layout:
        q, kv, dim = (lambda: self.q), (lambda: self.kv), self.dim
        if which in ("q", "o", "gate"):
            return product(q(), dim)
        if which in ("k", "v"):
            return product(kv(), dim)
        if which == "per-head":
            return product(q(), 3, dim)
        if which == "grouped":
            return product(kv(), self.group_slots, dim)
        if which == "kv":
            return concat(product(kv(), dim), product(kv(), dim))
        return concat(product(q(), dim), product(kv(), dim), product(kv(), dim))


def _head_parameters(ref: TensorRef, b: ModelBinder) -> tuple[Layout | None, ...] | None:
    """Per-head parameters of an attention block: q/k norms, norms and gates of the heads' output,
    the attention module's own tensors with a heads dimension (sinks, decay rates)."""
    norm_of = _per_head_norm(ref)  # "q" / "k": a norm of the queries or keys, per head or over all heads
    output_norm = norm_of is None and _is_norm(ref) and _beside_projections(ref, b)  # MiniMax's attention norm
    on_attention = norm_of is None and "Attention" in ref.module_class  # the module's own: sinks, slopes
    if not (norm_of or output_norm or on_attention):
        return None  # e.g. BERT's attention.output.LayerNorm: the residual's norm, over the hidden axis
    pair = b.heads(ref)
    if pair is None:
        # --attention flat: the paper's rule, every dimension by its sizes (not matched to other axes)
        return tuple(b.flat(ref, d) for d in range(len(ref.tshape))) if b.attention != "heads" else None
    T, S = pair
    axes = HeadAxes(ref, b, T, S)
    if on_attention:
        return _heads_dimension(ref, axes, T, S)
    keys = norm_of == "k"
    heads, heads_s = (T.kv_heads, S.kv_heads) if keys else (T.heads, S.heads)
    head_axis = (lambda: axes.kv) if keys else (lambda: axes.q)
    shape, sshape = ref.tshape, ref.sshape
    if len(shape) == 1:
        n, m = shape[0], sshape[0]
        if (n, m) == (heads * T.head_dim, heads_s * S.head_dim) and heads > 1:
            return (product(head_axis(), axes.dim),)
        if (n, m) == (T.head_dim, S.head_dim):
            return (axis(axes.dim),)
        return None
    if len(shape) == 2 and (shape, sshape) == ((heads, T.head_dim), (heads_s, S.head_dim)):
        return axis(head_axis()), axis(axes.dim)
    return None


# q_norm, k_layernorm, query_norm, key_layernorm (not MLA's q_a_layernorm / kv_a_layernorm: a latent's)
_QK_NORM = re.compile(r"^(?:q|k|query|key)_?(?:layer_?)?norms?$")


def _per_head_norm(ref: TensorRef) -> str | None:
    """'q' or 'k' for a norm of the queries or keys (q_norm, k_layernorm, query_norm; StableLM's
    q_layernorm.norms.N, one norm per head), else None."""
    for part in reversed(ref.owner.module_path.split(".")):
        low = part.lower()
        if _QK_NORM.match(low):
            return low[0]
        if "attn" in low or "attention" in low:
            return None  # up to the attention block, no further
    return None


def _is_norm(ref: TensorRef) -> bool:
    return len(ref.tshape) == 1 and ("Norm" in ref.module_class or "norm" in ref.module_name.lower())


def _beside_projections(ref: TensorRef, b: ModelBinder) -> bool:
    """A module in the very block that holds the q/k/v projections (not a residual norm of the layer)."""
    parent = ref.owner.module_path.rsplit(".", 1)[0] if "." in ref.owner.module_path else ""
    module = b.teacher.modules.get(parent)
    names = {n.lower() for n, _ in module.named_children()} if module is not None else set()
    return bool(names & (_Q | _K | _V | _FUSED))


def _heads_dimension(ref: TensorRef, axes: HeadAxes, T: HeadGeometry, S: HeadGeometry):
    """The attention module's own tensors: the one dimension of the block's (query) heads, the
    others kept (sinks [heads]; MiniMax's decay rates [heads, block, 1], [1, heads, block, block])."""
    dims = [d for d, (n, m) in enumerate(zip(ref.tshape, ref.sshape)) if (n, m) == (T.heads, S.heads)]
    changing = [d for d, (n, m) in enumerate(zip(ref.tshape, ref.sshape)) if n != m]
    if len(dims) != 1 or any(d not in dims for d in changing):
        return None  # several dimensions the size of the heads, or another one changes: by size, or refused
    out: list[Layout | None] = [None] * len(ref.tshape)
    out[dims[0]] = axis(axes.q)
    return tuple(out)


def head_component(student_prefix: str, teacher_prefix: str, t: int, s: int, table, b: ModelBinder) -> str | None:
    """One norm module per head (StableLM's ``q_layernorm.norms.N``): N is a member of the
    block's query heads (``k_layernorm``: kv heads), chosen with them, never by layer selection."""
    which = _norm_list(teacher_prefix)
    if which is None:
        return None
    below = teacher_prefix + "."
    tname = next((n for n in b.teacher_names if n.startswith(below)), None)
    sname = next((n for n in b.student_names if n.startswith(student_prefix + ".")), None)
    if tname is None or sname is None:
        return None
    ref = b.ref(sname, tname)
    pair = b.heads(ref)
    if pair is None:
        return None  # --attention flat: a list like any other
    T, S = pair
    axes = HeadAxes(ref, b, T, S)
    heads = (T.kv_heads, S.kv_heads) if which == "k" else (T.heads, S.heads)
    if (t, s) != heads:
        raise SlicerError(f"{teacher_prefix!r} holds {t} norms per head and the student {s}, but the attention block "
                          f"has {heads[0]} -> {heads[1]} {'kv ' if which == 'k' else ''}heads; slicer cannot tell "
                          "which heads they belong to")
    return axes.kv if which == "k" else axes.q


def _norm_list(prefix: str) -> str | None:
    """'q' / 'k' where ``prefix`` is a list inside a query or key norm of an attention block."""
    parts = [p.lower() for p in prefix.split(".")]
    for k in range(len(parts) - 1, -1, -1):
        if "attn" in parts[k] or "attention" in parts[k]:
            return None
        if _QK_NORM.match(parts[k]) and k < len(parts) - 1:
            inside = any("attn" in p or "attention" in p for p in parts[:k])
            return parts[k][0] if inside else None
    return None
