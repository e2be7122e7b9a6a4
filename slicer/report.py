"""Human-readable plan and summary (the CLI prints them; the library never prints)."""
from __future__ import annotations

import json

from .plan import Plan


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError


def _shape(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def format_plan(plan: Plan) -> str:
    o = plan.options
    t = plan.teacher
    lines = [
        f"teacher   {t.path}  ({len(t.files)} file{'s' * (len(t.files) != 1)}, {len(t.tensors)} tensors, {format_bytes(t.total_bytes)})",
        f"options   method={o.method} seed={o.seed} layer-selection={o.layer_selection} dtype={o.dtype} "
        f"max-shard-size={format_bytes(o.max_shard_size)}" + "".join(f" exclude={e!r}" for e in o.exclude),
    ]
    changes = plan.student.get("config_changes") or {}
    if changes:
        lines.append(f"config    {plan.student.get('architecture', '')}, attention={o.attention}: teacher -> student")
        lines += [f"  {key}: {json.dumps(a)} -> {json.dumps(b)}" for key, (a, b) in changes.items()]
    for prefix, layers in plan.layer_maps.items():
        lines.append(f"layers    {prefix}: {len(layers)} of {plan.teacher_depths[prefix]}, teacher layers {layers}")
    lines += [
        f"tensors   {len(plan.jobs)} written, {len(plan.skipped)} teacher tensors unused, {len(plan.excluded)} excluded",
        f"read      {format_bytes(plan.bytes_to_read)} of {format_bytes(t.total_bytes)}",
        f"write     {format_bytes(plan.bytes_to_write)} in {len(plan.shards)} shard{'s' * (len(plan.shards) != 1)}",
    ]
    for shard in plan.shards:
        lines.append(f"  {shard.filename}  {format_bytes(shard.size)}  {len(shard.jobs)} tensors")
    width = max(len(j.name) for j in plan.jobs)
    lines.append("")
    lines.append(f"{'student tensor':<{width}}  {'teacher shape':>20} -> {'student shape':<20} dtype   source")
    for j in plan.jobs:
        source = "" if j.source.name == j.name else j.source.name
        dtype = j.dtype if j.dtype == j.source.dtype else f"{j.source.dtype}->{j.dtype}"
        lines.append(f"{j.name:<{width}}  {_shape(j.source.shape):>20} -> {_shape(j.shape):<20} {dtype:<7} {source}")
    return "\n".join(lines)


def format_summary(s) -> str:
    if getattr(s, "unchanged", False):
        return f"nothing to do: {s.out} already holds this student (same teacher, options and layout); nothing was written"
    text = (
        f"wrote {s.tensors_written} tensors in {s.shards} shard{'s' * (s.shards != 1)} to {s.out} "
        f"({s.tensors_skipped} teacher tensors unused, {s.tensors_excluded} excluded)\n"
        f"read {format_bytes(s.bytes_read)}, wrote {format_bytes(s.bytes_written)} in {s.seconds:.2f} s "
        f"({s.gb_per_s:.2f} GB/s), peak memory {format_bytes(s.peak_memory_bytes)}, {s.backend} on {s.device}"
    )
    if getattr(s, "replaced", None):
        text += f"\nreplaced {len(s.replaced)} file{'s' * (len(s.replaced) != 1)} of OUT: {', '.join(s.replaced)}"
    return text
