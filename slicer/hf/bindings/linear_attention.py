"""Linear-attention mixers that are not attention modules (Qwen3-Next's Gated DeltaNet: the
mixer of a layer whose ``layer_types`` entry is ``linear_attention``): the residual stream they
read and write is the hidden axis; their own heads and state are not bound, so a student that
changes them is refused, naming what changed (keep ``linear_num_value_heads``,
``linear_num_key_heads``, ``linear_*_head_dim``). An attention module of a linear kind
(MiniMax's lightning attention) is attention.py's: it binds its heads.
"""
from __future__ import annotations

from ...axes import Layout
from ...errors import SlicerError
from .binder import ModelBinder, TensorRef, attention_path
from .geometry import positive_int


_NOT_HEADS = {"hidden_size", "num_hidden_layers", "layer_idx"}  # sizes a mixer keeps that are not its own


def _mixer(view, module_path: str) -> str | None:
    """The enclosing module (the owner included) that is a layer's linear-attention mixer: its
    ``layer_type`` is the config's ``layer_types`` entry, and it sits right inside a layer (the
    layer itself may carry the same entry, and holds norms and MLPs too)."""
    path = module_path
    while path:
        m = view.modules.get(path)
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        in_layer = parent.rsplit(".", 1)[-1].isdigit()
        if m is not None and in_layer and getattr(m, "layer_type", None) == "linear_attention":
            return path
        path = path.rsplit(".", 1)[0] if "." in path else ""
    return None


def bind(ref: TensorRef, b: ModelBinder) -> tuple[Layout | None, ...] | None:
    import torch  # here, not at import: a template's plan loads the bindings without torch

    t_path = _mixer(b.teacher, ref.owner.module_path)
    if t_path is None or attention_path(b.teacher, ref.owner.module_path) is not None:
        return None  # an attention module (MiniMax's lightning attention): attention.py binds its heads
    s_path = _mixer(b.student, ref.student_owner.module_path)
    t_mix, s_mix = b.teacher.modules[t_path], b.student.modules.get(s_path or "")
    hidden = (positive_int(t_mix, "hidden_size") or positive_int(ref.owner.config, "hidden_size"),
              positive_int(s_mix, "hidden_size") or positive_int(ref.student_owner.config, "hidden_size"))
    module = ref.owner.module
    out: list[Layout | None] = [None] * len(ref.tshape)
    for d, (t, s) in enumerate(zip(ref.tshape, ref.sshape)):
        linear_dim = isinstance(module, torch.nn.Linear) and ref.param == "weight" and len(ref.tshape) == 2
        if linear_dim and (t, s) == hidden and (d == 1 and module.in_features == t or d == 0 and module.out_features == t):
            out[d] = b.hidden(ref, d)
        elif t != s:
            changed = [f"{k} {v} -> {getattr(s_mix, k, None)}" for k, v in sorted(vars(t_mix).items())
                       if isinstance(v, int) and not isinstance(v, bool) and getattr(s_mix, k, None) != v
                       and k not in _NOT_HEADS]
            raise SlicerError(f"tensor {ref.student_name!r} dimension {d} [{t} -> {s}]: slicer does not bind the heads "
                              f"of linear attention ({type(t_mix).__name__}: {', '.join(changed) or 'its sizes'}); "
                              "keep their sizes (linear_num_value_heads, linear_num_key_heads, linear_*_head_dim)")
    return tuple(out)
