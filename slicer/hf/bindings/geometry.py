"""Attention geometry read off transformers' modules and configs: heads, kv heads, head size, rotary.

Everything here comes from the model transformers builds: an attention module's own
``num_heads`` / ``head_dim`` / ``num_key_value_groups`` where it keeps them, its config
otherwise, and the rotary convention from the modeling module's own rotation function
(called on ``arange(4)``), so GPT-J's interleaved pairs and Llama's halves need no table.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from ...errors import SlicerError


@dataclass(frozen=True)
class HeadGeometry:
    heads: int  # query heads
    kv_heads: int
    head_dim: int
    rotary_dim: int = 0  # dims per head that rotary embeddings rotate; 0: none
    rotary: str = "halves"  # "halves": pairs (i, i + r/2) (rotate_half); "interleaved": (2i, 2i + 1)

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    def describe(self) -> str:
        rot = f", rotary {self.rotary_dim} {self.rotary}" if self.rotary_dim else ""
        return f"{self.heads} heads / {self.kv_heads} kv heads of {self.head_dim}{rot}"


def positive_int(obj, *names: str) -> int | None:
    """The first of the attributes ``names`` of ``obj`` that is a positive int (None: none is)."""
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def geometry(module, config, rotary: str | None) -> HeadGeometry | None:
    """The heads of one attention module (None: it names no head count)."""
    heads = positive_int(module, "num_heads", "num_attention_heads", "n_head", "n_heads") or \
        positive_int(config, "num_attention_heads", "n_head", "num_heads")
    if heads is None:
        return None
    kv = positive_int(module, "num_key_value_heads", "num_kv_heads") or positive_int(config, "num_key_value_heads", "num_kv_heads",
                                                                       "n_head_kv")
    if kv is None:
        groups = positive_int(module, "num_key_value_groups")
        kv = heads // groups if groups and heads % groups == 0 else None
    if kv is None:
        kv = 1 if getattr(config, "multi_query", False) else heads
    head_dim = positive_int(module, "head_dim", "head_size", "attention_head_size") or positive_int(config, "head_dim", "d_kv")
    if head_dim is None:
        hidden = positive_int(config, "hidden_size", "n_embd", "d_model", "embed_dim")
        if hidden is None:
            return None
        head_dim = hidden // heads
    rotary_dim = 0
    if rotary is not None:
        explicit = positive_int(config, "rotary_dim", "rotary_emb_dim")
        factor = getattr(config, "partial_rotary_factor", None) or getattr(config, "rotary_pct", None)
        params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
        if factor is None and isinstance(params, dict):
            nested = [params] + [v for v in params.values() if isinstance(v, dict)]
            factor = next((p["partial_rotary_factor"] for p in nested if p.get("partial_rotary_factor")), None)
        rotary_dim = explicit or int(head_dim * (factor or 1.0))
    return HeadGeometry(heads, kv, head_dim, rotary_dim, rotary or "halves")


def rotary_convention(module) -> str | None:
    """How the model pairs rotary dims, from its own rotation function; None: no rotation found.

    ``rotate_half(arange(4))`` is ``[-2, -3, 0, 1]`` for pairs (i, i + d/2) and
    ``[-1, 0, -3, 2]`` for interleaved pairs (2i, 2i + 1). The probe is shaped like the
    [batch, heads, seq, head_dim] tensors the models rotate: GPT-J's ``rotate_every_two``
    indexes ``x[:, :, :, ::2]``."""
    mod = sys.modules.get(type(module).__module__)
    for name in ("rotate_half", "rotate_every_two"):
        fn = getattr(mod, name, None)
        if not callable(fn):
            continue
        import torch

        try:
            got = fn(torch.arange(4.0).view(1, 1, 1, 4)).reshape(-1).tolist()
        except Exception:  # noqa: BLE001 - a signature we do not know: say we cannot tell
            return "unknown"
        if got == [-2.0, -3.0, 0.0, 1.0]:
            return "halves"
        if got == [-1.0, 0.0, -3.0, 2.0]:
            return "interleaved"
        return "unknown"
    return None


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
    if student.rotary_dim % 2 or student.rotary_dim > student.head_dim:
        raise SlicerError(f"{where}: student rotates {student.rotary_dim} of {student.head_dim} dims per head: rotary "
                          "embeddings rotate pairs of dims within a head (rotary_dim, partial_rotary_factor)")
    if student.head_dim == teacher.head_dim:
        return  # whole heads: every dim kept, rotary or not
    if teacher.rotary_dim and teacher.rotary == "unknown":
        raise SlicerError(f"{where}: the head size shrinks ({teacher.head_dim} -> {student.head_dim}) but slicer cannot "
                          "tell how this model pairs its rotary dims; keep head_dim")
    if any(g.rotary_dim % 2 or g.rotary_dim > g.head_dim for g in (teacher, student)) or (
            bool(student.rotary_dim) != bool(teacher.rotary_dim) or student.rotary_dim > teacher.rotary_dim
            or student.head_dim - student.rotary_dim > teacher.head_dim - teacher.rotary_dim):
        raise SlicerError(f"{where}: student rotates {student.rotary_dim} of {student.head_dim} dims per head, the teacher "
                          f"{teacher.rotary_dim} of {teacher.head_dim}: rotary pairs cannot be kept{hint}")
    if teacher.head_dim > teacher.rotary_dim and student.head_dim == student.rotary_dim:
        raise SlicerError(f"{where}: student rotates all {student.head_dim} dims per head, the teacher {teacher.rotary_dim} "
                          f"of {teacher.head_dim}: every unrotated dim would be dropped; keep at least one (rotary_dim, "
                          f"partial_rotary_factor){hint}")
