"""State-space mixers: the sections of Mamba's fused projections, each bound to its own axes.

A mixer is the module that holds ``ssm_state_size`` and ``intermediate_size`` (Mamba2Mixer and
its copies in Granite-4, Bamba, FalconH1, Zamba2, NemotronH; MambaMixer in Mamba, Falcon-Mamba,
Jamba). Axes of one mixer ``M`` (teacher path):

Mamba-2 (the mixer also has ``num_heads``, ``head_dim``, ``n_groups``):
- ``M:groups`` and ``M:group-heads`` (heads per group) are leaves; ``M:ssm-heads`` is derived,
  ``groups * group-heads``: the heads of a group share its B and C (``repeat_interleave`` over
  heads), so a kept group keeps its own heads; ``M:ssm-head-dim`` and ``M:state`` are leaves;
  d_inner is ``ssm-heads * ssm-head-dim`` (x and z are viewed [heads, head_dim]);
- ``in_proj`` rows [z | x | B | C | dt] = [d_inner | d_inner | groups * state | groups * state |
  ssm-heads]; ``conv1d`` (depthwise) covers [x | B | C]; ``dt_bias``, ``A_log``, ``D`` are per head;
  the gated ``norm`` is over d_inner (its groups are contiguous slices, group outer, as above);
  ``out_proj``'s columns are d_inner.
Mamba-1: ``M:inner`` (d_inner channels), ``M:state``, ``M:dt-rank``: ``in_proj`` rows [x | z]
(``chunk(2)``), ``x_proj`` rows [dt | B | C] (``split([rank, state, state])``), ``dt_proj``
[inner, rank], ``A_log`` [inner, state], ``D`` and ``conv1d`` over inner; Jamba's
``dt_layernorm`` / ``b_layernorm`` / ``c_layernorm`` over rank, state, state.

Every one of these may shrink: heads (with their slices of x, z, dt, A, D), whole groups (with
their B and C), head dims and state dims are each independent of the others. What cannot is
refused: a student whose d_inner is not ``num_heads * head_dim`` or whose heads are not whole
groups (its forward would fail), a changing convolution kernel, and an ``in_proj`` whose rows
are not the sections above (slicer does not know that layout).
"""
from __future__ import annotations

from dataclasses import dataclass

from ...axes import Layout, axis, concat, product
from ...errors import SlicerError
from .binder import ModelBinder, TensorRef


@dataclass(frozen=True)
class Mixer:
    path: str  # the mixer's module path
    inner: int  # d_inner
    state: int
    heads: int = 0  # Mamba-2 only
    head_dim: int = 0
    groups: int = 0
    rank: int = 0  # Mamba-1: the dt projection's rank

    @property
    def v2(self) -> bool:
        return self.heads > 0


def _mixer(view, module_path: str) -> Mixer | None:
    path = module_path
    while True:
        m = view.modules.get(path)
        if m is not None and isinstance(getattr(m, "ssm_state_size", None), int) and \
                isinstance(getattr(m, "intermediate_size", None), int):
            ints = {k: getattr(m, k, 0) for k in ("num_heads", "head_dim", "n_groups", "time_step_rank")}
            ints = {k: v if isinstance(v, int) and not isinstance(v, bool) else 0 for k, v in ints.items()}
            return Mixer(path, m.intermediate_size, m.ssm_state_size, ints["num_heads"], ints["head_dim"],
                         ints["n_groups"], ints["time_step_rank"])
        if not path:
            return None
        path = path.rsplit(".", 1)[0] if "." in path else ""


def _check(m: Mixer, role: str, where: str) -> None:
    if not m.v2:
        return
    if m.heads * m.head_dim != m.inner:
        raise SlicerError(f"{where}: the {role}'s Mamba-2 mixer has d_inner {m.inner} (expand * hidden_size) but "
                          f"{m.heads} heads of {m.head_dim}; its forward needs num_heads * head_dim == d_inner")
    if not m.groups or m.heads % m.groups:
        raise SlicerError(f"{where}: the {role}'s Mamba-2 mixer has {m.heads} heads in {m.groups} groups; the heads "
                          "must be whole groups (num_heads a multiple of n_groups)")


def bind(ref: TensorRef, b: ModelBinder) -> tuple[Layout | None, ...] | None:
    T = _mixer(b.teacher, ref.owner.module_path)
    if T is None:
        return None
    S = _mixer(b.student, ref.student_owner.module_path)
    if S is None or S.v2 != T.v2:
        return None
    where = f"tensor {ref.student_name!r}"
    _check(T, "teacher", where)
    _check(S, "student", where)
    if T.v2 and S.heads // S.groups > T.heads // T.groups:
        raise SlicerError(f"{where}: the student's Mamba-2 mixer has {S.heads // S.groups} heads per group (num_heads / "
                          f"n_groups), the teacher's {T.heads // T.groups}; a kept group keeps only its own heads: keep "
                          "n_groups, or shrink the heads with it")
    ax = _Axes(ref, b, T, S)
    child = ref.owner.module_path[len(T.path):].lstrip(".")
    layouts = ax.v2(child, ref) if T.v2 else ax.v1(child, ref)
    if layouts is None:
        return None
    if len(layouts) != len(ref.tshape):
        return None
    return layouts


class _Axes:
    def __init__(self, ref: TensorRef, b: ModelBinder, T: Mixer, S: Mixer):
        self.ref, self.b, self.T, self.S = ref, b, T, S
        depth = len(T.path.split(".")) if T.path else 0
        self.block = ".".join(ref.teacher_name.split(".")[:depth])  # the mixer, in the teacher's naming

    def _add(self, kind: str, t: int, s: int, parts: Layout | None = None) -> str:
        return self.b.add(f"{self.block}:{kind}", kind, t, s, parts)

    def _kernel(self, d: int) -> None:
        if self.ref.tshape[d] != self.ref.sshape[d]:
            raise SlicerError(f"tensor {self.ref.student_name!r}: the convolution kernel changes ({self.ref.tshape[d]} -> "
                              f"{self.ref.sshape[d]}); its taps are kept whole: keep the conv kernel size")

    def _rows(self, sections: Layout, what: str) -> None:
        t = self.b.table.size(sections, "t")
        if t != self.ref.tshape[0]:
            raise SlicerError(f"tensor {self.ref.student_name!r} has {self.ref.tshape[0]} rows, not the {t} of its "
                              f"sections {what}; slicer does not know this layout")

    # ------------------------------------------------------------------ Mamba-2

    def v2(self, child: str, ref: TensorRef) -> tuple[Layout | None, ...] | None:
        T, S = self.T, self.S
        groups = self._add("groups", T.groups, S.groups)
        per_group = self._add("group-heads", T.heads // T.groups, S.heads // S.groups)
        heads = self._add("ssm-heads", T.heads, S.heads, product(groups, per_group))
        head_dim = self._add("ssm-head-dim", T.head_dim, S.head_dim)
        state = self._add("state", T.state, S.state)
        inner, bc = product(heads, head_dim), product(groups, state)
        rank, param = len(ref.tshape), ref.param
        if child == "in_proj":
            rows = concat(inner, inner, bc, bc, axis(heads))
            self._rows(rows, "[z | x | B | C | dt]")
            return (rows, self.b.hidden(ref, 1)) if rank == 2 else (rows,)
        if child == "conv1d":
            rows = concat(inner, bc, bc)
            self._rows(rows, "[x | B | C]")
            for d in range(1, rank):
                self._kernel(d)
            return (rows,) + (None,) * (rank - 1)
        if child == "out_proj":
            return (self.b.hidden(ref, 0), inner) if rank == 2 else (self.b.hidden(ref, 0),)
        if child == "norm" and rank == 1:
            return (inner,)
        if child == "" and rank == 1 and param in ("dt_bias", "A_log", "D"):
            if ref.tshape[0] == T.heads:
                return (axis(heads),)
            if ref.tshape[0] == T.inner:  # D per channel
                return (inner,)
        return None

    # ------------------------------------------------------------------ Mamba-1

    def v1(self, child: str, ref: TensorRef) -> tuple[Layout | None, ...] | None:
        T, S = self.T, self.S
        inner = axis(self._add("inner", T.inner, S.inner))
        state = axis(self._add("state", T.state, S.state))
        rank_axis = lambda: axis(self._add("dt-rank", T.rank, S.rank))  # noqa: E731 - only where a tensor has it
        rank, param = len(ref.tshape), ref.param
        if child == "in_proj":
            rows = concat(inner, inner)
            self._rows(rows, "[x | z]")
            return (rows, self.b.hidden(ref, 1)) if rank == 2 else (rows,)
        if child == "conv1d":
            for d in range(1, rank):
                self._kernel(d)
            return (inner,) + (None,) * (rank - 1)
        if child == "x_proj" and rank == 2:
            rows = concat(rank_axis(), state, state)
            self._rows(rows, "[dt | B | C]")
            return rows, inner
        if child == "dt_proj":
            return (inner, rank_axis()) if rank == 2 else (inner,)
        if child == "out_proj":
            return (self.b.hidden(ref, 0), inner) if rank == 2 else (self.b.hidden(ref, 0),)
        if child == "dt_layernorm" and rank == 1:
            return (rank_axis(),)
        if child in ("b_layernorm", "c_layernorm") and rank == 1:
            return (state,)
        if child == "" and param == "A_log" and rank == 2:
            return inner, state
        if child == "" and param == "D" and rank == 1:
            return (inner,)
        return None
