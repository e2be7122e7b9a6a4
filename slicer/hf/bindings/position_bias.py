"""Relative position biases: a table [buckets, heads] inside an attention block (T5's
``relative_attention_bias``), one bias per query head.

T5 computes the bias in the first layer of a stack and hands it to every later layer, so
the table's heads are the heads of every layer at once. Whole heads kept (identity, depth
only, width with ``num_heads`` kept) bind it to the block's query heads; a student with fewer
heads is refused: each layer would have to keep the very heads the shared table keeps.
"""
from __future__ import annotations

from ...axes import Layout, axis
from ...errors import SlicerError
from .attention import HeadAxes
from .binder import ModelBinder, TensorRef


def bind(ref: TensorRef, b: ModelBinder) -> tuple[Layout | None, ...] | None:
    if len(ref.tshape) != 2 or ref.param != "weight" or not ref.module_class.endswith("Embedding"):
        return None
    if "relative" not in ref.module_name.lower() or "Attention" not in _parent_class(ref, b):
        return None
    pair = b.heads(ref)
    if pair is None:
        return None
    T, S = pair
    if (ref.tshape[1], ref.sshape[1]) != (T.heads, S.heads):
        return None
    if T.heads != S.heads:
        raise SlicerError(f"tensor {ref.student_name!r}: one table of relative position biases per head serves every "
                          f"layer of its stack, so every layer must keep the same heads; keep the number of attention "
                          f"heads ({T.heads})")
    table = ref.teacher_name.rsplit(".", 1)[0]
    buckets = b.add(f"{table}:positions", "positions", ref.tshape[0], ref.sshape[0])
    return axis(buckets), axis(HeadAxes(ref, b, T, S).q)


def _parent_class(ref: TensorRef, b: ModelBinder) -> str:
    path = ref.owner.module_path.rsplit(".", 1)[0] if "." in ref.owner.module_path else ""
    return type(b.teacher.modules.get(path)).__name__
