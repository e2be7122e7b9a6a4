"""Multi-head latent attention (DeepSeek-V2/V3 and their kin): heads kept whole, latents apart.

The module's own attributes (``kv_lora_rank``, ``q_lora_rank``, ``qk_nope_head_dim``,
``qk_rope_head_dim``, ``v_head_dim``, ``num_heads``) say how its projections are laid out:
- ``q_a_proj`` [q_lora, H] -> ``q_a_layernorm`` [q_lora] -> ``q_b_proj`` [heads * (nope | rope), q_lora]
  (or ``q_proj`` [heads * (nope | rope), H] without a q latent);
- ``kv_a_proj_with_mqa`` [kv_lora | rope, H]: the kv latent, then one rotary key shared by all heads;
- ``kv_a_layernorm`` [kv_lora] -> ``kv_b_proj`` [heads * (nope | v), kv_lora];
- ``o_proj`` [H, heads * v].
Axes of one block ``B``: ``B:heads``, ``B:q-lora``, ``B:kv-lora``, ``B:nope-dims`` (a query's
nope dims are dotted with the key's: one axis in q and in kv_b), ``B:v-dims``, ``B:rope-dims``,
and the derived per-head ``B:qk-head-dim`` = nope | rope and ``B:kv-head-dim`` = nope | v.
Heads, both latents, nope and v dims may shrink. The rotary dims are kept whole (refused,
naming ``qk_rope_head_dim``): they are one rotary key shared by every head, laid out in pairs
as the model's ``rope_interleave`` says, and a smaller rope respaces every frequency. With
--attention flat a change of the per-head dimensions is refused: flat selection would mix the
latent, rotary and per-head parts.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...axes import Layout, axis, concat, product
from ...errors import SlicerError
from .binder import ModelBinder, TensorRef
from .geometry import positive_int


@dataclass(frozen=True)
class MlaGeometry:
    heads: int
    kv_heads: int
    q_lora: int  # 0: no q latent (q_proj straight from the hidden states)
    kv_lora: int
    nope: int
    rope: int
    v: int

    @classmethod
    def of(cls, module, config) -> "MlaGeometry":
        heads = positive_int(module, "num_heads") or positive_int(config, "num_attention_heads")
        kv = positive_int(config, "num_key_value_heads") or heads
        return cls(heads, kv, positive_int(module, "q_lora_rank") or 0, positive_int(module, "kv_lora_rank"),
                   positive_int(module, "qk_nope_head_dim") or 0, positive_int(module, "qk_rope_head_dim") or 0,
                   positive_int(module, "v_head_dim"))


def is_mla(module) -> bool:
    return positive_int(module, "kv_lora_rank") is not None and hasattr(module, "kv_a_proj_with_mqa")


def check(teacher: MlaGeometry, student: MlaGeometry, where: str) -> None:
    """Refuse, naming the config key, what latent attention cannot keep consistently."""
    if student.rope != teacher.rope:
        raise SlicerError(f"{where}: qk_rope_head_dim {teacher.rope} -> {student.rope}: slicer keeps the rotary dims "
                          "of latent attention whole (one rotary key shared by every head, its pairs laid out as "
                          "the model's rope_interleave says); keep qk_rope_head_dim")
    if bool(student.q_lora) != bool(teacher.q_lora):
        raise SlicerError(f"{where}: q_lora_rank {teacher.q_lora or None} -> {student.q_lora or None}: a query latent "
                          "cannot be added or removed; keep q_lora_rank set (or unset) as the teacher has it")
    if teacher.heads // teacher.kv_heads != student.heads // student.kv_heads or student.heads % student.kv_heads:
        raise SlicerError(f"{where}: num_attention_heads / num_key_value_heads is {student.heads} / {student.kv_heads}, "
                          f"the teacher's {teacher.heads} / {teacher.kv_heads}; latent attention expands k and v per "
                          f"head, so set num_key_value_heads={student.heads * teacher.kv_heads // teacher.heads or 1}")
    for key, t, s in (("num_attention_heads", teacher.heads, student.heads), ("q_lora_rank", teacher.q_lora, student.q_lora),
                      ("kv_lora_rank", teacher.kv_lora, student.kv_lora), ("qk_nope_head_dim", teacher.nope, student.nope),
                      ("v_head_dim", teacher.v, student.v)):
        if s > t:
            raise SlicerError(f"{where}: student {key}={s} exceeds the teacher's {t}")
        if t and not s:
            raise SlicerError(f"{where}: student {key}=0 keeps none of the teacher's {t}")


def bind(ref: TensorRef, b: ModelBinder) -> tuple[Layout | None, ...] | None:
    t_path = _mla_path(b.teacher.modules, ref.owner.module_path)
    if t_path is None:
        return None
    s_path = _mla_path(b.student.modules, ref.student_owner.module_path)
    if s_path is None:
        raise SlicerError(f"tensor {ref.student_name!r}: the teacher's attention is latent (MLA), the student's is not")
    t_mod, s_mod = b.teacher.modules[t_path], b.student.modules[s_path]
    T, S = MlaGeometry.of(t_mod, ref.owner.config), MlaGeometry.of(s_mod, ref.student_owner.config)
    where = f"tensor {ref.student_name!r}"
    check(T, S, where)
    child = ref.owner.module_path[len(t_path) + 1:] if ref.owner.module_path != t_path else ""
    rank = len(ref.tshape)
    A = _Axes(b, ref.block("attn", "attention") or ref.teacher_name.rsplit(".", 2)[0], T, S)
    if b.attention != "heads" and (T.heads, T.nope, T.v) != (S.heads, S.nope, S.v):
        raise SlicerError(f"{where}: latent attention cannot be selected flat (its rows mix latent, rotary and "
                          "per-head parts); use --attention heads to keep whole heads")
    rows = {
        "q_proj": lambda: product(A.heads, A.qk),
        "q_a_proj": lambda: axis(A.q_lora),
        "q_a_layernorm": lambda: axis(A.q_lora),
        "q_b_proj": lambda: product(A.heads, A.qk),
        "kv_a_proj_with_mqa": lambda: concat(axis(A.kv_lora), axis(A.rope)),
        "kv_a_layernorm": lambda: axis(A.kv_lora),
        "kv_b_proj": lambda: product(A.heads, A.kv),
        "o_proj": lambda: b.hidden(ref, 0),
    }
    inputs = {"q_b_proj": lambda: axis(A.q_lora), "kv_b_proj": lambda: axis(A.kv_lora),
              "o_proj": lambda: product(A.heads, A.v)}
    if child not in rows or rank not in (1, 2) or ref.param not in ("weight", "bias"):
        if ref.tshape != ref.sshape:
            raise SlicerError(f"{where}: {type(t_mod).__name__}.{child or ref.param} is a part of latent attention "
                              "slicer does not know; it cannot be shrunk consistently")
        return None
    first = rows[child]()
    if rank == 1:
        return (first,)
    return first, (inputs[child]() if child in inputs else b.hidden(ref, 1))


class _Axes:
    def __init__(self, b: ModelBinder, block: str, T: MlaGeometry, S: MlaGeometry):
        self.b, self.block, self.T, self.S = b, block, T, S

    def _add(self, kind: str, t: int, s: int, parts: Layout | None = None) -> str:
        return self.b.add(f"{self.block}:{kind}", kind, t, s, parts)

    @property
    def heads(self) -> str:
        return self._add("heads", self.T.heads, self.S.heads)

    @property
    def q_lora(self) -> str:
        return self._add("q-lora", self.T.q_lora, self.S.q_lora)

    @property
    def kv_lora(self) -> str:
        return self._add("kv-lora", self.T.kv_lora, self.S.kv_lora)

    @property
    def rope(self) -> str:
        return self._add("rope-dims", self.T.rope, self.S.rope)

    @property
    def v(self) -> str:
        return self._add("v-dims", self.T.v, self.S.v)

    @property
    def qk(self) -> str:
        nope = self._add("nope-dims", self.T.nope, self.S.nope)
        return self._add("qk-head-dim", self.T.nope + self.T.rope, self.S.nope + self.S.rope,
                         concat(axis(nope), axis(self.rope)))

    @property
    def kv(self) -> str:
        nope = self._add("nope-dims", self.T.nope, self.S.nope)
        return self._add("kv-head-dim", self.T.nope + self.T.v, self.S.nope + self.S.v, concat(axis(nope), axis(self.v)))


def _mla_path(modules: dict, module_path: str) -> str | None:
    path = module_path
    while True:
        m = modules.get(path)
        if m is not None and is_mla(m):
            return path
        if not path:
            return None
        path = path.rsplit(".", 1)[0] if "." in path else ""
