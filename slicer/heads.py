"""Head-aware selection: keep whole attention heads (docs: "Attention heads").

Flat selection over the rows of a query projection mixes heads (and breaks the
rotary pairs ``i, i + head_dim/2``). Here the attention tensors get index sets
built from whole heads:

- kv heads ``K = method(H_kv_t, H_kv_s)``; query heads inside each kept group
  ``Q = method(G_t, G_s)`` (G = query heads per kv head, the same Q in every
  group); student query head ``j`` is teacher head ``K[j // G_s]*G_t + Q[j % G_s]``;
- head dims: all when the size is kept; for rotary models ``P = method(r/2, r'/2)``
  and dims ``P`` then ``P + r/2`` (r = rotary dims per head, the head size unless the
  rotation is partial; dims past r by the method); otherwise ``method(d, d')``.

Attention tensors are recognised by name (``q_proj``, ``query``, ``c_attn``, ``qkv``
... under a module whose name says attention) and checked against the head
geometry: one whose size does not match (another tower, a latent projection) falls
back to flat selection with a warning. Everything else uses the element method.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from .errors import SlicerError
from .selection import IndexSet, Selector

log = logging.getLogger("slicer")

# Leaf module names, by what their output rows (input columns for "o") hold.
_Q = {"q_proj", "query", "q", "wq", "q_lin", "query_proj", "q_attn"}
_K = {"k_proj", "key", "k", "wk", "k_lin", "key_proj"}
_V = {"v_proj", "value", "v", "wv", "v_lin", "value_proj"}
_O = {"o_proj", "out_proj", "o", "wo", "out_lin", "proj", "c_proj", "dense"}
_QKV = {"qkv", "qkv_proj", "wqkv", "c_attn"}  # [q; k; v] blocks (or [k; v] for GPT-2 cross-attention)
_INTERLEAVED = {"query_key_value"}  # GPT-NeoX, Bloom: per head [q, k, v]


@dataclass(frozen=True)
class HeadGeometry:
    heads: int  # query heads
    kv_heads: int
    head_dim: int
    rotary_dim: int = 0  # dims per head that rotary embeddings rotate (pairs i, i + rotary_dim/2); 0: none

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads


def check_geometry(teacher: HeadGeometry, student: HeadGeometry, where: str) -> None:
    """Refuse a student whose heads cannot be whole teacher heads (one line, naming the keys)."""
    for role, g in (("teacher", teacher), ("student", student)):
        if min(g.heads, g.kv_heads, g.head_dim) < 1:
            raise SlicerError(f"{where}: {role} has {g.heads} attention heads, {g.kv_heads} kv heads, head size {g.head_dim}")
        if g.heads % g.kv_heads:
            raise SlicerError(f"{where}: {role} num_attention_heads={g.heads} is not a multiple of num_key_value_heads={g.kv_heads}")
    hint = "; pass --attention flat to select rows like any other axis"
    if student.kv_heads > teacher.kv_heads:
        raise SlicerError(f"{where}: student num_key_value_heads={student.kv_heads} exceeds the teacher's {teacher.kv_heads}{hint}")
    if student.group > teacher.group:
        raise SlicerError(f"{where}: student has {student.group} query heads per kv head, the teacher {teacher.group} "
                          f"(num_attention_heads / num_key_value_heads); whole heads cannot be kept{hint}")
    if student.head_dim > teacher.head_dim:
        raise SlicerError(f"{where}: student head size {student.head_dim} exceeds the teacher's {teacher.head_dim} "
                          "(head_dim, else hidden_size / num_attention_heads)")
    if student.head_dim == teacher.head_dim:
        return  # whole heads: every dim kept, rotary or not
    if any(g.rotary_dim % 2 or g.rotary_dim > g.head_dim for g in (teacher, student)) or (
            bool(student.rotary_dim) != bool(teacher.rotary_dim) or student.rotary_dim > teacher.rotary_dim
            or student.head_dim - student.rotary_dim > teacher.head_dim - teacher.rotary_dim):
        raise SlicerError(f"{where}: student rotates {student.rotary_dim} of {student.head_dim} dims per head, the teacher "
                          f"{teacher.rotary_dim} of {teacher.head_dim}: rotary pairs cannot be kept{hint}")


def attention_role(name: str) -> str | None:
    """'q', 'k', 'v', 'o', 'qkv', 'interleaved' for an attention tensor's name, else None."""
    parts = name.split(".")
    if len(parts) < 2 or parts[-1] not in ("weight", "bias"):
        return None
    leaf, ancestors = parts[-2].lower(), [p.lower() for p in parts[:-2]]

    def is_attention(p: str) -> bool:
        return "attn" in p or "attention" in p

    inside = any(is_attention(p) for p in ancestors) or leaf in ("c_attn", "q_attn")
    if not inside:
        return None
    if leaf == "dense":  # BERT/ViT attention.output.dense, GPT-NeoX attention.dense; not the FFN's output.dense
        parent = ancestors[-1] if ancestors else ""
        return "o" if parent == "output" or is_attention(parent) else None
    for role, leaves in (("q", _Q), ("k", _K), ("v", _V), ("o", _O), ("qkv", _QKV), ("interleaved", _INTERLEAVED)):
        if leaf in leaves:
            return role
    return None


class HeadAwareSelector(Selector):
    """A Selector that hands out whole-head index sets for attention tensors.

    ``input_major``: modules whose weight is stored [in, out] (GPT-2's Conv1D), so the
    head axis of ``c_attn`` is dim 1 and that of ``c_proj`` is dim 0.
    """

    def __init__(self, method: str, seed: int, teacher: HeadGeometry, student: HeadGeometry, *,
                 input_major: frozenset[str] | set[str] = frozenset()):
        super().__init__(method, seed)
        check_geometry(teacher, student, "attention heads")
        self.teacher = teacher
        self.student = student
        self.input_major = frozenset(input_major)
        self._warned: set[tuple] = set()

    def for_tensor(self, tensor: str, teacher_shape: tuple[int, ...], student_shape: tuple[int, ...]) -> tuple[IndexSet, ...]:
        role = attention_role(tensor)
        axis = self._head_axis(tensor, role, len(teacher_shape))
        if axis is None:
            return super().for_tensor(tensor, teacher_shape, student_shape)
        rows = self._rows(role, teacher_shape[axis], student_shape[axis], tensor)
        if rows is None:
            return super().for_tensor(tensor, teacher_shape, student_shape)
        return tuple(rows if d == axis else self.for_dim(t, s, tensor, d)
                     for d, (t, s) in enumerate(zip(teacher_shape, student_shape)))

    def _head_axis(self, tensor: str, role: str | None, rank: int) -> int | None:
        if role is None:
            return None
        module, param = tensor.rsplit(".", 1)
        if param == "bias":
            # The output projection's bias lives on the hidden axis: element method.
            return None if role == "o" or rank != 1 else 0
        if rank != 2:
            return None
        transposed = module in self.input_major
        if role == "o":
            return 0 if transposed else 1
        return 1 if transposed else 0

    # ---------------------------------------------------------------- index sets

    def _rows(self, role: str, t: int, s: int, tensor: str) -> IndexSet | None:
        """The head-axis index set for one tensor, or None where the sizes do not fit the heads."""
        T, S = self.teacher, self.student
        tq, tkv, sq, skv = T.heads * T.head_dim, T.kv_heads * T.head_dim, S.heads * S.head_dim, S.kv_heads * S.head_dim
        if role in ("q", "o") and (t, s) == (tq, sq):
            kind, blocks = "q", [(0, "q")]
        elif role in ("k", "v") and (t, s) == (tkv, skv):
            kind, blocks = "kv", [(0, "kv")]
        elif role == "qkv" and (t, s) == (tq + 2 * tkv, sq + 2 * skv):
            kind, blocks = "qkv", [(0, "q"), (tq, "kv"), (tq + tkv, "kv")]
        elif role == "qkv" and (t, s) == (2 * tkv, 2 * skv):  # cross-attention: keys and values only
            kind, blocks = "kv+kv", [(0, "kv"), (tkv, "kv")]
        elif role == "interleaved" and (t, s) == (3 * tq, 3 * sq) and T.group == S.group == 1:
            kind, blocks = "interleaved", None
        else:
            warn = (tensor.split(".")[-1], role, t, s)
            if warn not in self._warned:
                self._warned.add(warn)
                log.warning("%s: %d -> %d rows do not fit the attention heads (%s); selecting it flat", tensor, t, s, self._geometry())
            return None
        if t == s:
            return self.for_dim(t, s, tensor, 0)  # nothing changes: the identity
        material = tensor if self.method == "random-inconsistent" else ""
        heads = {"q": self.query_heads(material), "kv": self.kv_heads(material)}
        dims = self.head_dims(material)
        d = T.head_dim
        if blocks is None:  # per head [q, k, v], each head_dim long
            rows = [h * 3 * d + part * d + i for h in heads["q"] for part in range(3) for i in dims]
        else:
            rows = [start + h * d + i for start, which in blocks for h in heads[which] for i in dims]
        key = f"heads:{kind}-rows:{self._geometry()}:{self.method}" + (f":{tensor}" if material else "")
        return self.named(key, t, rows)

    def kv_heads(self, material: str = "") -> list[int]:
        """K: the teacher kv heads kept, in order."""
        T, S = self.teacher, self.student
        return self._info("kv-heads", T.kv_heads, S.kv_heads, material)

    def query_heads(self, material: str = "") -> list[int]:
        """Teacher query head of each student query head: k*G_t + q for k in K, q in Q."""
        T, S = self.teacher, self.student
        kept = self.kv_heads(material)
        within = self._info("group-heads", T.group, S.group, material)
        heads = [k * T.group + q for k in kept for q in within]
        self.named(f"heads:q-heads:{T.heads}->{S.heads}:{self.method}" + (f":{material}" if material else ""), T.heads, heads)
        return heads

    def head_dims(self, material: str = "") -> list[int]:
        """Teacher dims kept in every head (rotary pairs together)."""
        T, S = self.teacher, self.student
        if T.head_dim == S.head_dim:
            return list(range(T.head_dim))
        if not T.rotary_dim:
            return self._info("head-dims", T.head_dim, S.head_dim, material)
        half = T.rotary_dim // 2
        pairs = self._info("rotary-pairs", half, S.rotary_dim // 2, material)
        dims = pairs + [p + half for p in pairs]
        rest_t, rest_s = T.head_dim - T.rotary_dim, S.head_dim - S.rotary_dim
        if rest_s:
            dims += [T.rotary_dim + i for i in self._info("head-dims-unrotated", rest_t, rest_s, material)]
        self.named(f"heads:head-dims:{T.head_dim}->{S.head_dim}:rotary:{self.method}" + (f":{material}" if material else ""),
                   T.head_dim, dims)
        return dims

    def _info(self, what: str, t: int, s: int, material: str) -> list[int]:
        """method(t, s), registered under a descriptive key so the manifest shows it."""
        key = f"heads:{what}:{t}->{s}:{self.method}" + (f":{material}" if material else "")
        found = self.sets.get(key)
        if found is None:
            found = self.named(key, t, self._indices(t, s, f"{material}#{what}", 0))
        return found.indices()

    def _geometry(self) -> str:
        T, S = self.teacher, self.student
        return f"{T.heads}/{T.kv_heads}x{T.head_dim}->{S.heads}/{S.kv_heads}x{S.head_dim}"
