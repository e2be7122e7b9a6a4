"""The manifest: what was selected, from where, with which options.

Enough to reproduce and audit a student: the teacher's files (names, sizes, mtimes;
for a remote teacher its URL, revision and the files' ETags),
the options, the layer maps, every index set (its rule and its indices) and, per
student tensor, its source and the index set of each dimension.
"""
from __future__ import annotations


from ..version import __version__
from ..axes import format_layout
from .build import Plan

FORMAT = "slicer-manifest/1"


def build(plan: Plan) -> dict:
    teacher = plan.teacher
    # local: path, sizes and mtimes; remote: URL, revision, sizes and ETags (--resume compares them)
    teacher_record = teacher.source.record(teacher.files)
    return {
        "format": FORMAT,
        "slicer_version": __version__,
        "teacher": teacher_record,
        "student": plan.student,
        "options": plan.options.as_dict(),
        "layer_maps": plan.layer_maps,
        "binding": plan.binding,
        "axes": _axes(plan),
        "component_maps": {prefix: {"axis": plan.component_axes[prefix], "members": members}
                           for prefix, members in plan.component_maps.items()},
        **({"quantization": plan.quantization} if plan.quantization else {}),
        **({"scores": plan.scores} if plan.scores else {}),
        "index_sets": {key: ix.describe() for key, ix in sorted(plan.index_sets.items())},
        "tensors": {
            j.name: {
                "source": j.source.name,
                "teacher_shape": list(j.source.shape),
                "shape": list(j.shape),
                "source_dtype": j.source.dtype,
                "dtype": j.dtype,
                "shard": plan.shards[j.shard].filename,
                "axes": [format_layout(layout) for layout in j.layouts],
                "index": [ix.key for ix in j.index],
                **({"dequantize": j.dequant.describe()} if j.dequant is not None else {}),
            }
            for j in plan.jobs
        },
        "skipped": plan.skipped,
        "excluded": plan.excluded,
        "shards": [{"name": s.filename, "size": s.size} for s in plan.shards],
    }


def _axes(plan: Plan) -> dict:
    """Every axis instance: kind, sizes, and its index set's key (leaves) or its parts (derived;
    a nested one with an index set of its own: its key too).

    A leaf of the inconsistent ablation has no one index set (each dimension draws its own):
    its ``index`` is null."""
    out = {}
    for name, ax in sorted(plan.axes.axes.items()):
        entry = ax.describe()
        if ax.parts is None or name in plan.leaf_keys:
            entry["index"] = plan.leaf_keys.get(name)
        out[name] = entry
    return out
