"""What every module of the transformers route shares: importing transformers, reading and
building its configs quietly, and saying its errors in one line."""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import re
import sys
import warnings
from pathlib import Path

from ..errors import SlicerError
from . import supported

INSTALL_HINT = "pip install 'weight-slicer[hf]'"


def import_transformers():
    try:
        import transformers
    except ImportError as e:
        raise SlicerError(f"a student from a config needs transformers ({e}); install it with {INSTALL_HINT}") from e
    supported.check()  # one line per release outside pyproject's range: layouts are learned by running it
    return transformers


def has_transformers() -> bool:
    """Whether transformers can be imported, asked without importing it (a cached run never does)."""
    if "transformers" in sys.modules:
        return sys.modules["transformers"] is not None
    try:
        return importlib.util.find_spec("transformers") is not None
    except (ImportError, ValueError):  # a finder that refuses it: not installed, as far as we can use it
        return False


def read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))  # a Path, or a remote teacher's RemotePath
    except OSError as e:
        raise SlicerError(f"{path}: cannot read: {e.strerror or e}") from e
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, absurd numbers, nested too deeply
        raise SlicerError(f"{path}: not valid JSON ({str(e)[:200]})") from e
    if not isinstance(obj, dict):
        raise SlicerError(f"{path}: expected a JSON object (a Hugging Face config.json)")
    return obj


def config_class(transformers, d: dict, path: Path):
    model_type = d.get("model_type")
    if not isinstance(model_type, str):
        raise SlicerError(f"{path}: no \"model_type\" key; is this a Hugging Face config.json?")
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        custom = " (its auto_map names custom code, which slicer never runs)" if "auto_map" in d else ""
        raise SlicerError(f"{path}: model_type {model_type!r} is not known to transformers {transformers.__version__}{custom}")
    return CONFIG_MAPPING[model_type]


def build_config(config_cls, d: dict, where: str):
    # config.json holds floats JSON cannot (inf, nan) as transformers writes them ({"__float__": "Infinity"}):
    # decode them as its own from_json_file does; the dict itself (written to the student) keeps that form.
    decode = getattr(config_cls, "_decode_special_floats", None)
    d = decode(copy.deepcopy(d)) if callable(decode) else copy.deepcopy(d)
    try:
        with quiet():
            return config_cls.from_dict(d)
    except Exception as e:  # transformers validates configs with ValueError, TypeError, its own errors
        raise SlicerError(f"{where}: invalid {config_cls.__name__}: {first_line(e)}") from e


def architecture(transformers, d: dict, where: str):
    archs = d.get("architectures")
    if not archs or not isinstance(archs, list) or not isinstance(archs[0], str):
        raise SlicerError(f"{where}: no \"architectures\" key naming the model class; add e.g. "
                          "--set 'architectures=[\"LlamaForCausalLM\"]'")
    name = archs[0]
    cls = getattr(transformers, name, None) if name.isidentifier() else None
    if not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel):
        custom = " (its auto_map names custom code, which slicer never runs)" if "auto_map" in d else ""
        raise SlicerError(f"{where}: architectures names {name!r}, which is not a model class of transformers "
                          f"{transformers.__version__}{custom}")
    return cls


@contextlib.contextmanager
def quiet():
    """transformers' config warnings (e.g. token ids outside a tiny vocab) are not ours to print."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():  # torch's too (zero-element init with hidden_size=0): the error says it
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def first_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(e).__name__
    # huggingface_hub's strict dataclasses wrap the message: keep the validator's own words
    text = re.sub(r"^Class validation error for validator '[^']*':\s*(\w+(Error|Exception):\s*)?", "", text)
    return text if len(text) < 300 else text[:297] + "..."


def depth_key_of(config_cls) -> str:
    return (getattr(config_cls, "attribute_map", None) or {}).get("num_hidden_layers", "num_hidden_layers")
