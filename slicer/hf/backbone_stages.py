"""A backbone config's output stages follow a depth change (DINOv2, ViT backbones: ``out_features``).

Such configs name their stages ``stem, stage1 .. stageN``, stage k being the output of layer
k, and pick the ones they return (``out_features``, and the same as numbers in ``out_indices``).
When the student is shallower and the user did not set them, a stage of a kept teacher layer
becomes the stage of that student layer; a stage of a layer that is cut becomes the student
stage at the same depth in proportion (the teacher's last stage: the student's last), so the
default "return the last stage" stays true. ``stage_names`` is rebuilt for the new depth.
"""
from __future__ import annotations

import math

from ..selection import layer_indices

_DEPTH = "num_hidden_layers"


def follow_out_stages(base: dict, student: dict, edits: dict, mode: str, prefix: str = "") -> None:
    """Rewrite ``student``'s out_features / out_indices / stage_names in place (and in nested configs)."""
    for key, sub in student.items():
        if isinstance(sub, dict) and isinstance(base.get(key), dict):
            follow_out_stages(base[key], sub, edits, mode, f"{prefix}{key}.")
    t, s = base.get(_DEPTH), student.get(_DEPTH)
    if not (isinstance(t, int) and isinstance(s, int) and 0 < s < t):
        return
    if base.get("stage_names") != _names(t) or any(f"{prefix}{k}" in edits for k in ("out_features", "out_indices",
                                                                                      "stage_names")):
        return
    # importance picks layers from scores this config does not see: stages then go by proportion alone
    kept = [] if mode == "importance" else layer_indices(t, s, mode)
    stages = []
    for k in _stage_numbers(base, t):
        if k == 0:
            stages.append(0)
        elif k - 1 in kept:
            stages.append(kept.index(k - 1) + 1)
        else:
            stages.append(max(1, math.ceil(k * s / t)))
    stages = sorted(set(stages))
    if "stage_names" in student:
        student["stage_names"] = _names(s)
    if "out_features" in base:
        student["out_features"] = [_names(s)[k] for k in stages]
    if "out_indices" in base:
        student["out_indices"] = stages


def _names(depth: int) -> list[str]:
    return ["stem"] + [f"stage{i}" for i in range(1, depth + 1)]


def _stage_numbers(base: dict, depth: int) -> list[int]:
    names = _names(depth)
    if isinstance(base.get("out_features"), list):
        return [names.index(n) for n in base["out_features"] if n in names]
    out = base.get("out_indices")
    return [i % (depth + 1) for i in out if isinstance(i, int)] if isinstance(out, list) else []
