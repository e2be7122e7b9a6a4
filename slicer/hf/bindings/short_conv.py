"""Gated short convolutions (LFM2's ``conv`` blocks): in_proj -> [B | C | x], a depthwise conv over
the channels of B * x, C * conv(...), out_proj back to the residual.

The channels are one axis ``{block}:channels``: the rows of each third of ``in_proj`` (chunked
in three along the channels, each third channel-aligned), the depthwise conv's channels and the
columns of ``out_proj``; ``in_proj``'s columns and ``out_proj``'s rows are the residual hidden axis.
The block is recognised by its structure (a depthwise Conv1d between an in_proj three times its
channels wide and an out_proj reading them), not by its class name.
"""
from __future__ import annotations

from ...axes import Layout, axis, concat
from .binder import ModelBinder, TensorRef


def _block(b: ModelBinder, path: str):
    """The conv block's (path, in_proj, conv, out_proj) where ``path``'s parent is one, else None."""
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    module = b.teacher.modules.get(parent)
    children = dict(module.named_children()) if module is not None else {}
    inp, conv, out = children.get("in_proj"), children.get("conv"), children.get("out_proj")
    if inp is None or conv is None or out is None or type(conv).__name__ != "Conv1d":
        return None
    ch = getattr(conv, "in_channels", None)
    if not (ch and conv.groups == ch == conv.out_channels and getattr(inp, "out_features", None) == 3 * ch
            and getattr(out, "in_features", None) == ch):
        return None
    return parent, inp, conv, out


def bind(ref: TensorRef, b: ModelBinder) -> tuple[Layout | None, ...] | None:
    found = _block(b, ref.owner.module_path)
    if found is None or ref.param not in ("weight", "bias"):
        return None
    block = ref.teacher_name.rsplit(".", 2)[0]  # model.layers.0.conv (teacher naming)
    leaf = ref.module_name
    if leaf == "in_proj":
        t, s = ref.tshape[0] // 3, ref.sshape[0] // 3
    elif leaf == "conv":
        t, s = ref.tshape[0], ref.sshape[0]
    elif leaf == "out_proj":
        t, s = (ref.tshape[1], ref.sshape[1]) if len(ref.tshape) == 2 else (None, None)
    else:
        return None
    channels = (lambda: axis(b.add(f"{block}:channels", "channels", t, s)))
    if leaf == "in_proj":
        rows = concat(channels(), channels(), channels())
        return (rows, b.hidden(ref, 1)) if len(ref.tshape) == 2 else (rows,)
    if leaf == "conv":
        return (channels(),) + (None,) * (len(ref.tshape) - 1)
    if t is None:
        return (b.hidden(ref, 0),)  # out_proj's bias: the residual
    return b.hidden(ref, 0), channels()
