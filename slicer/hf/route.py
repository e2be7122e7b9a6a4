"""The student from a Hugging Face config (the ``--student-config`` / ``--set`` route).

The student's tensor names and shapes are what ``save_pretrained`` would write for the
class named in the config's ``architectures``: the model is built on the meta device
(no memory, no weights; never remote code), then its state dict goes through the same
steps ``save_pretrained`` applies (keys ignored on save, tied weights removed, weight
conversions reverted to the checkpoint's names). The output folder gets the student's
config.json and the teacher's tokenizer and generation files, so it loads with
``from_pretrained``.

Long on purpose: the config route is one derivation (edits checked, per-layer lists, the meta models, the tensors save_pretrained would write, the teacher's files) with its cache around it; each piece reads the same configs.
"""
from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

from . import layer_lists, route_cache
from .common import (INSTALL_HINT, architecture, build_config, config_class, depth_key_of, first_line, import_transformers,
                     quiet, read_json, has_transformers)
from ..io.checkpoint import Checkpoint, require_regular_file
from ..teacher import open_checkpoint
from ..errors import SlicerError
from ..plan.layers import LayerMapper
from ..plan.build import StudentTensor
from ..io.format import CAST_TARGETS
from ..selection import layer_indices
from ..plan.student import StudentSpec
from .backbone_stages import follow_out_stages
from .config_checks import check_config_describes, check_nested_key, check_no_growth

log = logging.getLogger("slicer")

# Files of a model folder that are weights (never copied from the teacher) or ours.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".pkl",
                   ".npz", ".ot", ".tflite", ".index.json", ".incomplete")
NOT_COPIED = {"config.json", "slicer_manifest.json", "README.md"}  # README: the model card describes the teacher
MAX_COPIED_BYTES = 256 * 10**6
_TORCH_DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def from_config(teacher: str | Path | Checkpoint, student_config: str | Path | None, edits: dict, *, attention: str,
                dtype: str = "keep", layer_selection: str = "first", layer_scores: dict | None = None,
                use_cache: bool = True) -> StudentSpec:
    """``derive_from_config``, kept in the bindings cache (slicer.route_cache) for the next run of the same
    teacher, configs, edits and options: a repeated run imports neither transformers nor torch."""
    ckpt = teacher if isinstance(teacher, Checkpoint) else open_checkpoint(teacher, role="teacher")
    derive = lambda: derive_from_config(ckpt, student_config, edits, attention=attention, dtype=dtype,  # noqa: E731
                                        layer_selection=layer_selection, layer_scores=layer_scores)
    parts = _spec_key_parts(ckpt, student_config, edits, attention, dtype, layer_selection)
    if not use_cache or layer_scores is not None or parts is None or not has_transformers():
        # importance: the scores are data, not a key; no transformers: the derivation says how to install it
        return derive()
    path, key, payload = route_cache.spec_entry(parts)
    if payload is not None:
        tensors = [StudentTensor(n, tuple(shape), source) for n, shape, source in payload["tensors"]]
        files = ckpt.source.side_files({"config.json": payload["config"].encode("utf-8")}, _is_copied, MAX_COPIED_BYTES)
        rederive = lambda options: derive().make_binder(options)  # noqa: E731 - a binder the cache cannot answer
        binder_parts = {"route": "config", "spec": key, "student": [[t.name, list(t.shape)] for t in tensors]}
        return StudentSpec(tensors, payload["origin"], None, files, route_cache.cached(rederive, binder_parts))
    spec = derive()
    route_cache.store(path, key, route_cache.spec_payload(spec.tensors, spec.origin, spec.files["config.json"]))
    binder_parts = {"route": "config", "spec": key, "student": [[t.name, list(t.shape)] for t in spec.tensors]}
    spec.make_binder = route_cache.cached(spec.make_binder, binder_parts)
    return spec


def _spec_key_parts(ckpt: Checkpoint, student_config, edits: dict, attention: str, dtype: str,
                    layer_selection: str) -> dict | None:
    """Everything the config route's student depends on besides the versions; None: not kept (a remote
    teacher, configs that cannot be read: the derivation reports those)."""
    if ckpt.source.fetches:  # reading the configs for a key would cost requests
        return None
    try:
        teacher_path = ckpt.config_path()
        teacher_text = teacher_path.read_text(encoding="utf-8") if teacher_path is not None else None
        student_text = None
        if student_config is not None:
            p = Path(student_config)
            p = p / "config.json" if p.is_dir() else p
            if not p.is_file():
                return None
            student_text = p.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None
    if teacher_text is None:
        return None
    return {"route": "config", "teacher_config": teacher_text, "student_config": student_text, "set": edits,
            "attention": attention, "dtype": dtype, "layer_selection": layer_selection,
            "student_config_path": str(Path(student_config).resolve()) if student_config is not None else None,
            "teacher_config_path": str(teacher_path.resolve()),
            "teacher": [[t.name, t.dtype, list(t.shape)] for t in ckpt.tensors.values()],
            "side_files": sorted(p.name for p in ckpt.folder.iterdir() if _is_copied(p.name))}


def derive_from_config(teacher: str | Path | Checkpoint, student_config: str | Path | None, edits: dict, *,
                       attention: str, dtype: str = "keep", layer_selection: str = "first",
                       layer_scores: dict | None = None) -> StudentSpec:
    """The student described by a config.json (``student_config``, else the teacher's) with ``edits`` applied.

    ``edits`` maps config keys (dotted for nested configs: ``text_config.hidden_size``)
    to JSON values. ``dtype`` is the run's output dtype option and ``layer_selection``
    its layer selection: they keep the config's ``dtype`` and per-layer lists (e.g.
    ``layer_types``) true to the written student (``layer_scores``: the layer lists' scores
    of --layer-selection importance). Only headers of the teacher are read.
    """
    transformers = import_transformers()
    ckpt = teacher if isinstance(teacher, Checkpoint) else open_checkpoint(teacher, role="teacher")
    teacher_config_path = ckpt.config_path()
    teacher_dict = read_json(teacher_config_path) if teacher_config_path else None
    if student_config is not None:
        base_path = Path(student_config)
        if base_path.is_dir():
            base_path = base_path / "config.json"
        if not base_path.is_file():
            if base_path.exists():  # a FIFO or a device: refused, never read (it could hang)
                require_regular_file(base_path, "student config")
            raise SlicerError(f"{student_config}: student config not found")
        base = read_json(base_path)
    elif teacher_dict is not None:
        base_path, base = teacher_config_path, teacher_dict
    else:
        raise SlicerError(f"{ckpt.path}: teacher has no config.json beside its weights; pass --student-config CONFIG.json")
    where = str(base_path) + (" with " + " ".join(f"--set {k}={json.dumps(v)}" for k, v in edits.items()) if edits else "")

    config_cls = config_class(transformers, base, base_path)
    _refuse_architecture_change(base, edits, base_path)
    student_dict = _apply_edits(base, edits, config_cls, where)
    check_no_growth(teacher_dict if teacher_dict is not None else base, student_dict, where, edits)  # before any build
    lists = layer_lists.find(base, student_dict, edits, config_cls, depth_key_of(config_cls))
    layer_lists.provisional(lists, student_dict)
    _nested_layer_numbers(base, student_dict, edits, config_cls, layer_selection, where,
                          skip={x.path + x.key for x in lists}, layer_scores=layer_scores)
    follow_out_stages(base, student_dict, edits, layer_selection)
    if dtype != "keep":  # a float dtype dequantizes every quantized weight: the student is a plain model
        student_dict.pop("quantization_config", None)
    arch = architecture(transformers, student_dict, where)
    model = _meta_model(transformers, arch, build_config(config_cls, student_dict, where), where)
    shapes = _saved_shapes(model)
    if lists and teacher_dict is base:  # per-layer lists follow the layers the student is given
        maps = _config_layer_maps(ckpt, model, shapes, layer_selection, where, layer_scores)
        if layer_lists.apply(lists, student_dict, maps):
            from .bindings.view import layer_kinds

            before = layer_kinds(list(shapes))
            model = _meta_model(transformers, arch, build_config(config_cls, student_dict, where), where)
            shapes = _saved_shapes(model)
            if layer_kinds(list(shapes)) != before:
                raise SlicerError(f"{where}: the per-layer lists {', '.join(sorted({x.key for x in lists}))} decide "
                                  "which layers are which, and following the selected teacher layers changes them; "
                                  "set them with --set")

    tensors = _tensors(model, shapes, ckpt)
    make_binder = _binder_factory(transformers, model, tensors, teacher_dict, ckpt, attention, where)
    _check_fits(ckpt, tensors, teacher_dict, student_dict, layer_selection, where, layer_scores)
    _set_dtype(student_dict, _output_dtype(ckpt, tensors, dtype))
    files = {"config.json": (json.dumps(student_dict, indent=2) + "\n").encode()}
    if teacher_config_path is not None:  # a remote teacher's: names now, bytes when written
        files = ckpt.source.side_files(files, _is_copied, MAX_COPIED_BYTES)
    origin = {
        "route": "config",
        "architecture": arch.__name__,
        "student_config": str(Path(student_config).resolve()) if student_config is not None else None,
        "teacher_config": str(teacher_config_path.resolve()) if teacher_config_path else None,
        "set": dict(edits),
        "config_changes": _changes(teacher_dict, student_dict) if teacher_dict is not None else {},
        "copied_files": sorted(n for n in files if n != "config.json"),
        "transformers_version": transformers.__version__,
    }
    return StudentSpec(tensors, origin, None, files, make_binder)


# ------------------------------------------------------------------ configs










def _apply_edits(base: dict, edits: dict, config_cls, where: str) -> dict:
    """base with edits applied; keys go through the config's attribute_map (GPT-2's hidden_size -> n_embd)."""
    out = copy.deepcopy(base)
    defaults: dict = {}
    for key, value in edits.items():
        *path, leaf = key.split(".")
        target, cls = out, config_cls
        for part in path:
            target = target.get(part) if isinstance(target, dict) else None
            if not isinstance(target, dict):
                raise SlicerError(f"{where}: --set {key}: {part!r} is not a nested config object")
            cls = _sub_config_class(cls, part, target)
        if cls is None and path:  # a plain dict (rope_parameters): no class to ask, so the key must exist
            check_nested_key(out, key, where)
        if cls is not None:  # nested keys are checked against their own config class (text_config: LlamaConfig)
            leaf = getattr(cls, "attribute_map", {}).get(leaf, leaf)
            if leaf not in target:
                if cls not in defaults:
                    with quiet():
                        defaults[cls] = cls()
                if not _is_config_key(cls, defaults[cls], leaf, value):
                    raise SlicerError(f"{where}: --set {key}: {cls.__name__} has no such key (a typo?)")
        target[leaf] = value
    return out


def _sub_config_class(parent_cls, key: str, d: dict):
    """The config class of the nested config ``key`` of ``parent_cls`` (None: not known), as transformers
    resolves it: the class it declares, or for an AutoConfig slot the class of the dict's model_type."""
    from transformers import CONFIG_MAPPING

    if parent_cls is None:
        return None
    declared = (getattr(parent_cls, "sub_configs", None) or {}).get(key)
    if isinstance(declared, type) and declared.__name__ != "AutoConfig":
        return declared
    model_type = d.get("model_type")
    if model_type is None:
        spec = (getattr(parent_cls, "sub_configs_defaults", None) or {}).get(key)
        model_type = getattr(spec, "model_type", None)
    return CONFIG_MAPPING[model_type] if isinstance(model_type, str) and model_type in CONFIG_MAPPING else None


def _refuse_architecture_change(base: dict, edits: dict, base_path: Path) -> None:
    """--set model_type / architectures would describe another model than the one whose
    tensors are written (the tensors follow the base config's class): refused."""
    for key, value in edits.items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf not in ("model_type", "architectures"):
            continue
        target = base
        for part in key.split(".")[:-1]:
            target = target.get(part) if isinstance(target, dict) else None
        old = target.get(leaf) if isinstance(target, dict) else None
        if value != old:
            raise SlicerError(f"{base_path}: --set {key}={json.dumps(value)}: changing the architecture "
                              f"(from {json.dumps(old)}) is not supported: the student's tensors follow the teacher's "
                              "architecture; to name another one, pass its config with --student-config")


def _is_config_key(config_cls, defaults, key: str, value) -> bool:
    """An attribute of the config, or a key its constructor turns into others (e.g. rope_theta)."""
    if hasattr(defaults, key):
        return True
    try:
        with quiet():
            edited = config_cls(**{key: value}).to_dict()
    except Exception:
        return True  # it does something: the full config is validated (and refused) later
    before = defaults.to_dict()
    return any(edited.get(k) != before.get(k) for k in set(edited) | set(before) if k != key)





def _layer_kinds_of(teacher_names, student_names) -> dict:
    """Depth prefix -> (teacher kinds, student kinds): a student layer is fed by a layer of its kind."""
    from .bindings.view import layer_kinds

    from ..plan.quantized import fold_kind

    t, s = layer_kinds(list(teacher_names)), layer_kinds(list(student_names))
    # a quantized teacher's scales are part of its weights, not of its layers' kind
    return {p: ([fold_kind(k) for k in t[p]], [fold_kind(k) for k in s[p]]) for p in s if p in t}


def _config_layer_maps(ckpt: Checkpoint, model, shapes: dict, mode: str, where: str,
                       layer_scores: dict | None = None) -> dict[str, list[int]]:
    """(Sub-)config path ("" or "text_config.") -> the teacher layer of each student layer of its layer list.

    The same map the plan makes (LayerMapper with the layer kinds); a config whose layers
    sit under several lists that are selected differently gets none (its lists keep the
    teacher's pattern of its first layers)."""
    from .bindings.view import ModelView

    mapper = LayerMapper(ckpt.tensors, shapes, mode, kinds=_layer_kinds_of(ckpt.tensors, shapes),
                         layer_scores=layer_scores, unscored="uniform")
    try:
        for name in shapes:
            mapper.teacher_name(name)
    except SlicerError as e:
        raise SlicerError(f"{where}: {e}") from e
    view = ModelView(model)
    found: dict[str, list[int] | None] = {}
    for prefix, layer_map in mapper.maps.items():
        first = next((n for n in shapes if n.startswith(prefix + ".0.")), None)
        if first is None:
            continue
        path = view.owner(first).config_path
        found[path] = layer_map if found.get(path, layer_map) == layer_map else None
    return {p: m for p, m in found.items() if m is not None}


_LAYER_NUMBERS = ("indexes", "indices", "_layers", "_layer_ids")


def _nested_layer_numbers(base: dict, student: dict, edits: dict, config_cls, mode: str, where: str,
                          skip: set[str] = frozenset(), layer_scores: dict | None = None) -> None:
    """Lists of layer numbers in a nested config (Qwen2.5-VL's vision ``fullatt_block_indexes``, Qwen3-VL's
    ``deepstack_visual_indexes``) follow a depth change there. With ``--layer-selection first`` (the default)
    the student keeps the teacher's pattern of its first layers, so the layers they name keep their share
    (32 -> 16 vision blocks: [7, 15, 23, 31] -> [7, 15]); a depth whose first layers hold another share is
    refused, naming the depths that would keep it. Other selections renumber the list to the layers they
    keep, and refuse one that names a layer they cut: which layer takes its role is the user's call."""
    for key, sub in student.items():
        if not (isinstance(sub, dict) and isinstance(base.get(key), dict)):
            continue
        cls = _sub_config_class(config_cls, key, sub)
        depth_key = getattr(cls, "attribute_map", {}).get("num_hidden_layers", "num_hidden_layers")
        t_depth, s_depth = base[key].get(depth_key), sub.get(depth_key)
        if not (isinstance(t_depth, int) and isinstance(s_depth, int) and 0 < s_depth < t_depth):
            continue
        layers = None
        for name, value in sub.items():
            if (f"{key}.{name}" in edits or f"{key}.{name}" in skip or not name.endswith(_LAYER_NUMBERS) or value != base[key].get(name)
                    or not isinstance(value, list) or not value
                    or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < t_depth for i in value)):
                continue
            if mode == "first":  # the default keeps the pattern: full-attention blocks keep their share
                kept = layer_lists.in_proportion(value, t_depth, s_depth)
                if kept is None:
                    raise SlicerError(f"{where}: {key}.{name} = {value} names {len(value)} of the {t_depth} teacher "
                                      f"layers; the first {s_depth} hold {sum(i < s_depth for i in value)} of them, not "
                                      f"that share: {_holding(layer_lists.depths_holding(value, t_depth))} (or set "
                                      f"the list too: --set {key}.{name}=[...])")
                sub[name] = kept
                continue
            if layers is None:
                layers = layer_indices(t_depth, s_depth, mode, _depth_scores(layer_scores, t_depth, mode))
            kept = [layers.index(i) for i in value if i in layers]
            if len(kept) != len(value):
                raise SlicerError(f"{where}: {key}.{name} = {value} names teacher layers the student does not keep "
                                  f"(--layer-selection {mode} keeps {layers} of {t_depth}); set it too, e.g. "
                                  f"--set {key}.{name}=[...]")
            sub[name] = kept


def _holding(depths: list[int]) -> str:
    """[1, 2, 3, 6] -> 'a depth of 1-3 or 6 keeps it'."""
    spans: list[list[int]] = []
    for d in depths:
        if spans and d == spans[-1][-1] + 1:
            spans[-1].append(d)
        else:
            spans.append([d])
    text = [f"{sp[0]}-{sp[-1]}" if len(sp) > 1 else str(sp[0]) for sp in spans]
    if not text:
        return "no shallower depth keeps it"
    return "a depth of " + " or ".join([", ".join(text[:-1]), text[-1]] if len(text) > 1 else text) + " keeps it"


def _depth_scores(layer_scores: dict | None, depth: int, mode: str):
    """The one layer list of this depth among the importance scores (None unless importance)."""
    if mode != "importance":
        return None
    found = [v for v in (layer_scores or {}).values() if len(v) == depth]
    if len(found) != 1:
        raise SlicerError(f"--layer-selection importance: {len(found)} layer lists of {depth} layers in the scores; "
                          "cannot tell which one the config's per-layer lists follow")
    return found[0]








def _meta_model(transformers, cls, config, where: str):
    """The student on the meta device: shapes without memory, weights never initialized."""
    import torch

    try:
        with quiet(), torch.device("meta"):
            return cls(config)
    except Exception as e:  # e.g. "hidden size is not a multiple of the number of attention heads"
        raise SlicerError(f"{where}: {cls.__name__} cannot be built from this config: {first_line(e)}") from e








# ------------------------------------------------------------------ tensors

def _saved_shapes(model) -> dict[str, tuple[int, ...]]:
    """Names and shapes as ``save_pretrained`` writes them (the steps it takes, on meta tensors)."""
    state = model.state_dict()  # non-persistent buffers are not in it
    for key in getattr(model, "_keys_to_ignore_on_save", None) or ():
        state.pop(key, None)
    try:
        from transformers.modeling_utils import remove_tied_weights_from_state_dict
    except ImportError:  # transformers 4.x
        remove_tied_weights_from_state_dict = _remove_tied_v4
    state = remove_tied_weights_from_state_dict(state, model)
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4.x saves the module names as they are
        pass
    else:
        state = revert_weight_conversion(model, state)
    return {name: tuple(t.shape) for name, t in state.items()}


def _remove_tied_v4(state: dict, model) -> dict:
    """Tied parameters appear once: drop the names the model declares as tied copies."""
    declared = []
    for prefix, module in model.named_modules():
        keys = getattr(module, "_tied_weights_keys", None) or []
        declared += [f"{prefix}.{k}" if prefix else k for k in keys]
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    for names in groups.values():
        tied = [n for n in sorted(names) if any(re.search(p, n) for p in declared)]
        for name in tied[: len(names) - 1]:
            state.pop(name, None)
    return state


def _tie_sources(model) -> dict[str, str]:
    """target -> source of weights the architecture can tie (whether or not this config ties them)."""
    out: dict[str, str] = {}
    for prefix, module in model.named_modules():
        declared = getattr(module, "_tied_weights_keys", None)
        if isinstance(declared, dict):
            for target, source in declared.items():
                full = (f"{prefix}.{target}", f"{prefix}.{source}") if prefix else (target, source)
                out.setdefault(*full)
    try:  # the pair every version knows: output embeddings <- input embeddings
        names = {id(m): n for n, m in model.named_modules()}
        out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
        if out_emb is not None and in_emb is not None and id(out_emb) in names and id(in_emb) in names:
            out.setdefault(f"{names[id(out_emb)]}.weight", f"{names[id(in_emb)]}.weight")
    except (AttributeError, NotImplementedError):
        pass
    return out


def _tensors(model, shapes: dict[str, tuple[int, ...]], ckpt: Checkpoint) -> list[StudentTensor]:
    """Student tensors; one the teacher's files lack because the teacher ties it takes the tie's source."""
    ties = _tie_sources(model)
    tensors = []
    for name, shape in shapes.items():
        source = ties.get(name)
        if name not in ckpt.tensors and source is not None and source in ckpt.tensors:
            tensors.append(StudentTensor(name, shape, source=source))
        else:
            tensors.append(StudentTensor(name, shape))
    return tensors


def _check_fits(ckpt: Checkpoint, tensors: list[StudentTensor], teacher_dict, student_dict, mode: str, where: str,
                layer_scores: dict | None = None) -> None:
    """A student larger than the teacher is refused here, naming the config keys that grew."""
    grew = ""
    if teacher_dict is not None:
        bigger = [f"{k} {a} -> {b}" for k, (a, b) in _changes(teacher_dict, student_dict).items()
                  if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and b > a]
        grew = f" (grew: {', '.join(bigger)})" if bigger else ""
    try:
        names = [t.name for t in tensors]
        mapper = LayerMapper(ckpt.tensors, names, mode, kinds=_layer_kinds_of(ckpt.tensors, names),
                             layer_scores=layer_scores, unscored="uniform")
        for t in tensors:
            source = ckpt.tensors.get(mapper.teacher_name(t.source or t.name))
            if source is None or len(source.shape) != len(t.shape):
                continue  # the plan reports it with the teacher's file
            if any(s > u for s, u in zip(t.shape, source.shape)):
                raise SlicerError(f"student tensor {t.name!r} {list(t.shape)} is larger than the teacher's "
                                  f"{source.name!r} {list(source.shape)}; a student cannot be larger than its teacher{grew}")
    except SlicerError as e:
        raise SlicerError(f"{where}: {e}") from e


def _output_dtype(ckpt: Checkpoint, tensors: list[StudentTensor], choice: str) -> str | None:
    """torch dtype name of the written floating tensors (the teacher's, by bytes, when kept)."""
    if choice != "keep":
        return _TORCH_DTYPE_NAMES.get(CAST_TARGETS.get(choice, ""))
    weight: dict[str, int] = {}
    for t in tensors:
        info = ckpt.tensors.get(t.source or t.name)
        if info is not None and info.dtype in _TORCH_DTYPE_NAMES:
            weight[info.dtype] = weight.get(info.dtype, 0) + info.nbytes
    return _TORCH_DTYPE_NAMES[max(weight, key=weight.get)] if weight else None


def _set_dtype(d: dict, name: str | None) -> None:
    if name is None:
        return
    present = [k for k in ("dtype", "torch_dtype") if k in d]
    for key in present or ["dtype" if _transformers_major() >= 5 else "torch_dtype"]:
        d[key] = name


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def _changes(teacher: dict, student: dict, prefix: str = "") -> dict[str, list]:
    """{dotted key: [teacher value, student value]} for every key that differs (None: absent)."""
    out: dict[str, list] = {}
    for key in list(teacher) + [k for k in student if k not in teacher]:
        a, b = teacher.get(key), student.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out |= _changes(a, b, f"{prefix}{key}.")
        elif a != b or (key in teacher) != (key in student):
            out[prefix + key] = [a, b]
    return out


def _is_copied(name: str) -> bool:
    """A file beside the teacher's weights that the student gets too (by name; the size is checked apart)."""
    return not (name.startswith(".") or name in NOT_COPIED or name.endswith(WEIGHT_SUFFIXES)
                or (name.startswith("model") and "safetensors" in name))


# ------------------------------------------------------------------ the model's structure

def _binder_factory(transformers, student_model, tensors: list[StudentTensor], teacher_dict: dict | None,
                    ckpt: Checkpoint, attention: str, where: str):
    """StudentSpec.make_binder: the teacher's and the student's models, both on the meta device,
    bind every tensor dimension to the model's own axes (slicer.hf.bindings)."""
    from .bindings import guard

    if teacher_dict is None:
        if attention == "heads":
            raise SlicerError(f"{ckpt.path}: teacher has no config.json, and whole-head selection needs its structure; "
                              "add it, or pass --attention flat")
        return guard.names_binder
    teacher_model = _teacher_model(transformers, teacher_dict, ckpt.config_path(), student_model, ckpt.tensors)
    from .bindings import check_experts, check_heads, model_binder

    check_experts(teacher_model, student_model, where)
    if attention == "heads":
        check_heads(teacher_model, student_model, where)
    return model_binder(teacher_model, student_model, list(ckpt.tensors), [t.name for t in tensors])


def _teacher_model(transformers, teacher_dict: dict, path: Path, student_model, tensors: dict | None = None):
    """The teacher's model on the meta device (its architecture, else the student's class); with
    the teacher's ``tensors``, checked to describe them (a config that contradicts its weights would
    give a plan of the wrong sizes)."""
    cls = config_class(transformers, teacher_dict, path)
    config = build_config(cls, teacher_dict, str(path))
    arch = (architecture(transformers, teacher_dict, str(path)) if teacher_dict.get("architectures")
            else type(student_model))
    model = _meta_model(transformers, arch, config, str(path))
    if tensors is not None:
        check_config_describes(_saved_shapes(model), {n: t.shape for n, t in tensors.items()}, str(path))
    return model


def template_structure(ckpt: Checkpoint, spec: StudentSpec, attention: str | None) -> str:
    """Give a template the model's structure when the teacher's folder and the template's both
    hold a config transformers can build; returns the run's attention mode.

    Without them the template is selected flat (the paper's rule) behind a guard that refuses
    names whose structure flat selection would break; ``--attention heads`` is then refused."""
    student_path = spec.folder / "config.json" if spec.folder is not None else None
    dicts = None
    teacher_path = None
    if student_path is not None and student_path.is_file():  # the template's first: a remote teacher's costs a fetch
        student_dict = read_json(student_path)
        teacher_path = ckpt.config_path() if _is_hf_config(student_dict) else None
        teacher_dict = read_json(teacher_path) if teacher_path is not None else None
        if teacher_dict is not None and _is_hf_config(teacher_dict):
            dicts = teacher_dict, student_dict
    if dicts is None:
        if attention == "heads":
            raise SlicerError(f"{spec.folder or ckpt.path}: --attention heads needs the model's structure: a Hugging Face "
                              "config.json beside the teacher's weights and the template's (or use --set / --student-config)")
        from .bindings import guard  # only here: the package's import costs a cached HF run 40 ms

        spec.make_binder = guard.names_binder_fused_ok if attention == "flat" else guard.names_binder
        return "flat"
    if not has_transformers():  # asked without importing it: a cached run never does
        if attention == "heads":
            import_transformers()  # raises, naming the extra to install
        log.warning("%s: transformers is not installed, so the template is selected flat (the paper's rule); install "
                    "it (%s) to keep whole heads, experts and fused projections consistent", spec.folder, INSTALL_HINT)
        from .bindings import guard  # only here: the package's import costs a cached HF run 40 ms

        spec.make_binder = guard.names_binder_fused_ok if attention == "flat" else guard.names_binder
        return "flat"
    teacher_dict, student_dict = dicts

    def derive(options):  # seconds (transformers, two meta models): paid once per key, see slicer.hf.route_cache
        transformers = import_transformers()
        cls = config_class(transformers, student_dict, student_path)
        config = build_config(cls, student_dict, str(student_path))
        arch = architecture(transformers, student_dict, str(student_path))
        student_model = _meta_model(transformers, arch, config, str(student_path))
        teacher_model = _teacher_model(transformers, teacher_dict, teacher_path, student_model, ckpt.tensors)
        from .bindings import model_binder

        return model_binder(teacher_model, student_model, list(ckpt.tensors), [t.name for t in spec.tensors])(options)

    spec.make_binder = route_cache.cached(derive, {
        "route": "template", "teacher_config": teacher_dict, "student_config": student_dict,
        "teacher": [[t.name, t.dtype, list(t.shape)] for t in ckpt.tensors.values()],
        "student": [[t.name, list(t.shape)] for t in spec.tensors]})
    spec.origin["structure"] = "config.json of the teacher and the template"
    return attention or "heads"


def _is_hf_config(d: dict) -> bool:
    return isinstance(d.get("model_type"), str) and isinstance(d.get("architectures"), list) and bool(d["architectures"])
