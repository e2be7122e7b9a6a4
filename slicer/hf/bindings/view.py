"""A transformers model seen from its checkpoint: which module and config own each tensor.

Checkpoint names are not always the model's own (transformers renames legacy layouts on
load and packs per-expert weights into one tensor); transformers' own conversion mapping
turns a checkpoint name into the model's parameter name, so everything below is read off
the model transformers builds, on the meta device.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

LAYER_INDEX = re.compile(r"^\d+$")


@dataclass(frozen=True)
class Owner:
    """What the model says about one checkpoint tensor."""

    key: str  # the model's parameter name (after transformers' renaming)
    part: int  # which of a converter's sources it is (0: gate, 1: up of a packed gate_up), else 0
    module: object | None  # the module holding the parameter
    module_path: str
    config: object  # the (sub-)config of the nearest enclosing module that has one
    config_path: str  # "" for the top config, "text_config." for a sub-config


class ModelView:
    def __init__(self, model) -> None:
        self.model = model
        self.top = model.config
        self.modules = dict(model.named_modules())
        self._renamings, self._converters = _conversions(model)

    @cached_property
    def param_names(self) -> set[str]:
        return {n for n, _ in self.model.named_parameters(remove_duplicate=False)} | \
            {n for n, _ in self.model.named_buffers(remove_duplicate=False)}

    def owner(self, checkpoint_name: str) -> Owner:
        key, part = self.model_key(checkpoint_name)
        module_path = key.rsplit(".", 1)[0] if "." in key else ""
        module = self.modules.get(module_path)
        config = self.top
        path = module_path
        while True:  # the nearest module with its own config (a vision tower's layers: its vision config)
            m = self.modules.get(path)
            cfg = getattr(m, "config", None) if m is not None else None
            if cfg is not None and hasattr(cfg, "to_dict"):
                config = cfg
                break
            if not path:
                break
            path = path.rsplit(".", 1)[0] if "." in path else ""
        return Owner(key, part, module, module_path, config, self.config_path(config))

    def model_key(self, checkpoint_name: str) -> tuple[str, int]:
        """The model's parameter name for a checkpoint name, and the converter part it is."""
        key, part, _ = self.conversion(checkpoint_name)
        return key, part

    def conversion(self, checkpoint_name: str) -> tuple[str, int, object | None]:
        """(model key, converter part, transformers' WeightConverter or None) for a checkpoint name.

        The converter says how checkpoint tensors become one model parameter: e.g. Mixtral's
        ``experts.*.w1.weight`` / ``experts.*.w3.weight`` are stacked (``MergeModulelist``) and
        concatenated (``Concatenate``) into the packed ``experts.gate_up_proj``."""
        if checkpoint_name in self.param_names or not (self._renamings or self._converters):
            return checkpoint_name, 0, None
        from transformers.core_model_loading import rename_source_key

        key, pattern = rename_source_key(checkpoint_name, self._renamings, self._converters)
        if pattern is not None:
            for conv in self._converters:
                if pattern in conv.source_patterns:
                    return key, conv.source_patterns.index(pattern), conv
        return key, 0, None

    def config_path(self, config) -> str:
        """Where a sub-config sits in the top config: "" or "text_config." (nested: "a.b.")."""
        def find(cfg, prefix: str) -> str | None:
            if cfg is config:
                return prefix
            for name in getattr(type(cfg), "sub_configs", {}) or {}:
                sub = getattr(cfg, name, None)
                if sub is not None:
                    found = find(sub, f"{prefix}{name}.")
                    if found is not None:
                        return found
            return None

        return find(self.top, "") or ""


def _conversions(model) -> tuple[list, list]:
    """transformers' renamings and converters for loading this model (empty on 4.x)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming
    except ImportError:
        return [], []
    try:
        transforms = get_model_conversion_mapping(model, add_legacy=True)
    except Exception:  # noqa: BLE001 - a model transformers cannot map: names are the model's own
        return [], []
    return ([t for t in transforms if isinstance(t, WeightRenaming)],
            [t for t in transforms if isinstance(t, WeightConverter)])


def layer_kinds(names: list[str]) -> dict[str, list[str]]:
    """Depth prefix -> a kind for each layer: the set of its parameter names, indices blanked.

    Two layers are of one kind when they hold the same parameters (an MoE layer's experts
    and router, a Mamba layer's mixer): read off the model, so layer patterns (layer_types,
    MoE every other layer) need no table."""
    members: dict[str, dict[int, set[str]]] = {}
    for name in names:
        parts = name.split(".")
        for k, part in enumerate(parts):
            if part.isascii() and part.isdigit():
                prefix = ".".join(parts[:k])
                rest = ".".join("#" if (p.isascii() and p.isdigit()) else p for p in parts[k + 1:])
                members.setdefault(prefix, {}).setdefault(int(part), set()).add(rest)
                break  # the outermost list only: inner ones are parts of the kind
    out = {}
    for prefix, layers in members.items():
        if len(layers) < 2:
            continue
        n = max(layers) + 1
        out[prefix] = ["|".join(sorted(layers.get(i, ()))) for i in range(n)]
    return out
