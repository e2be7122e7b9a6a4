"""Mixture of experts: the experts of one MoE block are one axis, chosen by --method.

An MoE block is a module with an ``experts`` child (transformers' name for them in every MoE
family it has). Axes of one block ``B`` (its teacher checkpoint path):
- ``B:experts``, the experts: a leaf chosen by the method (uniform, consecutive, random),
  never by --layer-selection. Where the router limits each token to ``topk_group`` of
  ``n_group`` groups of consecutive experts (DeepSeek-V3, GLM-4-MoE), it is derived,
  ``B:expert-groups * B:experts-per-group``: the student keeps whole groups, the same
  positions in every kept group, so each student group is a teacher group (n_group and the
  experts per group may both shrink; the router's own checks are refused early, naming the key).
- ``B.experts:ffn``, the neurons of the experts: one axis shared by every expert of the block.
Tensors bound to them:
- per-expert checkpoint tensors (``experts.N.w1.weight``): N is a member of ``B:experts``
  (``component``); their dimensions are those of the packed parameter transformers merges
  them into (its conversion mapping: ``MergeModulelist`` stacks the experts, ``Concatenate``
  joins gate and up), without the experts dimension, the concatenation's part they are;
- packed parameters of the experts module (``gate_up_proj``, ``up_proj``, ``down_proj`` and
  their ``_bias``): dim 0 the experts, the others as the module says they are laid out
  (``is_transposed`` / ``is_concatenated`` of transformers' experts interface, else read
  off the module's forward code: gpt-oss interleaves gate and up columns, Llama 4 has halves);
- the router and whatever else the block holds besides experts and a shared MLP: dims of E are the experts
  (``gate.weight``, ``router.bias``, ``e_score_correction_bias``), columns the hidden axis;
  ``shared_expert_gate`` [1, H] only has the hidden axis; ERNIE's ``moe_statics`` [1, E] too.
Shared experts are an MLP inside the block: mlp.py binds them to their own FFN axis.
"""
from __future__ import annotations

import inspect
import re
import weakref
import dataclasses
from dataclasses import dataclass

from ...axes import Layout, axis, concat, product
from ...errors import SlicerError
from . import mlp
from .binder import ModelBinder, TensorRef
from .geometry import positive_int
from .view import ModelView

# The config keys transformers' MoE configs count experts with (for messages only).
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_PACKED = ("gate_up_proj", "up_proj", "down_proj")


def _parent(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def moe_block(view: ModelView, module_path: str) -> str | None:
    """Model path of the nearest enclosing module (itself included) that holds experts."""
    import torch

    path = module_path
    while True:
        m = view.modules.get(path)
        if m is not None and isinstance(getattr(m, "experts", None), torch.nn.Module):
            return path
        if not path:
            return None
        path = _parent(path)


def _experts_path(block: str) -> str:
    return f"{block}.experts" if block else "experts"


@dataclass(frozen=True)
class Routing:
    """How one MoE block routes, read off its modules (the router's own attributes)."""

    experts: int
    top_k: int | None
    groups: int = 1  # n_group: experts in groups of experts // groups, consecutive
    topk_group: int | None = None
    count_key: str = "the experts count"  # the config key that holds ``experts``
    top_k_key: str = "num_experts_per_tok"  # the config key that holds ``top_k`` (ERNIE: moe_k)
    group_min: int = 1  # experts a group needs: DeepSeek-V3 scores a group by its top 2

    @classmethod
    def of(cls, block) -> "Routing":
        found = _ROUTING.get(block)
        if found is None:
            found = _ROUTING[block] = cls._read(block)
        return found

    @classmethod
    def _read(cls, block) -> "Routing":
        import torch

        experts_mod = block.experts
        n = positive_int(experts_mod, "num_experts")
        if n is None and isinstance(experts_mod, torch.nn.ModuleList):
            n = len(experts_mod)
        mods = [block, *block.children()]
        config = next((m.config for m in mods if hasattr(getattr(m, "config", None), "to_dict")), None)

        def attr(*names: str) -> int | None:
            found = next((v for v in (positive_int(m, *names) for m in mods) if v is not None), None)
            return found

        n = n or attr("num_experts", "n_routed_experts", "num_local_experts") or positive_int(config, *EXPERT_COUNT_KEYS)
        top_k = attr("top_k", "num_experts_per_tok") or positive_int(config, "num_experts_per_tok")
        key = next((k for k in EXPERT_COUNT_KEYS if config is not None and vars(config).get(k) == n), None)
        top_k_key = (getattr(config, "attribute_map", None) or {}).get("num_experts_per_tok", cls.top_k_key)
        router = next((m for m in mods if positive_int(m, "num_group", "n_group")), None)
        group_min = 1
        if router is not None:
            try:
                found = re.search(r"\.topk\(\s*(\d+)", inspect.getsource(type(router).forward))
            except (OSError, TypeError):
                found = None
            group_min = int(found.group(1)) if found else 1
        return cls(n, top_k, attr("num_group", "n_group") or 1, attr("topk_group"), key or cls.count_key, top_k_key,
                   group_min)


_ROUTING: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # block module -> its Routing


def check_routing(teacher: Routing, student: Routing, where: str) -> None:
    """Refuse, naming the config key, a student whose router cannot route over the experts kept."""
    if student.experts is not None and teacher.experts is not None and student.experts > teacher.experts:
        raise SlicerError(f"{where}: student {student.count_key}={student.experts} exceeds the teacher's "
                          f"{teacher.experts} experts")
    if student.top_k is not None and student.experts is not None and student.top_k > student.experts:
        raise SlicerError(f"{where}: {student.top_k_key}={student.top_k} exceeds the {student.experts} experts the "
                          f"student keeps; lower {student.top_k_key}")
    if teacher.groups == 1 and student.groups == 1:
        return
    if teacher.groups == 1:
        raise SlicerError(f"{where}: the student routes over n_group={student.groups} groups of experts, the teacher "
                          "over none; keep n_group=1")
    g, e = student.groups, student.experts
    if e % g:
        raise SlicerError(f"{where}: the student's {e} experts do not split into n_group={g} equal groups; keep "
                          f"the experts count a multiple of n_group")
    per_t, per_s = teacher.experts // teacher.groups, e // g
    if g > teacher.groups:
        raise SlicerError(f"{where}: student n_group={g} exceeds the teacher's {teacher.groups}")
    if per_s > per_t:
        raise SlicerError(f"{where}: the student puts {per_s} experts in each of its n_group={g} groups, the teacher "
                          f"{per_t}; a student group keeps experts of one teacher group, so keep at most {per_t} per "
                          "group (shrink the experts count with n_group)")
    if per_s < student.group_min <= per_t:
        raise SlicerError(f"{where}: the student keeps {per_s} expert(s) per group; the router scores a group by its "
                          f"top {student.group_min} experts, so keep at least {student.group_min} per group (lower "
                          "n_group)")
    if student.topk_group is not None and student.topk_group > g:
        raise SlicerError(f"{where}: topk_group={student.topk_group} exceeds the student's n_group={g}; lower "
                          "topk_group")
    if student.top_k is not None and student.topk_group is not None and student.top_k > student.topk_group * per_s:
        raise SlicerError(f"{where}: {student.top_k_key}={student.top_k} exceeds the {student.topk_group * per_s} "
                          f"experts of the topk_group={student.topk_group} groups a token may use; lower "
                          f"{student.top_k_key} or raise topk_group")


def check_experts(teacher_model, student_model, where: str) -> None:
    """Every MoE block of the student must route over the experts it keeps (config edits refused early)."""
    teacher = ModelView(teacher_model)
    student = ModelView(student_model)
    seen = set()
    for path, module in student.modules.items():
        if moe_block(student, path) != path or path in seen:
            continue
        seen.add(path)
        t_block = teacher.modules.get(path)
        if t_block is None or not hasattr(t_block, "experts"):
            continue
        check_routing(Routing.of(t_block), Routing.of(module), where)


def experts_axis(b: ModelBinder, block: str, t_block, s_block, t: int, s: int, where: str) -> str:
    """``block:experts`` (``block`` a teacher checkpoint path), grouped where the router groups."""
    T, S = Routing.of(t_block), Routing.of(s_block)
    T, S = dataclasses.replace(T, experts=t), dataclasses.replace(S, experts=s)
    check_routing(T, S, where)
    name = f"{block}:experts"
    if T.groups == 1:
        return b.add(name, "experts", t, s)
    groups = b.add(f"{block}:expert-groups", "expert-groups", T.groups, S.groups)
    per = b.add(f"{block}:experts-per-group", "experts-per-group", t // T.groups, s // S.groups)
    return b.add(name, "experts", t, s, product(groups, per))


# ------------------------------------------------------------------ experts.N: a component

def component(student_prefix: str, teacher_prefix: str, t: int, s: int, table, b: ModelBinder) -> str | None:
    """``...experts`` whose integer component numbers the experts of an MoE block -> its experts axis."""
    t_found = _numbered_experts(b.teacher, teacher_prefix, b.listed(teacher_prefix))
    s_found = _numbered_experts(b.student, student_prefix, b.listed(student_prefix, student=True))
    if t_found is None or s_found is None:
        return None
    block = _parent(teacher_prefix)
    return experts_axis(b, block, t_found, s_found, t, s, f"experts under {teacher_prefix!r}")


def _numbered_experts(view: ModelView, prefix: str, listed: dict[int, str]):
    """The MoE block module when ``prefix.N.`` numbers its experts: changing N keeps the same packed
    parameter (transformers' converter stacks the list) or moves along the experts ModuleList only."""
    if not listed:
        return None
    n, name = next(iter(listed.items()))
    rest = name[len(prefix) + 1:].split(".", 1)
    if len(rest) != 2:
        return None
    other = f"{prefix}.{n + 1}.{rest[1]}"
    key, _, conv = view.conversion(name)
    key_other = view.conversion(other)[0]
    block = moe_block(view, _parent(key))
    if block is None:
        return None
    experts = _experts_path(block)
    if key == key_other and _parent(key) == experts:
        stacks = conv is not None and any(type(op).__name__ == "MergeModulelist" for op in conv.operations)
        return view.modules[block] if stacks else None
    if key.startswith(f"{experts}.{n}.") and key_other == f"{experts}.{n + 1}.{key[len(experts) + len(str(n)) + 2:]}":
        return view.modules[block]  # an nn.ModuleList of experts
    return None


# ------------------------------------------------------------------ tensors

def bind(ref: TensorRef, b: ModelBinder) -> tuple[Layout | None, ...] | None:
    block = moe_block(b.teacher, ref.owner.module_path)
    if block is None:
        return None
    s_block = moe_block(b.student, ref.student_owner.module_path)
    if s_block is None:
        raise SlicerError(f"tensor {ref.student_name!r}: the teacher's {ref.teacher_name!r} is in an MoE block, the "
                          "student's is not")
    t_mod, s_mod = b.teacher.modules[block], b.student.modules[s_block]
    experts = _experts_path(block)
    if ref.owner.module_path == experts:
        return _experts_tensor(ref, b, t_mod, s_mod)
    if ref.owner.module_path.startswith(experts + "."):
        return None  # experts in an nn.ModuleList: mlp.py binds them, to the FFN axis of the list
    if mlp.role(ref) is not None:
        return None  # the shared experts' MLP: mlp.py, with its own FFN axis
    return _router(ref, b, t_mod, s_mod, block)


def _router(ref: TensorRef, b: ModelBinder, t_mod, s_mod, block: str) -> tuple[Layout | None, ...] | None:
    """Any other parameter of the block (the router, its biases, ERNIE's ``gate.moe_statics``
    [1, E], Qwen3-Next's ``shared_expert_gate``): dimensions of E are the experts, the input of a Linear (or the last dimension of a
    matrix) of the hidden size the hidden axis; any other dimension must keep its size."""
    import torch

    rank = len(ref.tshape)
    if rank not in (1, 2):
        return None
    T, S = Routing.of(t_mod), Routing.of(s_mod)
    hidden = (_hidden(ref.owner.config), _hidden(ref.student_owner.config))
    linear = isinstance(ref.owner.module, torch.nn.Linear)
    out: list[Layout | None] = [None] * rank
    for d, pair in enumerate(zip(ref.tshape, ref.sshape)):
        experts = pair == (T.experts, S.experts)
        residual = rank == 2 and d == 1 and pair == hidden
        if experts and residual and not linear:
            raise SlicerError(f"tensor {ref.student_name!r} dimension 1: {pair[0]} -> {pair[1]} is both the experts "
                              "and the hidden size; slicer cannot tell which it is")
        if residual:
            out[d] = b.hidden(ref, d)
        elif experts:
            out[d] = axis(experts_axis(b, _checkpoint_path(ref, block), t_mod, s_mod, T.experts, S.experts, f"tensor {ref.student_name!r}"))
        elif pair[0] != pair[1]:
            return None
    return tuple(out) if any(x is not None for x in out) else None


def _checkpoint_path(ref: TensorRef, block: str) -> str:
    """The teacher checkpoint path of the block (model path ``block``) holding ``ref``: its name, less
    the components the model key has below the block (renamings change prefixes, e.g. Mixtral's
    block_sparse_moe -> mlp; PhiMoE's gate -> router)."""
    below = len(ref.owner.key.split(".")) - (len(block.split(".")) if block else 0)
    parts = ref.teacher_name.split(".")
    return ".".join(parts[:len(parts) - below])


def _hidden(config) -> int | None:
    return positive_int(config, "hidden_size", "n_embd", "d_model", "embed_dim", "dim")


def _experts_tensor(ref: TensorRef, b: ModelBinder, t_mod, s_mod) -> tuple[Layout | None, ...]:
    """A packed parameter of the experts module, or a per-expert checkpoint tensor merged into one."""
    param = ref.param
    t_param, s_param = getattr(t_mod.experts, param, None), getattr(s_mod.experts, param, None)
    if t_param is None or s_param is None:
        raise SlicerError(f"tensor {ref.student_name!r}: {type(t_mod.experts).__name__} has no parameter {param!r}")
    pt, ps = tuple(t_param.shape), tuple(s_param.shape)
    prefix = b.is_component(ref.teacher_name)  # "...experts" when the checkpoint numbers its experts
    experts_ckpt = prefix or _parent(ref.teacher_name)
    where = f"tensor {ref.student_name!r}"
    e = experts_axis(b, _parent(experts_ckpt), t_mod, s_mod, pt[0], ps[0], where)
    layouts = _packed(ref, b, t_mod.experts, param, pt, ps, experts_ckpt, e)
    if prefix is None:
        if (ref.tshape, ref.sshape) != (pt, ps):
            raise SlicerError(f"{where} is {list(ref.tshape)} in the checkpoint but {type(t_mod.experts).__name__}."
                              f"{param} is {list(pt)}; slicer cannot tell how they correspond")
        return layouts
    # One expert's slice: the packed layout without the experts, the part transformers concatenates it as.
    _, part, conv = b.teacher.conversion(ref.teacher_name)
    ops = [(type(op).__name__, getattr(op, "dim", None)) for op in (conv.operations if conv is not None else ())]
    rest = list(layouts[1:])
    if ops == [("MergeModulelist", 0)]:
        return tuple(rest)
    if len(ops) == 2 and ops[0] == ("MergeModulelist", 0) and ops[1][0] == "Concatenate" and 1 <= ops[1][1] <= len(rest):
        fused = rest[ops[1][1] - 1]
        if len(fused) == len(conv.source_patterns):  # [gate | up]: this tensor is one segment
            rest[ops[1][1] - 1] = (fused[part],)
            return tuple(rest)
    raise SlicerError(f"{where}: transformers packs it into {type(t_mod.experts).__name__}.{param} by {ops}; slicer "
                      "cannot tell which part of the packed layout it is")


def _packed(ref: TensorRef, b: ModelBinder, experts, param: str, pt: tuple[int, ...], ps: tuple[int, ...],
            experts_ckpt: str, e: str) -> tuple[Layout | None, ...]:
    """Layouts of a packed expert parameter [E, ...] of shape ``pt`` (teacher) / ``ps`` (student)."""
    where = f"tensor {ref.student_name!r}"
    base, bias = param.removesuffix("_bias"), param.endswith("_bias")
    if base not in _PACKED:
        if pt[1:] != ps[1:]:
            raise SlicerError(f"{where}: {type(experts).__name__}.{param} is a packed expert parameter slicer does not "
                              "know; only its experts can be selected (keep its other sizes)")
        return (axis(e),) + (None,) * (len(pt) - 1)
    out_role = "hidden" if base == "down_proj" else ("fused" if base == "gate_up_proj" else "ffn")
    in_role = "ffn" if base == "down_proj" else "hidden"
    if bias:
        roles = [out_role]
    else:
        roles = [in_role, out_role] if _flag(experts, "is_transposed", where) else [out_role, in_role]
    if len(roles) + 1 != len(pt):
        raise SlicerError(f"{where}: {type(experts).__name__}.{param} has rank {len(pt)}, not {len(roles) + 1}")
    out: list[Layout | None] = [axis(e)]
    for k, role in enumerate(roles, 1):
        t, s = pt[k], ps[k]
        if role == "hidden":
            out.append(axis(b.add(f"{ref.owner.config_path}hidden", "hidden", t, s)))
            continue
        if role == "ffn":
            out.append(axis(b.add(f"{experts_ckpt}:ffn", "ffn", t, s)))
            continue
        if t % 2 or s % 2:
            raise SlicerError(f"{where}: a packed gate/up projection of {t} -> {s} cannot hold two halves")
        ffn = b.add(f"{experts_ckpt}:ffn", "ffn", t // 2, s // 2)
        out.append(concat(axis(ffn), axis(ffn)) if _flag(experts, "is_concatenated", where) else product(ffn, 2))
    return tuple(out)


# What the experts' forward says, where transformers' experts interface does not (Llama 4).
_SOURCE_FLAGS = {
    "is_transposed": ((r"(?:bmm|matmul)\(\s*[\w.\[\]]+\s*,\s*self\.(?:gate_up|up|down)_proj|@\s*self\.(?:gate_up|up|down)_proj", True),
                      (r"linear\(\s*[\w.\[\]]+\s*,\s*self\.(?:gate_up|up|down)_proj", False)),
    "is_concatenated": ((r"\.chunk\(\s*2", True), (r"\[\s*\.\.\.\s*,\s*::2\s*\]", False)),
}


def _flag(experts, name: str, where: str) -> bool:
    value = getattr(experts, name, None)
    if isinstance(value, bool):
        return value
    try:
        source = inspect.getsource(type(experts).forward)
    except (OSError, TypeError):
        source = ""
    found = {result for pattern, result in _SOURCE_FLAGS[name] if re.search(pattern, source)}
    if len(found) == 1:
        return found.pop()
    what = "stores its weights [in, out] or [out, in]" if name == "is_transposed" else "splits gate and up"
    raise SlicerError(f"{where}: cannot tell from {type(experts).__name__} how it {what}, so its experts cannot be "
                      "kept consistently")
