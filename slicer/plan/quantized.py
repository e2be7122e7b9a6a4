"""Quantized teachers: FP8 weights with block scales, MXFP4 packed experts. Pure: headers and config only.

The semantics are transformers' own (``integrations/finegrained_fp8.py``, ``integrations/mxfp4.py``):

FP8 (``quantization_config.quant_method: "fp8"``; DeepSeek-V3, Qwen3-FP8): a weight ``W`` [..., R, C] stored
as F8_E4M3 comes with ``W_scale_inv`` [..., ceil(R/b0), ceil(C/b1)], ``weight_block_size: [b0, b1]``
(default [128, 128]; null: one scale for the whole tensor). Element (r, c) is
``float32(W[r, c]) * float32(scale_inv[r // b0, c // b1])``, cast once to the output dtype
(``Fp8Dequantize._dequantize_one``): the scale is multiplied, and the last block of a dimension may be
partial (``FP8Linear`` allocates ceil-sized scales and the kernels index blocks by ``r // b0``). A static
``activation_scheme`` adds a per-tensor ``activation_scale`` beside each weight.

MXFP4 (``quant_method: "mxfp4"``; gpt-oss): a packed expert tensor ``X`` is stored as ``X_blocks`` U8
[E, R, G, 16] (G groups of 32 FP4 E2M1 values, two per byte, the low nibble first) and ``X_scales`` U8
[E, R, G] (E8M0 exponents: a factor 2 ** (byte - 127)). The model's parameter ``X`` is the dequantized
[E, R, G*32] with its last two dimensions swapped, [E, G*32, R] (``convert_moe_packed_tensors``); the plan
sees that *logical* tensor, the gather reads the packed bytes.

Two honest ways to shrink an FP8 teacher (``--quantized``), one for MXFP4:
- ``blocks`` (with ``--dtype keep``): every leaf axis that spans a dimension of an FP8 weight becomes
  ``A = A:blocks * n`` (n its block size), so every tensor bound to the axis (norms and embeddings too)
  keeps whole blocks by construction; the FP8 bits are copied and each scale dimension takes the block
  index set of its weight's dimension (a layout of the same axes, checked block by block against the
  weight's indices). A weight dimension that cannot be whole blocks (an axis whose sizes are not multiples
  of the block, heads of 192 rows in 128-blocks) is refused.
- ``dequantize`` (implied by a float ``--dtype``): FP8 and MXFP4 weights are dequantized in the gather,
  any selection is then exact on the dequantized values, and the student is a plain checkpoint (no
  scales, no ``quantization_config``).
With ``--dtype keep`` and no option, FP8 weights that keep their shape are copied with their scales, and
an FP8 weight the student changes is refused with one line naming both options. MXFP4 is copied packed
where only whole experts are selected, else it needs a float dtype.

Long on purpose: FP8 block scales and MXFP4 packed experts, their axes, their config records and their refusals are one format's rules, read from headers alone.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..axes import Axis, AxisTable, Layout, axis, flat_axis, format_layout
from ..errors import SlicerError
from ..io.format import TensorInfo, is_json_int

CHOICES = ("blocks", "dequantize")
FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
SCALE_DTYPES = ("F32", "BF16", "F16", "F8_E8M0", "U8")  # U8: E8M0 exponents, as transformers reads them
SCALE_SUFFIX = "_scale_inv"
MX_GROUP = 32  # FP4 values per E8M0 scale
MX_BYTES = MX_GROUP // 2
FLOAT_HINT = "--dtype bf16 (or fp16, fp32)"


@dataclass(frozen=True)
class Scheme:
    """The teacher's quantization_config, as slicer understands it."""

    method: str  # "fp8" or "mxfp4"
    block: tuple[int, int] | None  # fp8: rows x columns per scale; None: one scale for the whole tensor
    config: dict  # the quantization_config as written (kept in a student of whole blocks)
    where: str  # the config.json it was read from

    def describe(self) -> str:
        if self.method == "mxfp4":
            return f"MXFP4 ({MX_GROUP}-value groups, E8M0 scales)"
        return f"FP8 with {self.block[0]}x{self.block[1]} block scales" if self.block else "FP8 with per-tensor scales"


@dataclass(frozen=True)
class Dequant:
    """How a job's values are made from the teacher's stored tensors (the engine's dequantizing gather)."""

    format: str  # "fp8" or "mxfp4"
    scale: TensorInfo  # W_scale_inv (fp8) or X_scales (mxfp4)
    block: tuple[int, int] | None = None  # fp8 only
    packed: TensorInfo | None = None  # mxfp4: X_blocks (the job's source is the logical tensor)

    @property
    def reads(self) -> tuple[str, ...]:
        """Teacher tensors read besides the job's source."""
        return (self.scale.name,) + ((self.packed.name,) if self.packed is not None else ())

    @property
    def stored_itemsize(self) -> float:
        """Teacher bytes per logical element (for the bytes-read figures)."""
        return 0.5 if self.format == "mxfp4" else 1.0

    def describe(self) -> dict:
        if self.format == "mxfp4":
            return {"format": "mxfp4", "blocks": self.packed.name, "scales": self.scale.name}
        return {"format": "fp8", "scale": self.scale.name, "block": list(self.block) if self.block else None}


@dataclass(frozen=True)
class Fp8Weight:
    weight: TensorInfo
    scale: TensorInfo
    activation: TensorInfo | None  # static activation scheme: one activation scale per weight


@dataclass(frozen=True)
class PackedWeight:
    blocks: TensorInfo
    scales: TensorInfo
    logical: TensorInfo  # the model's parameter as the plan sees it: [E, G*32, R], dequantized values


def scale_name(weight: str) -> str:
    """``X.weight`` -> ``X.weight_scale_inv``, ``gate_up_proj`` -> ``gate_up_proj_scale_inv`` (Fp8Quantize)."""
    return weight + SCALE_SUFFIX


def activation_name(weight: str) -> str:
    return weight[: -len(".weight")] + ".activation_scale" if weight.endswith(".weight") else weight + "_activation_scale"


# ---------------------------------------------------------------------------------------------- config

def read_scheme(config: dict | None, where: str) -> Scheme | None:
    """The quantization a teacher's config.json declares (None: none); unknown methods are refused."""
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    if qc is None:
        return None
    if not isinstance(qc, dict):
        raise SlicerError(f"{where}: quantization_config is not an object")
    method = qc.get("quant_method")
    if method == "fp8":
        block = qc.get("weight_block_size", [128, 128])  # FineGrainedFP8Config's default
        if block is not None and not (isinstance(block, list) and len(block) == 2
                                      and all(is_json_int(b) and b > 0 for b in block)):
            raise SlicerError(f"{where}: quantization_config.weight_block_size {block!r} is not two positive integers")
        if qc.get("expert_dtype", "fp8") != "fp8":
            raise SlicerError(f"{where}: quantization_config.expert_dtype {qc.get('expert_dtype')!r} (packed FP4 experts) "
                              "is not supported; slicer reads FP8 block-scaled weights")
        return Scheme("fp8", tuple(block) if block else None, dict(qc), where)
    if method == "mxfp4":
        return Scheme("mxfp4", None, dict(qc), where)
    raise SlicerError(f"{where}: quantization_config.quant_method {method!r} is not supported (slicer reads fp8 "
                      "with block scales and mxfp4); dequantize the teacher first")


def teacher_scheme(teacher) -> Scheme | None:
    """The scheme of a teacher Checkpoint's config.json, if it has one (the only file read here).

    Read only where the teacher holds quantized weights' companions (block scales, packed
    blocks): a plain teacher's config is not fetched (a remote plan reads headers only)."""
    if not any(name.endswith(("_scale_inv", "_blocks", "_scales")) for name in teacher.tensors):
        return None
    path: Path | None = teacher.config_path()
    if path is None:
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None  # the config route reports an unreadable config; the template route never needed it
    return read_scheme(config, str(path))


# ---------------------------------------------------------------------------------------------- the run

def prepare(tensors: dict[str, TensorInfo], scheme: Scheme | None, options, student: list, *,
            flat: bool) -> "Quantized | None":
    """The run's view of a quantized teacher, or None for a plain one (``student``: StudentTensors)."""
    fp8, packed = _find(tensors)
    if options.quantized not in (None, *CHOICES):
        raise SlicerError(f"unknown --quantized {options.quantized!r} (choose from {', '.join(CHOICES)})")
    if options.quantized == "blocks" and options.dtype != "keep":
        raise SlicerError(f"--quantized blocks keeps the teacher's quantized bits and scales; --dtype {options.dtype} "
                          "dequantizes: choose one")
    if options.quantized == "dequantize" and options.dtype == "keep":
        raise SlicerError(f"--quantized dequantize needs the float type to write: add {FLOAT_HINT}")
    if not fp8 and not packed:
        return None
    return Quantized(tensors, scheme, options, student, fp8, packed, flat)


def _find(tensors: dict[str, TensorInfo]) -> tuple[dict[str, Fp8Weight], dict[str, PackedWeight]]:
    fp8: dict[str, Fp8Weight] = {}
    packed: dict[str, PackedWeight] = {}
    for name, info in tensors.items():
        if name.endswith(SCALE_SUFFIX) and name[: -len(SCALE_SUFFIX)] in tensors:
            weight = tensors[name[: -len(SCALE_SUFFIX)]]
            fp8[weight.name] = Fp8Weight(weight, info, tensors.get(activation_name(weight.name)))
        elif name.endswith("_blocks") and name[: -len("_blocks")] + "_scales" in tensors:
            base = name[: -len("_blocks")]
            scales = tensors[base + "_scales"]
            packed[base] = PackedWeight(info, scales, logical_tensor(info, scales))
    return fp8, packed


def logical_tensor(blocks: TensorInfo, scales: TensorInfo) -> TensorInfo:
    """The dequantized parameter an MXFP4 pair stands for, as a (virtual) teacher tensor."""
    where = f"tensor {blocks.name!r}"
    if blocks.dtype != "U8" or scales.dtype != "U8":
        raise SlicerError(f"{where}: MXFP4 blocks and scales are U8, not {blocks.dtype} and {scales.dtype}")
    if len(blocks.shape) != 4 or blocks.shape[-1] != MX_BYTES or tuple(scales.shape) != tuple(blocks.shape[:-1]):
        raise SlicerError(f"{where}: MXFP4 blocks {list(blocks.shape)} with scales {list(scales.shape)} are not "
                          f"[experts, rows, groups, {MX_BYTES}] with [experts, rows, groups] as transformers packs them")
    e, r, g, _ = blocks.shape
    name = blocks.name[: -len("_blocks")]
    return TensorInfo(name, "F32", (e, g * MX_GROUP, r), blocks.path, blocks.offset, blocks.nbytes + scales.nbytes)


class Quantized:
    """What a quantized teacher changes in one plan (called by ``plan.build_plan`` at four points):
    the teacher and student tensors the plan maps and binds (scales and packed pairs folded into their
    weights), the layer kinds, the axes an FP8 weight needs in whole blocks, and the jobs: dequantized
    weights, or whole blocks with their scales."""

    def __init__(self, tensors, scheme, options, student, fp8, packed, flat: bool):
        self.scheme = scheme
        self.fp8: dict[str, Fp8Weight] = fp8
        self.packed: dict[str, PackedWeight] = packed
        self.flat = flat
        self.dequantize = options.dtype != "keep"
        self.explicit = options.quantized is not None
        self.blocked: dict[str, int] = {}  # axis -> the block size it is now selected in
        self.wrote_quantized = False  # some FP8 / MXFP4 bits are in the student (its config keeps quantization_config)
        if scheme is not None and scheme.method == "fp8" and packed and not fp8:
            raise SlicerError(f"{scheme.where} says quant_method fp8, but the teacher's tensors are MXFP4 pairs "
                              f"({next(iter(packed))}_blocks)")
        companions = set()
        for w in fp8.values():
            companions |= {w.scale.name} | ({w.activation.name} if w.activation else set())
        for p in packed.values():
            companions |= {p.blocks.name, p.scales.name}
        # The plan maps and binds the weights alone: a scale follows its weight, it is no tensor of its own.
        self.teacher: dict[str, TensorInfo] = {}
        for name, info in tensors.items():
            if name.endswith("_blocks") and name[: -len("_blocks")] in packed:
                p = packed[name[: -len("_blocks")]]
                self.teacher[p.logical.name] = p.logical
            elif name not in companions:
                self.teacher[name] = info
        self.given: dict[str, tuple[int, ...]] = {}  # the student spec's own companion tensors (a template's)
        self.student = self._student(student)

    # ------------------------------------------------------------------ before mapping

    def _student(self, student: list) -> list:
        """The student spec with its scales folded into their weights too (a quantized template's)."""
        names = {t.name for t in student}
        out = []
        for t in student:
            base = t.name[: -len(SCALE_SUFFIX)] if t.name.endswith(SCALE_SUFFIX) else None
            if base is not None and base in names or any(t.name == activation_name(n) for n in _weights_named(t.name, names)):
                self.given[t.name] = t.shape
                continue
            if t.name.endswith("_scales") and t.name[: -len("_scales")] + "_blocks" in names:
                self.given[t.name] = t.shape
                continue
            if t.name.endswith("_blocks") and t.name[: -len("_blocks")] + "_scales" in names and len(t.shape) == 4:
                self.given[t.name] = t.shape
                e, r, g, _ = t.shape
                t = replace(t, name=t.name[: -len("_blocks")], shape=(e, g * MX_GROUP, r),
                            source=t.source[: -len("_blocks")] if t.source else None)
            out.append(t)
        return out

    def kinds(self, kinds: dict) -> dict:
        """Layer kinds with companions folded the same way on both sides (a student built from a config
        has no scales, the teacher's files have them)."""
        return {p: ([fold_kind(k) for k in t], [fold_kind(k) for k in s]) for p, (t, s) in kinds.items()}

    # ------------------------------------------------------------------ after binding

    def block_axes(self, table: AxisTable, bound: Sequence[tuple]) -> None:
        """Whole blocks (``--quantized blocks``, or nothing to do): every leaf axis that is a whole
        dimension of an FP8 weight and changes becomes ``A:blocks * n``. ``bound``: (student tensor,
        teacher source, layouts) of every tensor, before any index set is composed."""
        if self.dequantize:
            return
        need: dict[str, tuple[int, str, int]] = {}
        for tensor, source, layouts in bound:
            w = self.fp8.get(source.name)
            if w is None or tuple(tensor.shape[-2:]) == tuple(source.shape[-2:]):
                continue  # whole matrices (whole experts of a packed tensor) keep whole blocks
            if self.flat:
                dequantize = f", or {FLOAT_HINT} to dequantize" if self.scheme is not None else ""
                raise SlicerError(f"tensor {tensor.name!r}: teacher tensor {source.name!r} is {self._describe()}; flat "
                                  "selection cannot tell which axes to keep in whole blocks: pass the teacher's config "
                                  f"(--student-config / --set, or a config.json beside the template){dequantize}")
            if not self.explicit:
                raise SlicerError(f"tensor {tensor.name!r}: teacher tensor {source.name!r} is {self._describe()} and "
                                  f"the student changes it ({list(source.shape)} -> {list(tensor.shape)}); pass "
                                  "--quantized blocks to keep whole blocks (bits exact, scales selected with them) "
                                  f"or {FLOAT_HINT} to dequantize")
            block = self._block(w)
            if block is None:  # one scale for the whole tensor: any selection keeps it right
                continue
            rank = len(source.shape)
            for d, n in ((rank - 2, block[0]), (rank - 1, block[1])):
                layout = layouts[d]
                if len(layout) == 1 and len(layout[0]) == 1 and isinstance(layout[0][0], str):
                    ax = table[layout[0][0]]
                    if ax.parts is None and ax.t != ax.s:
                        before = need.get(ax.name, (1, tensor.name, d))[0]
                        need[ax.name] = (math.lcm(before, n), tensor.name, d)
        for name, (n, tensor, d) in need.items():
            ax = table[name]
            if ax.t % n or ax.s % n:
                raise SlicerError(f"tensor {tensor!r} dimension {d}: axis {name} [{ax.t} -> {ax.s}] cannot be kept in "
                                  f"whole {n}-element quantization blocks; choose a multiple of {n}, keep its size, or "
                                  f"pass {FLOAT_HINT} to dequantize")
            leaf = table.add(Axis(f"{name}:blocks", "blocks", ax.t // n, ax.s // n))
            table.refine(name, ((leaf, n),))
            self.blocked[name] = n

    # ------------------------------------------------------------------ the jobs

    def finish(self, jobs: list, table: AxisTable, chooser) -> list:
        """Dequantize the quantized weights, or give each its companions (whole blocks, packed experts)."""
        out = []
        for job in jobs:
            w = self.fp8.get(job.source.name)
            p = self.packed.get(job.source.name) if w is None else None
            if w is not None:
                out += self._fp8_jobs(job, w, table, chooser)
            elif p is not None:
                out += self._packed_jobs(job, p, table, chooser)
            else:
                out.append(job)
        for name, shape in self.given.items():
            made = next((j for j in out if j.name == name), None)
            if made is None:
                raise SlicerError(f"student tensor {name!r} is a quantization companion slicer does not write here "
                                  f"({'the weights are dequantized' if self.dequantize else 'no quantized weight beside it'})")
            if tuple(made.shape) != tuple(shape):
                raise SlicerError(f"student tensor {name!r} is {list(shape)}, but its weight's selection needs "
                                  f"{list(made.shape)}")
        return out

    def _fp8_jobs(self, job, w: Fp8Weight, table: AxisTable, chooser) -> list:
        where = f"tensor {job.name!r}"
        if w.weight.dtype not in FP8_DTYPES:
            raise SlicerError(f"{where}: teacher tensor {w.weight.name!r} has block scales but is {w.weight.dtype}; "
                              f"slicer reads FP8 weights ({', '.join(FP8_DTYPES)})")
        if w.scale.dtype not in SCALE_DTYPES:
            raise SlicerError(f"{where}: scale {w.scale.name!r} is {w.scale.dtype}; slicer reads {', '.join(SCALE_DTYPES)}")
        changes = tuple(job.shape) != tuple(job.source.shape)
        if self.dequantize or changes:
            self._check_scale(w)
        if self.dequantize:
            return [replace(job, dequant=Dequant("fp8", w.scale, self._block(w)))]
        self.wrote_quantized = True
        rank = len(job.source.shape)

        def whole(d: int, n: int):
            layout = axis(table.add(flat_axis(n, n)))
            return n, chooser.dim(table, layout, f"{job.name}/{d}"), layout

        if not changes or math.prod(w.scale.shape) == 1:  # kept whole, or one scale for the whole tensor
            dims = [whole(d, n) for d, n in enumerate(w.scale.shape)]
        else:
            block = self._block(w)
            dims = list(zip(job.shape[:-2], job.index[:-2], job.layouts[:-2]))  # experts of a packed tensor
            for d, n in ((rank - 2, None if block is None else block[0]), (rank - 1, None if block is None else block[1])):
                if n is None:  # per-tensor scales of a packed tensor: [*lead, 1, 1]
                    dims.append(whole(d, 1))
                    continue
                t, s = job.source.shape[d], job.shape[d]
                layout = _divide(table, job.layouts[d], n)
                members = _block_members(job.index[d].indices(), n, t)
                ix = chooser.dim(table, layout, f"{job.name}/{d}") if layout is not None else None
                if layout is None or members is None or ix.indices() != members:
                    raise SlicerError(f"{where} dimension {d} [{t} -> {s}] ({format_layout(job.layouts[d])}) does not "
                                      f"keep whole {n}-element quantization blocks of {w.weight.name!r}; keep whole "
                                      f"blocks (e.g. whole heads of a multiple of {n}) or pass {FLOAT_HINT} to dequantize")
                dims.append((-(-s // n), ix, layout))
        sshape, index, layouts = (tuple(x) for x in zip(*dims)) if dims else ((), (), ())
        out = [job, replace(job, name=scale_name(job.name), source=w.scale, shape=sshape, dtype=w.scale.dtype,
                            index=index, layouts=layouts)]
        if w.activation is not None:
            lead = len(w.activation.shape)
            if tuple(w.activation.shape) != tuple(job.source.shape[:lead]) or lead > rank - 2:
                raise SlicerError(f"{where}: activation scale {w.activation.name!r} {list(w.activation.shape)} does not "
                                  f"follow the weight's leading dimensions {list(job.source.shape[:-2])}")
            out.append(replace(job, name=activation_name(job.name), source=w.activation, shape=tuple(job.shape[:lead]),
                               dtype=w.activation.dtype, index=tuple(job.index[:lead]), layouts=tuple(job.layouts[:lead])))
        return out

    def _packed_jobs(self, job, p: PackedWeight, table: AxisTable, chooser) -> list:
        if self.dequantize:
            return [replace(job, dequant=Dequant("mxfp4", p.scales, packed=p.blocks))]
        if tuple(job.shape[1:]) != tuple(job.source.shape[1:]):
            raise SlicerError(f"tensor {job.name!r}: teacher tensor {p.blocks.name!r} is MXFP4 (32 four-bit values per "
                              f"group, two per byte) and the student changes it ({list(job.source.shape)} -> "
                              f"{list(job.shape)}); packed values cannot be selected element by element: pass "
                              f"{FLOAT_HINT} to dequantize")
        self.wrote_quantized = True
        base = job.name

        def whole(d: int, n: int):
            layout = axis(table.add(flat_axis(n, n)))
            return layout, chooser.dim(table, layout, f"{base}/{d}")

        rest = [whole(d + 1, n) for d, n in enumerate(p.blocks.shape[1:])]
        blocks = replace(job, name=base + "_blocks", source=p.blocks, shape=(job.shape[0], *p.blocks.shape[1:]),
                         dtype="U8", index=(job.index[0], *(ix for _, ix in rest)),
                         layouts=(job.layouts[0], *(lay for lay, _ in rest)))
        scales = replace(blocks, name=base + "_scales", source=p.scales, shape=blocks.shape[:-1],
                         index=blocks.index[:-1], layouts=blocks.layouts[:-1])
        return [blocks, scales]

    # ------------------------------------------------------------------ helpers

    def _block(self, w: Fp8Weight) -> tuple[int, int] | None:
        if self.scheme is None or self.scheme.method != "fp8":
            raise SlicerError(f"teacher tensor {w.weight.name!r} has block scales ({w.scale.name!r}) but the teacher's "
                              "config.json declares no fp8 quantization_config, so their block size is unknown; add "
                              "the teacher's config.json")
        return self.scheme.block

    def _check_scale(self, w: Fp8Weight) -> None:
        block = self._block(w)
        shape = tuple(w.weight.shape)
        if len(shape) < 2:
            raise SlicerError(f"tensor {w.weight.name!r} {list(shape)} has block scales but is not a matrix")
        if block is None:
            want = [(), (1,), (*shape[:-2], 1, 1)]
        else:
            want = [(*shape[:-2], -(-shape[-2] // block[0]), -(-shape[-1] // block[1]))]
        if tuple(w.scale.shape) not in want:
            raise SlicerError(f"tensor {w.scale.name!r} is {list(w.scale.shape)}, but the scales of "
                              f"{w.weight.name!r} {list(shape)} in {self._describe()} are {list(want[-1])}")

    def _method(self) -> str:
        if self.scheme is not None:
            return self.scheme.method
        return "mxfp4" if self.packed and not self.fp8 else "fp8"

    def _describe(self) -> str:
        if self.scheme is not None:
            return self.scheme.describe()
        return Scheme("mxfp4", None, {}, "").describe() if self._method() == "mxfp4" else "FP8 with block scales"

    def used(self, jobs: Iterable) -> set[str]:
        """Teacher tensors read by the jobs besides their sources."""
        return {n for j in jobs if j.dequant is not None for n in j.dequant.reads}

    def describe(self, jobs: Sequence) -> dict:
        """The manifest's ``quantization`` entry."""
        out: dict = {"method": self._method(),
                     "scheme": self._describe(),
                     "mode": "dequantize" if self.dequantize else "blocks",
                     "quantized_weights": len(self.fp8) + len(self.packed)}
        if self.scheme is not None and self.scheme.block is not None:
            out["block"] = list(self.scheme.block)
        if self.scheme is not None:
            out["teacher_quantization_config"] = self.scheme.config
        if self.dequantize:
            out["dequantized"] = sum(1 for j in jobs if j.dequant is not None)
            out["dtype"] = next((j.dtype for j in jobs if j.dequant is not None), None)
        else:
            out["blocked_axes"] = dict(sorted(self.blocked.items()))
        out["config_quantization"] = "kept" if self.wrote_quantized else "removed"
        return out


def _weights_named(name: str, names: set[str]) -> list[str]:
    """Weights whose activation scale ``name`` would be."""
    if name.endswith(".activation_scale"):
        return [w for w in (name[: -len(".activation_scale")] + ".weight",) if w in names]
    if name.endswith("_activation_scale"):
        return [w for w in (name[: -len("_activation_scale")],) if w in names]
    return []


def fold_kind(kind: str) -> str:
    """A layer kind (slicer.hf.bindings.view.layer_kinds) with quantization companions folded into their weights."""
    names = kind.split("|") if kind else []
    have = set(names)
    out = set()
    for n in names:
        if n.endswith(SCALE_SUFFIX) and n[: -len(SCALE_SUFFIX)] in have:
            continue
        if (n.endswith(".activation_scale") and n[: -len(".activation_scale")] + ".weight" in have) or \
                (n.endswith("_activation_scale") and n[: -len("_activation_scale")] in have):
            continue
        if n.endswith("_scales") and n[: -len("_scales")] + "_blocks" in have:
            continue
        if n.endswith("_blocks") and n[: -len("_blocks")] + "_scales" in have:
            n = n[: -len("_blocks")]
        out.add(n)
    return "|".join(sorted(out))


# ---------------------------------------------------------------------------------------------- blocks

def _divide(table: AxisTable, layout: Layout, n: int) -> Layout | None:
    """The layout of a dimension's blocks of ``n`` consecutive members (its scale's dimension), or None
    where a block would not be whole members: the same axes, the innermost ``n`` members folded away.

    Every segment but the last must hold whole blocks; the last may end in a partial block when it is
    kept whole (DeepSeek's [kv-lora 512 | rope 64] in 128-blocks: ``kv-lora:blocks | 1``)."""
    out = []
    for k, seg in enumerate(layout):
        size = math.prod(f if isinstance(f, int) else table[f].t for f in seg)
        if size % n == 0:
            folded = _divide_segment(table, seg, n)
            if folded is None:
                return None
            out.append(folded)
        elif k == len(layout) - 1 and all(isinstance(f, int) or table[f].t == table[f].s for f in seg):
            out.append((-(-size // n),))
        else:
            return None
    return tuple(out)


def _divide_segment(table: AxisTable, seg: tuple, n: int) -> tuple | None:
    factors = list(seg)
    r = n
    while r > 1:
        if not factors:
            return None
        f = factors.pop()
        ax = None if isinstance(f, int) else table[f]
        if ax is not None and ax.t != ax.s:  # a changing axis: only its own whole parts can be folded
            if ax.parts is None or len(ax.parts) != 1:
                return None
            factors += list(ax.parts[0])
            continue
        size = f if ax is None else ax.t  # kept whole
        if size % r == 0:
            if size // r > 1 or not factors:
                factors.append(size // r)
            r = 1
        elif r % size == 0:
            r //= size
        else:
            return None
    return tuple(factors) if factors else (1,)


def _block_members(indices: list[int], n: int, t: int) -> list[int] | None:
    """The teacher blocks a dimension's kept indices are, block by block, or None where they are not whole
    blocks (the proof that no weight row is paired with another block's scale)."""
    out = []
    for j in range(0, len(indices), n):
        first = indices[j]
        if first % n or indices[j:j + n] != list(range(first, min(first + n, t))):
            return None
        out.append(first // n)
    return out


def student_config(files: dict[str, bytes], quantization: dict) -> dict[str, bytes]:
    """The student's config.json as the written bits need it (``quantization``: the plan's): no
    ``quantization_config`` where every quantized weight was dequantized, the teacher's where quantized
    bits were kept."""
    raw = files.get("config.json")
    if raw is None or not quantization:
        return files
    try:
        config = json.loads(raw)
    except ValueError:
        return files
    if not isinstance(config, dict):
        return files
    kept = quantization["config_quantization"] == "kept"
    want = quantization.get("teacher_quantization_config") if kept else None
    if config.get("quantization_config") == want or (kept and want is None):  # kept, but no teacher config to copy
        return files
    if want is None:
        config.pop("quantization_config")
    else:
        config["quantization_config"] = want
    return {**files, "config.json": (json.dumps(config, indent=2) + "\n").encode()}
