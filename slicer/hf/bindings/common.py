"""Model-level tensors: token embeddings and the output head (vocab x hidden), other embedding
tables (positions, token types), and norms over the hidden axis.

The input and output embeddings are the modules transformers itself returns from
``get_input_embeddings()`` / ``get_output_embeddings()``; an output head bound outside its
language model (a VLM's ``lm_head``) takes the vocab and hidden axes of the input embeddings.

Shrinking the vocabulary is refused: the teacher's tokenizer is copied to the student and
would emit ids the student no longer has. Positions shrink by keeping the first ones (the
``positions`` kind is always consecutive): position 7 of the student is position 7.
"""
from __future__ import annotations

from ...axes import Layout, axis
from ...errors import SlicerError
from .binder import ModelBinder, TensorRef
from .geometry import positive_int


def bind_embeddings(ref: TensorRef, b: ModelBinder) -> tuple[Layout | None, ...] | None:
    rank = len(ref.tshape)
    path = ref.owner.module_path
    inputs, outputs = embedding_paths(b.teacher)
    if path in inputs or path in outputs:
        scope = inputs.get(path) if path in inputs else next(iter(inputs.values()), ref.owner.config_path)
        if rank == 2:
            return _vocab(ref, b, scope, 0), axis(b.add(f"{scope}hidden", "hidden", ref.tshape[1], ref.sshape[1]))
        if rank == 1 and path in outputs:
            return (_vocab(ref, b, scope, 0),)
        return None
    if rank == 2 and ref.module_class.endswith("Embedding") and ref.param == "weight":
        table = ref.teacher_name.rsplit(".", 1)[0]
        positions = axis(b.add(f"{table}:positions", "positions", ref.tshape[0], ref.sshape[0]))
        return positions, b.hidden(ref, 1)
    return None


def bind_norms(ref: TensorRef, b: ModelBinder) -> tuple[Layout | None, ...] | None:
    """1-D parameters of a norm over its model's hidden size (per-head norms are attention's)."""
    if len(ref.tshape) != 1 or "Norm" not in ref.module_class and "norm" not in ref.module_name.lower():
        return None
    hidden_t = positive_int(ref.owner.config, "hidden_size", "n_embd", "d_model", "embed_dim", "dim")
    hidden_s = positive_int(ref.student_owner.config, "hidden_size", "n_embd", "d_model", "embed_dim", "dim")
    if (ref.tshape[0], ref.sshape[0]) == (hidden_t, hidden_s):
        return (b.hidden(ref, 0),)
    return None


def _vocab(ref: TensorRef, b: ModelBinder, scope: str, d: int) -> Layout:
    t, s = ref.tshape[d], ref.sshape[d]
    if s != t:
        raise SlicerError(f"tensor {ref.student_name!r}: the student's vocabulary is {s} tokens, the teacher's {t}; "
                          "the teacher's tokenizer (copied to the student) would emit ids the student does not have, "
                          "so the vocabulary is never shrunk: keep vocab_size")
    return axis(b.add(f"{scope}vocab", "vocab", t, s))


def embedding_paths(view) -> tuple[dict[str, str], set[str]]:
    """Module paths of the input embeddings (-> the config path of their model) and output heads."""
    found = getattr(view, "_embedding_paths", None)  # computed once per model view
    if found is None:
        found = view._embedding_paths = _paths(view)
    return found


def _paths(view) -> tuple[dict[str, str], set[str]]:
    names = {id(m): n for n, m in view.modules.items()}
    inputs: dict[str, str] = {}
    outputs: set[str] = set()
    for path, module in view.modules.items():
        for getter, into in (("get_input_embeddings", inputs), ("get_output_embeddings", outputs)):
            fn = getattr(module, getter, None)
            if not callable(fn) or not hasattr(module, "config"):
                continue
            try:
                found = fn()
            except (AttributeError, NotImplementedError, TypeError):
                continue
            if found is None or id(found) not in names:
                continue
            if into is inputs:
                inputs.setdefault(names[id(found)], view.owner(names[id(found)] + ".weight").config_path)
            else:
                outputs.add(names[id(found)])
    return inputs, outputs
