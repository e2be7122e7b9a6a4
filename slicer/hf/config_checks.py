"""Checks of a student's config.json against the teacher's, before any model is built. Pure.

Building a model from a config allocates per layer, head and expert (even on the meta
device: Python modules, parameter objects), so ``--set num_hidden_layers=1000000000000``
used to grow past 6 GB before the "larger than the teacher" check ran on the built
model. Here the numbers are compared as numbers first.
"""
from __future__ import annotations

import re

from ..errors import SlicerError

# Integer config keys that count or size something the weights have (layers, heads,
# experts, widths): a student never has more than its teacher.
SIZE_KEY = re.compile(r"(size|dim|^num_|_num_|layers|heads|experts|vocab|rank|groups|^n_|_n$|width|depth|channels|"
                      r"intermediate|hidden|embd|inner|ffn|^d_|kv|lora|patch|conv|state)", re.IGNORECASE)
# Integers that choose among members rather than count them (routing top-k, token ids).
NOT_A_SIZE = re.compile(r"(per_tok|topk|top_k|_id$|_ids$)", re.IGNORECASE)
# Growth up to this factor is left to the check on the built model, which names the tensor
# that grew (or the model's own rule): building twice the teacher's modules is bounded.
# Beyond it the config is refused here, before anything is built.
GROWTH_BUILT = 2
# Any other integer (a context length, a window, a token id) may differ from the teacher's,
# within reason: no model config needs more than this.
MAX_OTHER_INT = 1 << 24
MAX_NEW_SIZE = 1 << 16  # a size key the teacher's config lacks (its class default is not known here)


def check_no_growth(teacher: dict, student: dict, where: str, edits: dict | None = None) -> None:
    """Refuse a student config whose counts or sizes exceed the teacher's, and absurd integers.

    Walks nested configs (``text_config``) and plain nested dicts alike (``edits``: the --set
    keys, named in ``where`` already; kept for callers that name them apart)."""
    for key, (t, s) in _int_pairs(teacher, student, "").items():
        leaf = re.sub(r"(\.\d+)+$", "", key).rsplit(".", 1)[-1]  # depths.2 -> depths
        shown = f"{key} {s}"
        if SIZE_KEY.search(leaf) and not NOT_A_SIZE.search(leaf):
            if t is not None and s > GROWTH_BUILT * max(t, 1):
                raise SlicerError(f"{where}: {shown} is larger than the teacher's {key} ({t}); weight selection makes "
                                  "a smaller model: give at most the teacher's value")
            if t is None and s > MAX_NEW_SIZE:
                raise SlicerError(f"{where}: {shown} is far too large (the teacher's config has no {key} to compare "
                                  f"with; at most {MAX_NEW_SIZE})")
        elif s > max(MAX_OTHER_INT, t or 0):
            raise SlicerError(f"{where}: {shown} is far too large (at most {MAX_OTHER_INT}, or the teacher's value)")


def check_config_describes(built: dict[str, tuple[int, ...]], stored: dict[str, tuple[int, ...]], where: str) -> None:
    """The teacher's config.json must describe its own weights: every tensor the model built from
    it saves under a name the checkpoint has must have the checkpoint's shape (transformers would
    refuse to load it otherwise). A config with hidden_size 8192 over 512-wide weights used to
    plan "hidden_size: 8192 -> 256"."""
    for name, shape in built.items():
        have = stored.get(name)
        if have is not None and tuple(have) != tuple(shape):
            raise SlicerError(f"{where}: the teacher's config does not describe its weights: tensor {name} is "
                              f"{list(have)} in the checkpoint but {list(shape)} by the config; fix the config.json "
                              "beside the teacher's weights")


def check_nested_key(base: dict, key: str, where: str) -> None:
    """A dotted --set key into a plain nested dict (not a config class, e.g. ``rope_parameters``)
    must name a key that dict has: there is no class to say what else it may hold, and a typo
    would otherwise be written to the student silently."""
    *path, leaf = key.split(".")
    target = base
    for part in path:
        target = target.get(part) if isinstance(target, dict) else None
    if isinstance(target, dict) and leaf not in target:
        have = ", ".join(sorted(target)) or "no keys"
        parent = ".".join(path)
        raise SlicerError(f"{where}: --set {key}: {parent} has no key {leaf!r} (it has: {have}); a typo? To give "
                          f"{parent} other keys, set it whole: --set '{parent}={{...}}' (JSON)")


def _int_pairs(teacher: object, student: object, prefix: str) -> dict[str, tuple[int | None, int]]:
    """{dotted key: (teacher's int or None, student's int)} for every int the student config holds."""
    out: dict[str, tuple[int | None, int]] = {}
    if not isinstance(student, dict):
        return out
    for key, s in student.items():
        t = teacher.get(key) if isinstance(teacher, dict) else None
        if isinstance(s, dict):
            out |= _int_pairs(t, s, f"{prefix}{key}.")
        elif isinstance(s, list):  # per-stage sizes (depths, hidden_sizes): element by element
            ts = t if isinstance(t, list) else []
            out |= _int_pairs(dict(enumerate(ts)), dict(enumerate(s)), f"{prefix}{key}.")
        elif _is_int(s):
            out[prefix + str(key)] = (t if _is_int(t) else None, s)
    return out


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
