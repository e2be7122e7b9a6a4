"""Vision backbones: hierarchical stages (Swin, ConvNeXt), relative position bias tables.

A hierarchical model has no single hidden axis: each stage has its own channels, named
``{stage}:channels`` (teacher path of the stage, e.g. ``swin.encoder.layers.1:channels``).
The stages are read off the model and its config: a ModuleList with one element per entry of
the config's ``depths``, each element holding a list of ``depths[i]`` layers of one class.
Everything is placed by where the model registers it (registration order is forward order in
transformers' modeling code):
- inside a stage's layer list: that stage's channels (the attention and FFN rules ask
  ``ModelBinder.hidden``, which asks ``stage_channels`` here);
- inside a stage but registered after its layers (Swin's patch merging ``downsample``): from
  this stage to the next; registered before them (ConvNeXt's ``downsampling_layer``): from the
  previous stage to this one. Such a transition's input is ``k * channels`` of its input stage
  (Swin's patch merging concatenates k = 4 neighbours of C channels, the channel innermost:
  ``torch.cat([x[:, r::2, c::2, :] ...], -1)``), its output (and bias) the other stage's channels;
- before the stage list (the patch embeddings): the first stage's channels; after it (the
  final norm, the classifier's columns): the last stage's.
A stage's width is what the norms of its first layer normalize (Swin's ``layernorm_before``,
ConvNeXt's ``layernorm``), else the input width of its first Linear or Conv.

``relative_position_bias_table`` [relative positions, heads] (Swin, BEiT) belongs to the heads
of its attention block: its columns are the block's query heads, its rows kept whole.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...axes import Layout, axis, product
from ...errors import SlicerError
from . import attention, mlp
from .attention import HeadAxes
from .binder import ModelBinder, TensorRef


@dataclass(frozen=True)
class Stages:
    """The stages of one hierarchical (sub-)model, as one view (teacher or student) sees them."""

    list_path: str  # the ModuleList of stages: "swin.encoder.layers"
    paths: tuple[str, ...]  # one per stage: "swin.encoder.layers.0", ...
    layer_lists: tuple[str, ...]  # the layer list inside each stage: "swin.encoder.layers.0.blocks"
    widths: tuple[int, ...]  # channels of each stage
    config: object

    def where(self, module_path: str, order: dict[str, int]) -> tuple[str, int]:
        """("body" | "entry" | "exit" | "stem" | "head", stage) for a module of this model."""
        for i, (path, layers) in enumerate(zip(self.paths, self.layer_lists)):
            if module_path == path or module_path.startswith(path + "."):
                if module_path == layers or module_path.startswith(layers + "."):
                    return "body", i
                return ("entry" if _index(order, module_path) < _index(order, layers) else "exit"), i
        if _index(order, module_path) < _index(order, self.list_path):
            return "stem", 0
        return "head", len(self.paths) - 1


def _index(order: dict[str, int], path: str) -> int:
    while path not in order and "." in path:
        path = path.rsplit(".", 1)[0]
    return order.get(path, -1)


def stages_of(view, config) -> Stages | None:
    """The stages of the (sub-)model whose config is ``config``, if it is hierarchical."""
    cache = view.__dict__.setdefault("_stages", {})
    if id(config) not in cache:
        cache[id(config)] = _find_stages(view, config)
    return cache[id(config)]


def _find_stages(view, config) -> Stages | None:
    import torch.nn as nn

    depths = getattr(config, "depths", None)
    if not (isinstance(depths, (list, tuple)) and depths and all(isinstance(d, int) for d in depths)):
        return None
    for path, module in view.modules.items():
        if not isinstance(module, nn.ModuleList) or len(module) != len(depths):
            continue
        layer_lists = []
        for i, stage in enumerate(module):
            found = [name for name, child in stage.named_children()
                     if isinstance(child, nn.ModuleList) and len(child) == depths[i] and len(child)
                     and len({type(m) for m in child}) == 1]
            if len(found) != 1:
                break
            layer_lists.append(f"{path}.{i}.{found[0]}")
        else:
            paths = tuple(f"{path}.{i}" for i in range(len(depths)))
            widths = tuple(_width(view.modules[p]) for p in layer_lists)
            if any(w is None for w in widths):
                return None
            return Stages(path, paths, tuple(layer_lists), widths, config)
    return None


def _width(layer_list) -> int | None:
    """The channels of a stage: what the norms of its first layer normalize (Swin's layernorm_before,
    ConvNeXt's layernorm), else the input width of its first Linear or Conv."""
    modules = list(layer_list[0].modules())
    for m in modules:
        shape = getattr(m, "normalized_shape", None)
        if isinstance(shape, (tuple, list)) and len(shape) == 1 and isinstance(shape[0], int):
            return shape[0]
    for m in modules:
        for name in ("in_features", "in_channels"):
            value = getattr(m, name, None)
            if isinstance(value, int):
                return value
    return None


def _order(view) -> dict[str, int]:
    found = view.__dict__.get("_order")
    if found is None:
        found = view.__dict__["_order"] = {p: i for i, p in enumerate(view.modules)}
    return found


def _pair(ref: TensorRef, b: ModelBinder) -> tuple[Stages, Stages] | None:
    st = stages_of(b.teacher, ref.owner.config)
    if st is None:
        return None
    ss = stages_of(b.student, ref.student_owner.config)
    if ss is None or len(ss.paths) != len(st.paths):
        raise SlicerError(f"tensor {ref.student_name!r}: the student has {len(ss.paths) if ss else 'no'} stages, the "
                          f"teacher {len(st.paths)}; stages are kept whole (shrink depths and widths within each)")
    return st, ss


def stage_channels(ref: TensorRef, b: ModelBinder) -> str | None:
    """The residual axis of a tensor of a hierarchical model (ModelBinder.hidden asks): its stage's channels."""
    pair = _pair(ref, b)
    if pair is None:
        return None
    where, i = pair[0].where(ref.owner.module_path, _order(b.teacher))
    if where in ("entry", "exit"):
        raise SlicerError(f"internal error: {ref.teacher_name!r} sits between two stages; its rule must bind it")
    return _channels(ref, b, pair, i)


def _channels(ref: TensorRef, b: ModelBinder, pair: tuple[Stages, Stages], i: int) -> str:
    st, ss = pair
    return b.add(f"{st.paths[i]}:channels", "channels", st.widths[i], ss.widths[i])


def bind(ref: TensorRef, b: ModelBinder) -> tuple[Layout | None, ...] | None:
    if ref.param.endswith("relative_position_bias_table"):
        return _bias_table(ref, b)
    _check_patch_grid(ref)
    pair = _pair(ref, b)
    if pair is None:
        return None
    where, i = pair[0].where(ref.owner.module_path, _order(b.teacher))
    if where in ("entry", "exit"):
        j = i - 1 if where == "entry" else i + 1
        if not 0 <= j < len(pair[0].paths):
            raise SlicerError(f"tensor {ref.student_name!r} leads {'into the first' if j < 0 else 'out of the last'} "
                              "stage; slicer cannot tell which channels it holds")
        source, target = (j, i) if where == "entry" else (i, j)
        return _transition(ref, b, pair, source, target)
    if attention.role(ref) is not None or mlp.role(ref) is not None:
        return None  # their rules bind them, with this stage's channels as the hidden axis
    return _in_stage(ref, b, pair, i, where)


def _in_stage(ref: TensorRef, b: ModelBinder, pair, i: int, where: str) -> tuple[Layout | None, ...] | None:
    """Norms, layer scales, depthwise convs, the stem's patch embedding and the classifier's columns."""
    st, ss = pair
    width = (st.widths[i], ss.widths[i])
    rank = len(ref.tshape)
    module = ref.owner.module
    if rank == 1:
        if (ref.tshape[0], ref.sshape[0]) == width:
            return (axis(_channels(ref, b, pair, i)),)
        return None
    out: list[Layout | None] = [None] * rank
    if where == "head" and rank == 2 and ref.param == "weight" and (ref.tshape[1], ref.sshape[1]) == width:
        out[1] = axis(_channels(ref, b, pair, i))  # the classifier (or pooler) reads the last stage
        return tuple(out)
    if ref.param == "weight" and (ref.tshape[0], ref.sshape[0]) == width:
        groups = getattr(module, "groups", 1)
        depthwise = rank > 2 and groups > 1 and groups == getattr(module, "in_channels", 0) == getattr(module, "out_channels", 0)
        if depthwise or where == "stem":  # depthwise: one input channel per output; the stem reads pixels
            out[0] = axis(_channels(ref, b, pair, i))
            return tuple(out)
    return None


def _transition(ref: TensorRef, b: ModelBinder, pair, source: int, target: int) -> tuple[Layout | None, ...]:
    """A module between two stages: its input is k * channels of ``source``, its output ``target``'s."""
    st, ss = pair
    into = axis(_channels(ref, b, pair, target))
    rank = len(ref.tshape)
    is_norm = "Norm" in ref.module_class or "norm" in ref.module_name.lower()
    if rank == 1 and not is_norm:
        return (into,)  # a bias: the output
    d = 0 if rank == 1 else 1  # a norm over the input; a weight's input columns
    k, rest = divmod(ref.tshape[d], st.widths[source])
    if rest or k * ss.widths[source] != ref.sshape[d]:
        raise SlicerError(f"tensor {ref.student_name!r} dimension {d} [{ref.tshape[d]} -> {ref.sshape[d]}] between stages "
                          f"is no whole multiple of the channels of the stage before ({st.widths[source]} -> "
                          f"{ss.widths[source]}); slicer cannot tell its layout")
    channels = _channels(ref, b, pair, source)
    inner = axis(channels) if k == 1 else product(k, channels)
    if rank == 1:
        return (inner,)
    out: list[Layout | None] = [into, inner] + [None] * (rank - 2)
    return tuple(out)


def _check_patch_grid(ref: TensorRef) -> None:
    """A vision tower's position table is a grid of patches (+ a class token): a smaller grid is not its
    first rows, so it is refused rather than kept as text positions are."""
    cfg = ref.owner.config
    if getattr(cfg, "image_size", None) is None or getattr(cfg, "patch_size", None) is None:
        return
    param = ref.owner.key.rsplit(".", 1)[-1].lower()
    table = ref.module_class.endswith("Embedding") and "pos" in ref.module_name.lower() and param == "weight"
    if not (table or "position_embedding" in param or param == "pos_embed") or len(ref.tshape) not in (2, 3):
        return  # (Swin-v2's continuous position bias MLP is no table of positions)
    d = len(ref.tshape) - 2  # [positions, hidden] (an Embedding) or [1, positions, hidden]
    if ref.tshape[d] != ref.sshape[d]:
        raise SlicerError(f"tensor {ref.student_name!r}: the patch grid changes ({ref.tshape[d]} -> {ref.sshape[d]} "
                          "positions); a smaller grid is not the first rows of the teacher's table: keep image_size "
                          "and patch_size")


def _bias_table(ref: TensorRef, b: ModelBinder) -> tuple[Layout | None, ...] | None:
    """[relative positions, heads]: the heads of the enclosing attention block; positions whole."""
    if len(ref.tshape) != 2:
        return None
    if ref.tshape[0] != ref.sshape[0]:
        raise SlicerError(f"tensor {ref.student_name!r}: its relative positions change ({ref.tshape[0]} -> "
                          f"{ref.sshape[0]}); a smaller window is not a subset of the table's rows: keep window_size")
    pair = b.heads(ref)
    if pair is None:
        return None, b.flat(ref, 1) if ref.tshape[1] != ref.sshape[1] else None
    T, S = pair
    if (ref.tshape[1], ref.sshape[1]) != (T.heads, S.heads):
        return None
    return None, axis(HeadAxes(ref, b, T, S).q)
