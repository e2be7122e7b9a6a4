"""Feed-forward blocks: the neurons of one FFN are one axis, in its up, gate and down projections.

``P:ffn`` (P the teacher path of the module holding the projections; the layer for BERT's
``intermediate`` / ``output`` pair) binds the rows of the up and gate projections, the
columns of the down projection and their biases. A fused ``gate_up_proj`` holds the axis
twice: ``ffn | ffn`` where the model splits it in halves (Phi-3's ``chunk(2)``), ``ffn * 2``
where it takes even and odd rows (``[..., ::2]``); which one is read from the module's own
forward code, never assumed.
"""
from __future__ import annotations

import inspect
import re

from ...axes import Layout, axis, concat, product
from ...errors import SlicerError
from .binder import ModelBinder, TensorRef

_UP = {"gate_proj", "up_proj", "w1", "w3", "fc1", "c_fc", "dense_h_to_4h", "fc_in", "wi", "wi_0", "wi_1", "lin1", "pwconv1",
       "linear_fc1", "input_linear"}
_DOWN = {"down_proj", "w2", "fc2", "c_proj", "dense_4h_to_h", "fc_out", "wo", "lin2", "pwconv2", "linear_fc2",
         "output_linear"}
_FUSED = {"gate_up_proj"}
_IN_MAJOR = {"Conv1D"}


def role(ref: TensorRef) -> str | None:
    """'up' (rows are neurons), 'down' (columns are neurons) or 'fused' for an FFN projection."""
    if ref.param not in ("weight", "bias"):
        return None
    names = [p.lower() for p in ref.owner.module_path.split(".")]
    if any("attn" in p or "attention" in p for p in names[:-1]):
        return None  # attention.output.dense and friends are the attention rule's
    leaf = ref.module_name.lower()
    parent = names[-2] if len(names) > 1 else ""
    if leaf == "dense" and parent in ("intermediate", "output"):  # BERT, ViT
        return "up" if parent == "intermediate" else "down"
    if leaf in _FUSED:
        return "fused"
    if leaf in _UP:
        return "up"
    if leaf in _DOWN:
        return "down"
    return None


def _twice_the_neurons(ref: TensorRef, b: ModelBinder) -> bool:
    """An up projection with twice the rows its block's down projection reads: a fused [gate | up]
    under an up's name (ModernBERT's ``Wi``, Granite's shared ``input_linear``)."""
    out = getattr(ref.owner.module, "out_features", None)
    parent = b.teacher.modules.get(ref.owner.module_path.rsplit(".", 1)[0]) if "." in ref.owner.module_path else None
    if not isinstance(out, int) or parent is None:
        return False
    downs = [m.in_features for n, m in parent.named_children()
             if n.lower() in _DOWN and isinstance(getattr(m, "in_features", None), int)]
    return len(downs) == 1 and out == 2 * downs[0]


def ffn_block(ref: TensorRef) -> str:
    """The teacher path the FFN axis is named after."""
    parts = ref.teacher_name.split(".")[:-2]  # drop module and parameter
    while parts and parts[-1].isascii() and parts[-1].isdigit():
        if ".".join(parts) == ref.layer and len(parts) > 1 and "expert" not in parts[-2]:
            break  # ConvNeXt's layers.0.pwconv1: the FFN of layer 0, not of every layer of the stage
        parts.pop()  # experts.5.w1: the experts of a layer share one FFN axis
    if parts and parts[-1] in ("intermediate", "output"):
        return ref.layer or ".".join(parts[:-1])
    return ".".join(parts)


def bind(ref: TensorRef, b: ModelBinder) -> tuple[Layout | None, ...] | None:
    which = role(ref)
    if which is None or len(ref.tshape) not in (1, 2):
        return None
    if which == "up" and _twice_the_neurons(ref, b):
        which = "fused"
    in_major = ref.module_class in _IN_MAJOR
    rank = len(ref.tshape)
    neuron_dim = {("up", 2): 1 if in_major else 0, ("fused", 2): 1 if in_major else 0, ("down", 2): 0 if in_major else 1,
                  ("up", 1): 0, ("fused", 1): 0, ("down", 1): None}[(which, rank)]
    out: list[Layout | None] = [None] * rank
    for d in range(rank):
        if d != neuron_dim:
            out[d] = b.hidden(ref, d)
    if neuron_dim is None:
        return tuple(out)
    t, s = ref.tshape[neuron_dim], ref.sshape[neuron_dim]
    name = f"{ffn_block(ref)}:ffn"
    if which != "fused":
        out[neuron_dim] = axis(b.add(name, "ffn", t, s))
        return tuple(out)
    if t % 2 or s % 2:
        raise SlicerError(f"tensor {ref.student_name!r}: a fused gate/up projection of {t} -> {s} rows cannot hold two "
                          "halves")
    ffn = b.add(name, "ffn", t // 2, s // 2)
    out[neuron_dim] = concat(axis(ffn), axis(ffn)) if _split(ref, b) == "halves" else product(ffn, 2)
    return tuple(out)


def gated_split(module) -> str | None:
    """How ``module``'s forward splits a fused gated pair: "halves" (``.chunk(2)``),
    "interleaved" (``[..., ::2]``), or None where its source does not say."""
    try:
        source = inspect.getsource(type(module).forward) if module is not None else ""
    except (OSError, TypeError):
        source = ""
    if re.search(r"\.chunk\(\s*2", source):
        return "halves"
    if re.search(r"\[\s*\.\.\.\s*,\s*::2\s*\]", source):
        return "interleaved"
    return None


def _split(ref: TensorRef, b: ModelBinder) -> str:
    """How the model splits its fused gate/up output, read from the module's forward."""
    module = b.teacher.modules.get(ref.owner.module_path.rsplit(".", 1)[0])
    split = gated_split(module)
    if split is None:
        raise SlicerError(f"tensor {ref.student_name!r}: cannot tell from {type(module).__name__}.forward how it "
                          "splits its fused gate/up projection, so its neurons cannot be kept consistently")
    return split
