"""Multimodal models: what a vision tower, a language model and the modules between them share.

Each tower is a (sub-)model with its own config and its own axes (``text_config.hidden``,
``vision_config.hidden``, per-layer heads and FFN neurons under its own paths); the rules for
attention, FFN, embeddings and norms bind them. What connects the towers is bound here, and
only along the axes it really shares:

- a VLM's *projector* (the modules outside both towers: Llava's ``multi_modal_projector``,
  Idefics3's ``connector``; or a ``merger`` inside the vision tower: Qwen2-VL's, Qwen3-VL's
  ``deepstack_merger_list.N`` whose outputs are added to early decoder layers) is a chain
  of projections W_1 .. W_n in registration (= forward) order. W_1 reads the vision tower's
  hidden, ``k * vision hidden`` where k neighbouring patches (or k feature layers) are merged
  side by side with the channel innermost (Qwen's ``ln_q(x).view(-1, 4C)``, InternVL's and
  Idefics3's pixel shuffle, Llava's ``cat`` of feature layers); W_n writes the language
  model's hidden (its output is scattered into the token embeddings); what lies in between
  is the projector's own neurons (``{projector}:ffn``). A norm inside the projector is over the
  one of these it matches by size; a weight that is a bare parameter is read with the
  orientation its module's forward uses it in (Gemma 3: ``matmul(x, W)``, [in, out]).
- a dual encoder's projections (CLIP's ``text_projection`` / ``visual_projection``) map each
  tower into one shared space, compared by a dot product: their rows are one ``projection``
  axis, their columns the hidden axis of the tower they read.
- SigLIP's text ``head`` maps the text tower straight into the vision tower's width (the
  text embedding is dotted with the vision tower's pooled output): rows ``vision_config.hidden``.

The output head of a VLM (``lm_head``) is the language model's (``common.bind_embeddings``).

Long on purpose: the chain between a vision tower and a language model (projectors, merges, norms between towers, adapters) is one structure, bound in one place.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

from ...axes import Layout, axis, product
from ...errors import SlicerError
from .binder import ModelBinder, StudentMismatch, TensorRef
from .common import embedding_paths
from .geometry import positive_int
from .mlp import gated_split
from .observe import merge_order, weights_used_before


def _towers(view) -> tuple[str | None, str | None]:
    """Config paths of the language (text) tower and of the vision tower, if the model has both."""
    found = view.__dict__.get("_towers")
    if found is None:
        inputs, _ = embedding_paths(view)
        text = next(iter(inputs.values()), None)
        names = list(getattr(type(view.top), "sub_configs", {}) or {})
        vision = next((f"{n}." for n in names if "vision" in n and getattr(view.top, n, None) is not None), None)
        if text == vision:  # a vision model alone (SiglipForImageClassification): no language tower
            text = None
        found = view.__dict__["_towers"] = (text or None, vision)
    return found


def _tower_root(view, config_path: str) -> str | None:
    """The outermost module whose config is the tower's."""
    for path, m in view.modules.items():
        cfg = getattr(m, "config", None)
        if cfg is not None and path and view.config_path(cfg) == config_path:
            return path
    return None


def bind(ref: TensorRef, b: ModelBinder) -> tuple[Layout | None, ...] | None:
    text, vision = _towers(b.teacher)
    if text is None or vision is None:
        return None
    path = ref.owner.module_path
    inputs, outputs = embedding_paths(b.teacher)
    if path in inputs or path in outputs:
        return None
    if ref.owner.config_path == "":
        root = _top_child(b.teacher, path)
        if not ref.tshape:
            return ()  # a scalar of the whole model (CLIP's logit_scale)
        if not root:
            return _model_vector(ref, b, text)
        if _holds_a_tower(b.teacher, root):
            return _unknown(ref, f"{root!r} holds a model of its own between the towers")
        leaf = root.rsplit(".", 1)[-1].lower()
        if "proj" in leaf and ("text" in leaf or "vis" in leaf or "image" in leaf):
            return _shared_projection(ref, b, text if "text" in leaf else vision)
        return _projector(ref, b, root, text, vision)
    if ref.owner.config_path == vision:
        parts = path.split(".")
        for k, part in enumerate(parts):  # merger; Qwen3-VL's deepstack_merger_list.N too
            if "adapter" in part and ref.tshape != ref.sshape:
                return _adapter(ref, b, ".".join(parts[:k + 1]), vision)
            if "merger" in part:
                k += 1 if k + 1 < len(parts) and parts[k + 1].isdigit() else 0
                return _projector(ref, b, ".".join(parts[:k + 1]), text, vision)
        return None
    if ref.owner.config_path == text and ref.module_name == "head" and len(ref.tshape) in (1, 2):
        root = _tower_root(b.teacher, text)
        if root is not None and path == f"{root}.head":
            return _head_into_vision(ref, b, vision)
    if ref.owner.config_path not in (text, vision):
        return _unknown(ref, f"its sub-model ({ref.owner.config_path.rstrip('.')}) sits between the towers")
    return None


def _adapter(ref: TensorRef, b: ModelBinder, root: str, vision: str) -> tuple[Layout | None, ...] | None:
    """A vision adapter inside the tower (Llama 4's ``vision_adapter``: a pixel shuffle that merges
    neighbouring patches, then an MLP into the projector): it reads k vision features side by side;
    unless running it shows their order, the vision hidden size must stay."""
    vt, vs = _vision_width(b.teacher, vision), _vision_width(b.student, vision)
    if vt == vs:
        return None  # the tower's width is kept: its FFN-like layers bind as any MLP
    chain = _chain(b, root)
    first = chain[0][0] if chain else ""
    k = b.teacher.model.get_parameter(first).shape[1] // vt if first and vt else 0
    # its output feeds the projector, not the language model: the projector chain does not describe it
    raise SlicerError(f"tensor {ref.student_name!r}: the vision adapter {root!r} ({type(b.teacher.modules.get(root)).__name__}) "
                      f"reads {k or 'several'} vision features merged side by side and feeds the projector; slicer "
                      f"does not shrink it, so keep the vision hidden size ({vt})")


def _unknown(ref: TensorRef, why: str) -> tuple[None, ...]:
    """Unchanged: kept whole (open dimensions, identity). Changed: refused, never guessed."""
    if ref.tshape != ref.sshape:
        raise SlicerError(f"tensor {ref.student_name!r} [{list(ref.tshape)} -> {list(ref.sshape)}]: {why}; slicer cannot "
                          "tell which axes of the towers it shares, so it is not shrunk (keep the sizes that reach it)")
    return (None,) * len(ref.tshape)


def _model_vector(ref: TensorRef, b: ModelBinder, text: str) -> tuple[Layout | None, ...]:
    """A vector held by the VLM itself, as wide as the language model (LlavaNext's image_newline, appended
    to the projected image features): the language model's hidden axis."""
    lm_t = positive_int(_sub_config(b.teacher.top, text), "hidden_size", "d_model", "n_embd")
    lm_s = positive_int(_sub_config(b.student.top, text), "hidden_size", "d_model", "n_embd")
    if len(ref.tshape) == 1 and (ref.tshape[0], ref.sshape[0]) == (lm_t, lm_s):
        return (axis(b.add(f"{text}hidden", "hidden", lm_t, lm_s)),)
    return _unknown(ref, "it belongs to the whole model")


def _holds_a_tower(view, root: str) -> bool:
    return any(getattr(m, "config", None) not in (None, view.top) for p, m in view.modules.items()
               if p == root or p.startswith(root + "."))


def _top_child(view, module_path: str) -> str:
    """The module right below the top-level model(s) that holds ``module_path`` (model.multi_modal_projector);
    "" for a parameter of a top-level model itself. Projector modules may keep the top config too
    (Mistral3's patch merger): only a PreTrainedModel is a model."""
    from transformers import PreTrainedModel

    parts = module_path.split(".") if module_path else []
    root = ""
    for k in range(len(parts)):
        m = view.modules.get(".".join(parts[:k]))
        if isinstance(m, PreTrainedModel) and m.config is view.top:
            root = ".".join(parts[:k + 1])
    if isinstance(view.modules.get(module_path), PreTrainedModel):
        return ""
    return root


# ------------------------------------------------------------------ dual encoders

def _shared_projection(ref: TensorRef, b: ModelBinder, tower: str) -> tuple[Layout | None, ...] | None:
    if len(ref.tshape) != 2 or ref.param != "weight":
        return None
    rows = axis(b.add("projection", "projection", ref.tshape[0], ref.sshape[0]))
    return rows, axis(b.add(f"{tower}hidden", "hidden", ref.tshape[1], ref.sshape[1]))


def _head_into_vision(ref: TensorRef, b: ModelBinder, vision: str) -> tuple[Layout | None, ...] | None:
    t_width, s_width = _vision_width(b.teacher, vision), _vision_width(b.student, vision)
    if ref.tshape[0] != t_width:
        return None
    if ref.sshape[0] != s_width:
        raise StudentMismatch(f"tensor {ref.student_name!r}: the text head's output ({ref.sshape[0]}) is compared with "
                              f"the vision tower's output ({s_width}); set text_config.projection_size to the vision "
                              "hidden size")
    rows = axis(b.add(f"{vision}hidden", "hidden", t_width, s_width))
    return (rows,) if len(ref.tshape) == 1 else (rows, b.hidden(ref, 1))


# ------------------------------------------------------------------ VLM projectors

def _vision_width(view, vision: str) -> int | None:
    cfg = _sub_config(view.top, vision)
    return positive_int(cfg, "embed_dim", "hidden_size") if cfg is not None else None


def _sub_config(config, path: str):
    for part in path.rstrip(".").split("."):
        config = getattr(config, part, None)
    return config


def _projector(ref: TensorRef, b: ModelBinder, root: str, text: str, vision: str) -> tuple[Layout | None, ...] | None:
    chain = _chain(b, root)
    if chain is not None:
        _check_output(b, root, chain, text)  # whatever this tensor does: the student must be usable
    try:
        if chain is None:
            raise SlicerError(f"tensor {ref.student_name!r}: slicer cannot tell how the projector {root!r} "
                              f"({type(b.teacher.modules.get(root)).__name__}) orders its weights; it cannot be shrunk")
        sites = _sites(b, root, _teacher_naming(ref, root), chain, text, vision)
    except SlicerError:
        if ref.tshape == ref.sshape:
            return None  # an unchanged tensor needs no axis (identity, depth-only)
        raise
    key, rank = ref.owner.key, len(ref.tshape)
    weights = [w for w, _ in chain]
    if key in weights:
        if rank != 2:
            return None
        i = weights.index(key)
        inp, out = sites[i].layout(), sites[i + 1].written()
        return (inp, out) if dict(chain)[key] else (out, inp)
    if rank != 1:
        return None
    module = ref.owner.module_path
    for i, w in enumerate(weights):
        if w.rsplit(".", 1)[0] == module and module != root:  # the bias of W_i: its output
            return (sites[i + 1].written(),)
    # a norm (or a bare vector): the place of the chain where the module is registered (before W_1:
    # the vision side, over C as Qwen2's ln_q or over the merged k * C as InternVL's layer_norm), and
    # of those the one its sizes match
    sizes = (ref.tshape[0], ref.sshape[0])
    places = sites + [_vision_site(b, vision)]
    modules = [w.rsplit(".", 1)[0] for w in weights]
    if root not in modules:  # weights held by submodules: their registration order is the forward order
        order = {p: i for i, p in enumerate(b.teacher.modules)}
        before = sum(order.get(m, -1) < order.get(module, -1) for m in modules)
        places = [sites[0], places[-1]] if before == 0 else [sites[before]]
    found = {site.name: site for site in places if (site.t, site.s) == sizes}
    if len(found) > 1 and sizes[0] != sizes[1]:  # towers of one size: where the forward calls it says which
        at = _observed_site(b, root, module, chain, vision)
        if at is not None and (sites[at].t, sites[at].s) == sizes:
            return (sites[at].layout(),)
    if len(found) == 1 or (found and sizes[0] == sizes[1]):
        return (next(iter(found.values())).layout(),)
    raise SlicerError(f"tensor {ref.student_name!r} [{sizes[0]} -> {sizes[1]}] in the projector {root!r} matches "
                      f"{'no place' if not found else 'several places (' + ', '.join(found) + ')'} of it; slicer cannot "
                      "tell which axis it holds")


def _observed_site(b: ModelBinder, root: str, module: str, chain, vision: str) -> int | None:
    """The site of the chain where the projector's forward calls ``module`` (weights used before it)."""
    width = _vision_width(b.teacher, vision)
    cfg = _sub_config(b.teacher.top, vision)
    image, patch = positive_int(cfg, "image_size"), positive_int(cfg, "patch_size")
    lengths = ((image // patch) ** 2,) if image and patch else ()
    prefix = root + "."
    weights = [w[len(prefix):] for w, _ in chain if w.startswith(prefix)]
    inner = module[len(prefix):] if module.startswith(prefix) else None
    if width is None or inner is None or len(weights) != len(chain):
        return None
    return weights_used_before(b.teacher.modules[root], inner, weights, width, lengths + (16, 4, 1))


def _observed_merge(b: ModelBinder, root: str, chain, k: int, width: int | None) -> str | None:
    """The merge order seen by running the projector (``observe.merge_order``); None: not seen (a
    merge done outside the projector, as Llava's ``cat`` of feature layers: the table says)."""
    first = chain[0][0].rsplit(".", 1)[0]
    if not width or not first.startswith(root + "."):
        return None
    return merge_order(b.teacher.modules[root], first[len(root) + 1:], k, width)


def _chain(b: ModelBinder, root: str) -> list[tuple[str, bool]] | None:
    """The projector's 2-D weights in registration order, each with whether it is stored [in, out]."""
    out = []
    for name, p in b.teacher.model.named_parameters():
        if not (name.startswith(root + ".") or name.rsplit(".", 1)[0] == root) or p.dim() != 2:
            continue
        module_path, param = name.rsplit(".", 1)
        module = b.teacher.modules.get(module_path)
        if hasattr(module, "in_features") and param == "weight":
            out.append((name, False))
            continue
        orientation = _orientation(module, param)
        if orientation is None:
            return None
        out.append((name, orientation))
    return out or None


def _orientation(module, param: str) -> bool | None:
    """True where the module's forward multiplies ``x @ self.param`` ([in, out]), False for [out, in]."""
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return None
    p = re.escape(param)
    if re.search(rf"matmul\(\s*[\w.]+\s*,\s*self\.{p}\s*\)", source) or re.search(rf"@\s*self\.{p}\b", source):
        return True
    if re.search(rf"linear\(\s*[\w.]+\s*,\s*self\.{p}\b", source):
        return False
    return None


# How a projector lays k vision features side by side along its input (k > 1), read from the modeling
# code: "inner" = k blocks of C channels (the channel innermost), "outer" = C blocks of k.
_MERGES = {
    "PatchMerger": "inner",  # Qwen2-VL: ln_q(x).view(-1, self.hidden_size), 4 neighbouring patches
    "Qwen2_5_VLPatchMerger": "inner",  # the same
    "Qwen3VLVisionPatchMerger": "inner",  # x.view(-1, self.hidden_size) before or after its norm
    "InternVLMultiModalProjector": "inner",  # InternVLModel.pixel_shuffle: view / permute, channel last
    "Idefics3Connector": "inner",  # pixel_shuffle: view / permute / reshape, channel last
    "SmolVLMConnector": "inner",  # the same
    "AyaVisionMultiModalProjector": "inner",  # pixel_shuffle: reshape / permute, channel last
    "LlavaMultiModalProjector": "inner",  # torch.cat(hidden states of k feature layers, dim=-1)
    "LlavaNextMultiModalProjector": "inner",  # the same
    "LlavaOnevisionMultiModalProjector": "inner",  # the same
    "Mistral3MultiModalProjector": "outer",  # Mistral3PatchMerger: unfold(grid [C, h, w]) -> C * k
}


@dataclass
class _Site:
    """One place along the projector: its sizes and the layout it is bound to."""

    name: str
    t: int
    s: int
    layout: Callable[[], Layout]
    produced: Callable[[], Layout] | None = None  # what the weight before writes, if not ``layout`` (a gated pair)

    def written(self) -> Layout:
        return (self.produced or self.layout)()


def _teacher_naming(ref: TensorRef, root: str) -> str:
    """The projector's path in the teacher's checkpoint naming (axes are named after teacher paths):
    Llava's model.multi_modal_projector is saved as multi_modal_projector."""
    suffix = ref.owner.key[len(root):]
    if ref.owner.key.startswith(root) and suffix and ref.teacher_name.endswith(suffix):
        return ref.teacher_name[:-len(suffix)]
    return root


def _sites(b: ModelBinder, root: str, named: str, chain, text: str, vision: str) -> list[_Site]:
    """The n + 1 places of a chain of n weights: the vision side, the places in between, the language side."""
    t_params = dict(b.teacher.model.named_parameters())
    s_params = dict(b.student.model.named_parameters())

    def dims(key: str, in_major: bool) -> tuple[tuple[int, int], tuple[int, int]]:
        tshape, sshape = tuple(t_params[key].shape), tuple(s_params[key].shape)
        i, o = (0, 1) if in_major else (1, 0)
        return (tshape[i], sshape[i]), (tshape[o], sshape[o])

    n = len(chain)
    (vt_in, vs_in), _ = dims(*chain[0])
    vt, vs = _vision_width(b.teacher, vision), _vision_width(b.student, vision)
    k, rest = divmod(vt_in, vt or 1)
    # with a third sub-model (BLIP-2's Q-Former) the projector may read that one, not the vision tower
    third = [n for n in getattr(type(b.teacher.top), "sub_configs", {}) or {}
             if getattr(b.teacher.top, n, None) is not None and f"{n}." not in (text, vision)]
    known = bool(vt and vs and not rest and k * vs == vs_in) and not third
    merge = (_observed_merge(b, root, chain, k, vt) or _MERGES.get(type(b.teacher.modules.get(root)).__name__)) \
        if k > 1 else "inner"
    if vt_in == vs_in and (not known or merge is None):
        # the input is kept whole: whatever its layout (Llama 4's vision adapter, BLIP-2's Q-Former), the
        # projector then follows the language model alone
        def vision_side() -> Layout:
            return axis(b.add(f"{named}:input", "projector-input", vt_in, vs_in))
    elif not known:
        raise SlicerError(f"the projector {root!r} reads {vt_in} -> {vs_in} features from the vision tower, no whole "
                          f"multiple of its hidden size ({vt} -> {vs}); slicer cannot tell their layout")
    elif merge is None:
        raise SlicerError(f"the projector {root!r} ({type(b.teacher.modules.get(root)).__name__}) reads {k} vision "
                          "features side by side, in an order slicer does not know; keep the vision hidden size")
    else:
        def vision_side() -> Layout:
            name = b.add(f"{vision}hidden", "hidden", vt, vs)
            if k == 1:
                return axis(name)
            return product(name, k) if merge == "outer" else product(k, name)

    sites = [_Site(f"{vision}hidden" if k == 1 else f"{k} * {vision}hidden", vt_in, vs_in, vision_side)]
    for i in range(1, n):
        (t, s), _ = dims(*chain[i])
        _, (t_prev, s_prev) = dims(*chain[i - 1])
        name = f"{named}:ffn" + ("" if n == 2 else str(i))
        site = _Site(name, t, s, lambda name=name, t=t, s=s: axis(b.add(name, "ffn", t, s)))
        if (t_prev, s_prev) == (2 * t, 2 * s):  # a gated pair: W_i writes [x | gate], W_i+1 reads x * act(gate)
            split = _gated_split(b, root)
            site.produced = lambda site=site, split=split: (
                site.layout() + site.layout() if split == "halves" else product(site.layout()[0][0], 2))
        elif (t_prev, s_prev) != (t, s):
            raise SlicerError(f"the projector {root!r} writes {t_prev} features where the next weight reads {t}; slicer "
                              "does not know this layout")
        sites.append(site)
    _, (t_out, s_out) = dims(*chain[-1])
    sites.append(_Site(f"{text}hidden", t_out, s_out, lambda: axis(b.add(f"{text}hidden", "hidden", t_out, s_out))))
    return sites


def _gated_split(b: ModelBinder, root: str) -> str:
    """How the projector splits a gated pair, read from its forward (as for gate_up_proj)."""
    split = gated_split(b.teacher.modules.get(root))
    if split is None:
        raise SlicerError(f"the projector {root!r} writes a gated pair, split in a way slicer cannot read from its "
                          "forward")
    return split


def _check_output(b: ModelBinder, root: str, chain, text: str) -> None:
    """The projector's output is scattered into the language model's embeddings: one width."""
    key, in_major = chain[-1]
    t_out = b.teacher.model.get_parameter(key).shape[1 if in_major else 0]
    s_out = b.student.model.get_parameter(key).shape[1 if in_major else 0]
    lm_s = positive_int(_sub_config(b.student.top, text), "hidden_size", "d_model", "n_embd")
    if lm_s is not None and s_out != lm_s:
        raise StudentMismatch(f"the projector {root!r} writes {s_out} features into the language model, whose hidden "
                              f"size is {lm_s}; set the key that sizes the projector's output too"
                              f"{_hint(b, text, t_out, s_out)}")


def _vision_site(b: ModelBinder, vision: str) -> _Site:
    vt, vs = _vision_width(b.teacher, vision), _vision_width(b.student, vision)
    return _Site(f"{vision}hidden", vt, vs, lambda: axis(b.add(f"{vision}hidden", "hidden", vt, vs)))


def _hint(b: ModelBinder, text: str, t: int, s: int) -> str:
    """Config keys outside the language model that still hold the projector's old output size."""
    keys = []

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                if f"{prefix}{k}." != text:
                    walk(v, f"{prefix}{k}.")
            elif v == s == t and isinstance(v, int) and not isinstance(v, bool):
                keys.append(prefix + k)

    walk(b.student.top.to_dict(), "")
    return f" (perhaps {', '.join(keys[:4])})" if keys else ""
