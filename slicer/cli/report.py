"""Human-readable plan and summary (the CLI prints them; the library never prints)."""
from __future__ import annotations

import json

from ..plan.build import Plan, format_bytes  # noqa: F401 - format_bytes: the CLI's formatters, in one module


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
    if plan.scores:
        sha = plan.scores.get("sha256")
        lines.append(f"scores    {plan.scores.get('source')}" + (f" (sha256 {sha[:16]}...)" if sha else ""))
    if plan.quantization:
        lines.append(f"quantized {_quantization(plan.quantization)}")
    changes = plan.student.get("config_changes") or {}
    if changes:
        lines.append(f"config    {plan.student.get('architecture', '')}, attention={o.attention}: teacher -> student")
        lines += [f"  {key}: {json.dumps(a)} -> {json.dumps(b)}" for key, (a, b) in changes.items()]
    lines.append(f"axes      {_axes_summary(plan)}")
    for prefix, layers in plan.layer_maps.items():
        lines.append(f"layers    {prefix}: {len(layers)} of {plan.teacher_depths[prefix]}, teacher layers {layers}")
    lines += _experts_lines(plan)
    lines += [
        f"tensors   {len(plan.jobs)} written, {len(plan.skipped)} teacher tensors unused, {len(plan.excluded)} excluded",
        f"read      {format_bytes(plan.bytes_to_read)} of {format_bytes(t.total_bytes)}"
        + (f" (remote; {format_bytes(t.source.bytes_fetched)} fetched so far: headers)" if t.source.fetches else ""),
        f"write     {format_bytes(plan.bytes_to_write)} in {len(plan.shards)} shard{'s' * (len(plan.shards) != 1)}",
    ]
    for shard in plan.shards:
        lines.append(f"  {shard.filename}  {format_bytes(shard.size)}  {len(shard.jobs)} tensors")
    width = max(len(j.name) for j in plan.jobs)
    lines.append("")
    lines.append(f"{'student tensor':<{width}}  {'teacher shape':>20} -> {'student shape':<20} dtype   source")
    for j in plan.jobs:
        source = "" if j.source.name == j.name else j.source.name
        stored = "MXFP4" if j.dequant is not None and j.dequant.format == "mxfp4" else j.source.dtype
        dtype = j.dtype if j.dtype == stored else f"{stored}->{j.dtype}"
        lines.append(f"{j.name:<{width}}  {_shape(j.source.shape):>20} -> {_shape(j.shape):<20} {dtype:<7} {source}")
    return "\n".join(lines)


def _experts_lines(plan: Plan) -> list[str]:
    """The experts each MoE block keeps (chosen by --method, never by the layer selection)."""
    from ..axes import axis, compose

    def leaf(ax):
        return plan.index_sets[plan.leaf_keys[ax.name]].indices()

    kept: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for name, ax in plan.axes.axes.items():
        if ax.kind != "experts":
            continue
        try:
            members = tuple(compose(plan.axes, axis(name), leaf))
        except KeyError:  # the inconsistent ablation: no one index set per axis
            return []
        kept.setdefault((ax.t, members), []).append(name.rsplit(":", 1)[0])
    lines = []
    for (t, members), blocks in kept.items():
        where = blocks[0] if len(blocks) == 1 else f"{len(blocks)} MoE blocks ({blocks[0]}, ...)"
        shown = list(members[:16]) + (["..."] if len(members) > 16 else [])
        lines.append(f"experts   {where}: {len(members)} of {t}, teacher experts [{', '.join(map(str, shown))}]")
    return lines


def _axes_summary(plan: Plan) -> str:
    """What was bound, by kind: 'bound by transformers: hidden 4096 -> 2048, 16 x ffn 11008 -> 5504, ...'."""
    kinds: dict[tuple[str, int, int], int] = {}
    for ax in plan.axes.axes.values():
        if ax.t != ax.s or ax.kind != "flat":
            kinds[(ax.kind, ax.t, ax.s)] = kinds.get((ax.kind, ax.t, ax.s), 0) + 1
    parts = [f"{n} x {kind} {t} -> {s}" if n > 1 else f"{kind} {t} -> {s}"
             for (kind, t, s), n in sorted(kinds.items(), key=lambda kv: (kv[0][0] == "flat", kv[0]))]
    how = {"flat": "flat (every dimension by its sizes, the paper's rule)",
           "transformers": "by the model's structure (transformers)"}.get(plan.binding, plan.binding)
    return f"{how}: " + (", ".join(parts[:12]) + (f", ... ({len(parts)} kinds)" if len(parts) > 12 else "")
                         if parts else "nothing shrinks")


def _quantization(q: dict) -> str:
    if q["mode"] == "dequantize":
        return (f"{q['scheme']}: {q['dequantized']} weights dequantized to {q['dtype']} in the gather (every value "
                "times its block's scale); no scales written, quantization_config removed from the student's config")
    blocked = q.get("blocked_axes") or {}
    if not blocked:
        return f"{q['scheme']}: no quantized weight changes shape within its blocks; weights and scales copied bit for bit"
    axes = ", ".join(f"{name} = {name}:blocks * {n}" for name, n in blocked.items())
    return (f"{q['scheme']}: whole blocks, bits exact, each scale selected by its weight's block index sets; "
            f"axes selected in whole blocks (in every tensor bound to them): {axes}")


def format_summary(s) -> str:
    if getattr(s, "unchanged", False):
        return f"nothing to do: {s.out} already holds this student (same teacher, options and layout); nothing was written"
    fetched = ""
    if getattr(s, "bytes_fetched", None) is not None:  # a remote teacher
        fetched = f"\nfetched {format_bytes(s.bytes_fetched)} over the network, of the teacher's {format_bytes(s.teacher_bytes)}"
        net = getattr(s, "network", None)
        if net:
            fetched += f" ({net['requests']} requests, {net['resolves']} resolves"
            if net.get("rate_limit_waits"):
                n = net["rate_limit_waits"]
                fetched += f", rate limited {n} time{'s' * (n != 1)}: waited {net['rate_limit_wait_s']:.0f} s"
            fetched += ")"
    text = (
        f"wrote {s.tensors_written} tensors in {s.shards} shard{'s' * (s.shards != 1)} to {s.out} "
        f"({s.tensors_skipped} teacher tensors unused, {s.tensors_excluded} excluded)\n"
        f"read {format_bytes(s.bytes_read)}, wrote {format_bytes(s.bytes_written)} in {s.seconds:.2f} s "
        f"({s.gb_per_s:.2f} GB/s), peak memory {format_bytes(s.peak_memory_bytes)}, {s.backend} on {s.device}"
        + fetched
    )
    rot = getattr(s, "rotation", None)
    if rot and rot.get("engine"):  # --hidden rotate: the engine's products beside torch.matmul alone
        e = rot["engine"]
        alone = e.get("matmul_alone_gflop_per_s")
        text += (f"\nhidden axis rotated {rot['teacher_hidden']} -> {rot['student_hidden']}: {e['gflop']:.1f} GFLOP of "
                 f"torch.matmul in {e['matmul_seconds']:.2f} s ({e['gflop_per_s']:.1f} GFLOP/s; torch.matmul alone on "
                 f"the same shapes: {alone if alone is not None else '?'} GFLOP/s); statistics "
                 f"{rot['statistics_seconds']:.1f} s before the engine (not in the time above)")
    fix = getattr(s, "corrections", None)
    if fix:  # --correct: the refit after the engine
        text += (f"\ncorrected ({','.join(fix['which'])}, alpha {fix['alpha']:g}): {len(fix['tensors'])} tensors "
                 f"refitted on {fix['calibration'].get('tokens', '?')} calibration tokens in {fix['seconds']:.1f} s "
                 f"(not in the time above), peak memory {format_bytes(fix['peak_anon_bytes'])}")
    if getattr(s, "replaced", None):
        text += f"\nreplaced {len(s.replaced)} file{'s' * (len(s.replaced) != 1)} of OUT: {', '.join(s.replaced)}"
    return text
