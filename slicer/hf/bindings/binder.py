"""The binder of a transformers model: every tensor dimension bound to the model's own axes.

Rules (``attention``, ``mlp``, ``embeddings``, ...) each recognise the tensors of one kind
of module and return their layouts; the binder gives them the teacher's and the student's
view of the tensor (module, config, heads) and names the axes. A dimension no rule binds is
matched by size against the axes its layer and its (sub-)model already have; a changing
dimension that matches none, or several that disagree, is refused with one line: a silently
inconsistent student is the one outcome that must never happen.

Axis names are teacher paths: ``hidden`` (``text_config.hidden`` in a sub-model),
``model.layers.3:ffn``, ``model.layers.3.self_attn:kv-heads``, ``model.layers.3.mlp:experts``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ...axes import Axis, AxisTable, Binder, Layout, axis, flat_axis
from ...errors import SlicerError
from .geometry import HeadGeometry, check_geometry, geometry, rotary_convention
from .qkv_layout import per_head_kv
from .view import ModelView, Owner, layer_kinds

log = logging.getLogger("slicer")


class StudentMismatch(SlicerError):
    """The student's config does not fit together (a projector writing another width than its language
    model reads): refused even for a tensor that keeps its shape, which is otherwise copied."""


@dataclass
class TensorRef:
    """One student tensor as the rules see it."""

    student_name: str
    teacher_name: str
    tshape: tuple[int, ...]
    sshape: tuple[int, ...]
    owner: Owner  # in the teacher's model
    student_owner: Owner  # in the student's model
    layer: str  # the teacher layer the tensor belongs to ("model.layers.3"), "" outside layers

    @property
    def param(self) -> str:
        """The parameter's own name: "weight", "bias", "gate_up_proj", "sinks"..."""
        return self.owner.key.rsplit(".", 1)[-1]

    @property
    def module_name(self) -> str:
        """The leaf module's name in the model: "q_proj", "dense", "experts"..."""
        return self.owner.module_path.rsplit(".", 1)[-1]

    @property
    def module_class(self) -> str:
        return type(self.owner.module).__name__ if self.owner.module is not None else ""

    def ancestors(self) -> list[str]:
        """Module names between the layer and the leaf module, in the model's naming."""
        path = self.owner.module_path.split(".")
        return path[:-1]

    def block(self, *markers: str) -> str | None:
        """The teacher path of the first enclosing module whose name contains a marker.

        Teacher naming (checkpoint), so axis names say which teacher block they belong to."""
        parts = self.teacher_name.split(".")[:-1]
        start = len(self.layer.split(".")) if self.layer else 0
        for k in range(start, len(parts)):
            if any(m in parts[k].lower() for m in markers):
                return ".".join(parts[:k + 1])
        return None


Rule = Callable[[TensorRef, "ModelBinder"], "tuple[Layout | None, ...] | None"]


@dataclass
class ModelBinder(Binder):
    teacher: ModelView
    student: ModelView
    teacher_names: Sequence[str]
    student_names: Sequence[str]
    attention: str  # "heads" or "flat"
    method: str
    rules: list[Rule] = field(default_factory=list)
    component_rules: list[Callable] = field(default_factory=list)
    # ref -> the residual axis where it is not its (sub-)model's one hidden axis (a stage's channels)
    residual_rules: list[Callable] = field(default_factory=list)
    name: str = "transformers"

    def __post_init__(self) -> None:
        self._teacher_depths = _depth_prefixes(self.teacher_names)
        self._components: set[str] = set()  # teacher prefixes whose integer component indexes an axis
        self._heads: dict[str, tuple[HeadGeometry, HeadGeometry] | None] = {}
        self._rotary: dict[tuple[int, int], bool] = {}
        self._refs: dict[str, TensorRef] = {}
        self._listed: dict[str, dict[str, dict[int, str]]] = {}

    # ------------------------------------------------------------------ Binder

    def layer_kinds(self):
        t, s = layer_kinds(list(self.teacher_names)), layer_kinds(list(self.student_names))
        return {p: (t[p], s[p]) for p in s if p in t}

    def component(self, student_prefix, teacher_prefix, t, s, table):
        self._table = table
        self._components.add(teacher_prefix)  # while the rules look: names below it are not in a layer of it
        for rule in self.component_rules:
            name = rule(student_prefix, teacher_prefix, t, s, table, self)
            if name is not None:
                return name
        self._components.discard(teacher_prefix)
        return None

    def bind(self, student_name, teacher_name, tshape, sshape, table):
        ref = self.ref(student_name, teacher_name, tshape, sshape)
        self._table = table
        try:
            for rule in self.rules:
                layouts = rule(ref, self)
                if layouts is not None:
                    break
            else:
                layouts = (None,) * len(tshape)
        except SlicerError as e:
            if tuple(tshape) != tuple(sshape) or isinstance(e, StudentMismatch):
                raise
            # every dimension keeps its size: the tensor is copied whole, whatever a rule could not tell
            log.debug("%s copied whole: %s", student_name, e)
            layouts = (None,) * len(tshape)
        self._refs[student_name] = ref
        return tuple(layouts)

    def unbound(self, student_name, d, t, s, table):
        return self._by_size(self._refs[student_name], d, table)

    # ------------------------------------------------------------------ for the rules

    def ref(self, student_name: str, teacher_name: str, tshape: tuple[int, ...] = (),
            sshape: tuple[int, ...] = ()) -> TensorRef:
        """One tensor as the rules see it (component rules ask for a tensor below their prefix)."""
        return TensorRef(student_name, teacher_name, tshape, sshape, self.teacher.owner(teacher_name),
                         self.student.owner(student_name), self._layer_of(teacher_name))

    @property
    def table(self) -> AxisTable:
        return self._table

    def add(self, name: str, kind: str, t: int, s: int, parts: Layout | None = None, nested: bool = False) -> str:
        return self.table.add(Axis(name, kind, t, s, parts, nested))

    def hidden(self, ref: TensorRef, d: int) -> Layout:
        """Dimension ``d`` of ``ref`` is its (sub-)model's hidden axis (its stage's channels in a hierarchical model)."""
        for rule in self.residual_rules:
            name = rule(ref, self)
            if name is not None:
                if (self.table[name].t, self.table[name].s) != (ref.tshape[d], ref.sshape[d]):
                    raise SlicerError(f"tensor {ref.student_name!r} dimension {d} [{ref.tshape[d]} -> {ref.sshape[d]}] "
                                      f"should hold {name} ({self.table[name].t} -> {self.table[name].s})")
                return axis(name)
        return axis(self.add(f"{ref.owner.config_path}hidden", "hidden", ref.tshape[d], ref.sshape[d]))

    def flat(self, ref: TensorRef, d: int) -> Layout:
        """Dimension ``d`` is selected flat on purpose (e.g. --attention flat)."""
        return axis(self.table.add(flat_axis(ref.tshape[d], ref.sshape[d])))

    def heads(self, ref: TensorRef) -> tuple[HeadGeometry, HeadGeometry] | None:
        """Teacher and student geometry of the attention module holding ``ref`` (checked), or
        None with --attention flat or where the module names no heads."""
        if self.attention != "heads":
            return None
        t_path = attention_path(self.teacher, ref.owner.module_path)
        if t_path is None:
            return None
        if t_path not in self._heads:
            self._heads[t_path] = self._geometry_pair(ref, t_path)
        return self._heads[t_path]

    def _geometry_pair(self, ref: TensorRef, t_path: str):
        s_path = attention_path(self.student, ref.student_owner.module_path)
        if s_path is None:
            return None
        t_attn, s_attn = self.teacher.modules[t_path], self.student.modules[s_path]
        # a rotary embedding whose rotation slicer cannot find (gpt-oss, Llama 4 rotate by other
        # functions) pairs its dims in a way slicer cannot tell: "unknown" keeps the head size
        rotary = (rotary_convention(t_attn) or "unknown") if self._has_rotary(self.teacher, ref.owner) else None
        gt = geometry(t_attn, ref.owner.config, rotary)
        gs = geometry(s_attn, ref.student_owner.config, (rotary_convention(s_attn) or "unknown") if rotary else None)
        if gt is None or gs is None:
            return None
        gt, gs = per_head_kv(t_attn, gt), per_head_kv(s_attn, gs)
        check_geometry(gt, gs, f"{ref.teacher_name}: attention heads ({gt.describe()} -> {gs.describe()})")
        return gt, gs

    def _has_rotary(self, view: ModelView, owner: Owner) -> bool:
        """A rotary embedding (an ``inv_freq`` buffer, or a module transformers calls ``*Rotary*``:
        GPT-J keeps sin/cos tables instead) in the (sub-)model that owns the tensor."""
        key = (id(view), id(owner.config))
        if key not in self._rotary:
            roots = [p for p, m in view.modules.items() if getattr(m, "config", None) is owner.config]
            prefix = min(roots, key=len) if roots else ""
            self._rotary[key] = any(n.endswith("inv_freq") and n.startswith(prefix)
                                    for n, _ in view.model.named_buffers()) or \
                any("Rotary" in type(m).__name__ and p.startswith(prefix) for p, m in view.modules.items())
        return self._rotary[key]

    def listed(self, prefix: str, student: bool = False) -> dict[int, str]:
        """Member index -> one checkpoint name under ``prefix.N.`` (teacher names, or the student's)."""
        side = "student" if student else "teacher"
        if side not in self._listed:
            found: dict[str, dict[int, str]] = {}
            for name in (self.student_names if student else self.teacher_names):
                parts = name.split(".")
                for k, part in enumerate(parts):
                    if part.isascii() and part.isdigit():
                        found.setdefault(".".join(parts[:k]), {}).setdefault(int(part), name)
            self._listed[side] = found
        return self._listed[side].get(prefix, {})

    def is_component(self, teacher_name: str) -> str | None:
        """The teacher prefix of the component (``...experts``) ``teacher_name`` sits under, if any."""
        parts = teacher_name.split(".")
        for k, part in enumerate(parts):
            if part.isascii() and part.isdigit() and ".".join(parts[:k]) in self._components:
                return ".".join(parts[:k])
        return None

    # ------------------------------------------------------------------ leftovers

    def _by_size(self, ref: TensorRef, d: int, table: AxisTable) -> Layout:
        """A changing dimension no rule bound: the one axis of its layer or model of this size."""
        t, s = ref.tshape[d], ref.sshape[d]
        structured = _structured_block(self.teacher, ref.owner.module_path)
        if structured is not None:  # inside attention, experts or a mixer, equal sizes prove nothing
            raise SlicerError(f"tensor {ref.student_name!r} dimension {d} [{t} -> {s}] belongs to "
                              f"{structured}, whose layout slicer does not know for {ref.owner.key!r}; it will not "
                              "match it to an axis by size (keep its size, or use --template for flat selection)")
        layer = [a for a in table.axes.values() if ref.layer and a.name.startswith((ref.layer + ".", ref.layer + ":"))
                 and (a.t, a.s) == (t, s) and a.kind != "flat"]
        scope = [a for a in table.axes.values() if a.name == f"{ref.owner.config_path}{a.kind}" and (a.t, a.s) == (t, s)]
        for candidates in (layer, scope):
            kinds = {a.kind for a in candidates}
            if len(kinds) == 1:
                return axis(candidates[0].name)
            if len(kinds) > 1:
                raise SlicerError(f"tensor {ref.student_name!r} dimension {d} [{t} -> {s}] could be any of "
                                  f"{', '.join(sorted(a.name for a in candidates))}; slicer cannot tell which axis it "
                                  "belongs to, so it will not guess (keep its size, or use --template for flat "
                                  "selection)")
        raise SlicerError(f"tensor {ref.student_name!r} dimension {d} [{t} -> {s}] ({ref.module_class or 'no module'} "
                          f"{ref.owner.key!r}) is bound to no axis slicer knows in this model; it cannot be shrunk "
                          "consistently (keep its size, or use --template for flat selection)")

    def _layer_of(self, teacher_name: str) -> str:
        parts = teacher_name.split(".")
        layer = ""
        for k, part in enumerate(parts):
            prefix = ".".join(parts[:k])
            if part.isascii() and part.isdigit() and prefix in self._teacher_depths and prefix not in self._components:
                layer = ".".join(parts[:k + 1])
        return layer


# class names end so for attention blocks, experts, MoE blocks and SSM mixers (not for an attention
# pooling head, whose probe is just a hidden vector)
_STRUCTURED = ("Attention", "Experts", "MoE", "MoeBlock", "Mixer", "DeltaNet")


def _structured_block(view: ModelView, module_path: str) -> str | None:
    """'<class> <path>' of the nearest enclosing module whose rows have a structure (heads, experts,
    SSM sections), None outside them: there a match by size could pair unrelated members."""
    path = module_path
    while path:
        m = view.modules.get(path)
        name = type(m).__name__ if m is not None else ""
        if name.endswith(_STRUCTURED):
            return f"{name} {path!r}"
        path = path.rsplit(".", 1)[0] if "." in path else ""
    return None


def attention_path(view: ModelView, module_path: str) -> str | None:
    """The nearest enclosing module (the module itself included) that is an attention module."""
    path = module_path
    while True:
        m = view.modules.get(path)
        if m is not None and "Attention" in type(m).__name__:
            return path
        if not path:
            return None
        path = path.rsplit(".", 1)[0] if "." in path else ""


def _depth_prefixes(names: Sequence[str]) -> set[str]:
    out = set()
    for name in names:
        parts = name.split(".")
        for k, part in enumerate(parts):
            if part.isascii() and part.isdigit():
                out.add(".".join(parts[:k]))
    return out

