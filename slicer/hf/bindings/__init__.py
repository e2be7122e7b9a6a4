"""Bindings from a model's structure: every tensor dimension of a transformers model bound to
the model's own axes (heads, FFN neurons, experts, hidden, vocab), read off the modules and
configs transformers builds on the meta device.

``model_binder`` makes the binder the plan asks (``slicer.axes.Binder``); each rule module
knows one kind of block and nothing else.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from ...axes import Binder
from ...errors import SlicerError
from . import attention, common, delta_net, linear_attention, mamba, mla, mlp, moe, multimodal, position_bias, short_conv, vision
from .binder import ModelBinder
from .geometry import check_geometry, geometry, rotary_convention
from .qkv_layout import per_head_kv
from .view import ModelView


def _unless_unchanged(rule):
    """A tensor that keeps its shape needs no axis: whatever its block's rule cannot tell about it
    (an unknown projector, an odd mixer) must not stop an identity or depth-only run."""
    def bind(ref, b):
        try:
            return rule(ref, b)
        except SlicerError:
            if ref.tshape == ref.sshape:
                return None
            raise

    bind.__name__ = rule.__module__.rsplit(".", 1)[-1] + ".bind"
    return bind


# multimodal, vision and mamba first: they claim the tensors of their blocks (a projector's Linear,
# a stage transition, a mixer's in_proj) before the generic attention / FFN / norm rules see them.
RULES = [multimodal.bind, _unless_unchanged(vision.bind), _unless_unchanged(mamba.bind),
         mla.bind, moe.bind, delta_net.bind, linear_attention.bind, short_conv.bind, position_bias.bind,
         attention.bind, mlp.bind, common.bind_embeddings, common.bind_norms]
COMPONENT_RULES: list = [moe.component, attention.head_component]
RESIDUAL_RULES = [vision.stage_channels]


def model_binder(teacher_model, student_model, teacher_names: Sequence[str],
                 student_names: Sequence[str]) -> Callable[..., Binder]:
    """options -> the binder of one run (the method and --attention are the run's)."""
    teacher, student = ModelView(teacher_model), ModelView(student_model)

    def make(options) -> Binder:
        return ModelBinder(teacher, student, list(teacher_names), list(student_names), options.attention,
                           options.method, rules=list(RULES), component_rules=list(COMPONENT_RULES),
                           residual_rules=list(RESIDUAL_RULES))

    return make


def check_experts(teacher_model, student_model, where: str) -> None:
    """Refuse, naming the config key, a student whose routers cannot route over the experts kept."""
    moe.check_experts(teacher_model, student_model, where)


def check_heads(teacher_model, student_model, where: str) -> None:
    """Refuse, naming the config, a student whose attention heads cannot be whole teacher heads.

    The binder checks every attention block anyway; this runs once per kind of block before
    anything else, so the message names the config edit rather than a tensor."""
    teacher_modules = dict(teacher_model.named_modules())
    seen = set()
    for path, s_mod in student_model.named_modules():
        t_mod = teacher_modules.get(path)
        if t_mod is None or "Attention" not in type(s_mod).__name__ or type(s_mod) in seen:
            continue
        seen.add(type(s_mod))
        t_cfg, s_cfg = _config_of(teacher_model, path), _config_of(student_model, path)
        if mla.is_mla(s_mod):  # latent attention: its own geometry
            mla.check(mla.MlaGeometry.of(t_mod, t_cfg), mla.MlaGeometry.of(s_mod, s_cfg), where)
            continue
        rotary = rotary_convention(t_mod)
        gt, gs = geometry(t_mod, t_cfg, rotary), geometry(s_mod, s_cfg, rotary_convention(s_mod) if rotary else None)
        if gt is not None and gs is not None:
            check_geometry(per_head_kv(t_mod, gt), per_head_kv(s_mod, gs), where)


def _config_of(model, path: str):
    modules = dict(model.named_modules())
    while True:
        cfg = getattr(modules.get(path), "config", None)
        if cfg is not None and hasattr(cfg, "to_dict"):
            return cfg
        if not path:
            return model.config
        path = path.rsplit(".", 1)[0] if "." in path else ""
