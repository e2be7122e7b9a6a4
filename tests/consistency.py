"""An independent consistency checker for students (imports nothing from slicer).

It proves from the values themselves that every kept teacher neuron / head / expert / block
sits at the same place in every tensor that touches it:

1. ``coded_teacher`` gives every element of every teacher parameter a distinct value (a code),
   so each student element says which teacher tensor and which teacher element it came from.
2. ``decode`` turns a student folder back into, per student tensor, its teacher tensor and
   the kept teacher index of each dimension -- and fails if a tensor is not a pure selection
   ``teacher[ix_(I_0, ..., I_n)]`` (a row mixing two teacher rows is caught here).
3. ``check`` reads those index lists through a *spec* written in the test from the model's
   documented structure (regex on the teacher tensor name -> what each dimension holds) and
   fails unless every axis instance keeps the same members everywhere.

Spec language, per dimension of the teacher tensor (``{1}`` is a regex group of the name):
    "hidden"                      one axis
    "L{1}.kv * L{1}.grp * L{1}.hd"  a row-major product (q rows: kv heads x group x head dim)
    "L{1}.ffn | L{1}.ffn"         a concatenation (fused [gate | up])
    "L{1}.ffn * 2"                an int is a block kept whole (interleaved gate/up pairs)
    "L{1}.kv * (L{1}.grp | 1 | 1) * L{1}.hd"
                                  a parenthesized group is one factor whose members follow the
                                  inner layout (Falcon's [q heads of the group, k, v] per kv group;
                                  a head's rotary pairs then its unrotated dims); a segment of ints
                                  only is a block that must be kept whole
    "*"                           not checked
Sizes of axes come from ``sizes``: {kind: teacher size}, the kind being the axis name's last
dotted part ("L3.kv" -> "kv"). ``components`` bind an integer in the *name* to an axis (the
N of ``experts.N``): (regex on the teacher name, group of N, axis template).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

MAX_EXACT = {torch.float32: 2**24, torch.float64: 2**53}


# --------------------------------------------------------------------------- 1. a coded teacher

def coded_teacher(model, dtype=torch.float32) -> None:
    """Give every element of every parameter (and persistent float buffer) a distinct value."""
    saved = set(model.state_dict())  # persistent buffers too (e.g. DeepSeek's e_score_correction_bias)
    tensors = [t for _, t in model.named_parameters()]
    tensors += [t for n, t in model.named_buffers() if n in saved and t.is_floating_point()]
    total = sum(t.numel() for t in tensors)
    if total >= MAX_EXACT[dtype]:
        raise ValueError(f"{total} elements do not fit exact codes in {dtype}; use a smaller teacher or float64")
    base = 1  # 0 is never a code: an untouched (zero) element cannot pass for a selected one
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.arange(base, base + t.numel(), dtype=torch.float64).view(t.shape).to(t.dtype))
            base += t.numel()


def read_folder(folder: Path) -> dict[str, torch.Tensor]:
    state = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        state |= load_file(f)
    return state


# --------------------------------------------------------------------------- 2. decode a student

@dataclass
class Decoded:
    source: str  # the teacher tensor the student tensor came from
    index: list[list[int]]  # kept teacher index per dimension


class Codebook:
    """code -> (teacher tensor, flat index), from the teacher's saved files."""

    def __init__(self, teacher: dict[str, torch.Tensor]):
        self.names = list(teacher)
        self.shapes = [tuple(t.shape) for t in teacher.values()]
        codes, owners, flats = [], [], []
        for k, t in enumerate(teacher.values()):
            c = t.detach().double().reshape(-1).numpy()
            codes.append(c)
            owners.append(np.full(c.size, k, dtype=np.int64))
            flats.append(np.arange(c.size, dtype=np.int64))
        codes_all = np.concatenate(codes) if codes else np.zeros(0)
        order = np.argsort(codes_all, kind="stable")
        self.codes = codes_all[order]
        self.owners = np.concatenate(owners)[order]
        self.flats = np.concatenate(flats)[order]
        dup = np.nonzero(self.codes[1:] == self.codes[:-1])[0]
        self.duplicates = set(self.codes[dup].tolist())  # tied tensors saved twice share codes

    def lookup(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(self.codes, values)
        pos = np.clip(pos, 0, len(self.codes) - 1)
        if not np.array_equal(self.codes[pos], values):
            bad = values[self.codes[pos] != values][:3]
            raise AssertionError(f"student values {bad.tolist()} are no teacher element (not a pure selection)")
        return self.owners[pos], self.flats[pos]


def decode(name: str, student: torch.Tensor, book: Codebook) -> Decoded:
    values = student.detach().double().reshape(-1).numpy()
    owners, flats = book.lookup(values)
    if values.size == 0:
        raise AssertionError(f"{name}: empty")
    sources = set(owners.tolist())
    if len(sources) != 1:
        raise AssertionError(f"{name}: elements come from several teacher tensors "
                             f"{sorted(book.names[k] for k in sources)[:4]}")
    k = owners[0]
    tshape = book.shapes[k]
    sshape = tuple(student.shape)
    if len(tshape) != len(sshape):
        raise AssertionError(f"{name}: rank {len(sshape)} from teacher {book.names[k]} of rank {len(tshape)}")
    coords = np.stack(np.unravel_index(flats, tshape), axis=-1).reshape(*sshape, len(tshape)) if tshape else None
    index = []
    for d in range(len(sshape)):
        # along dim d, the teacher coordinate must depend on the student coordinate along d only
        c = np.moveaxis(coords[..., d], d, 0).reshape(sshape[d], -1)
        if not (c == c[:, :1]).all():
            raise AssertionError(f"{name}: dimension {d} mixes teacher elements (not teacher[ix_(...)])")
        index.append(c[:, 0].tolist())
    return Decoded(book.names[k], index)


# --------------------------------------------------------------------------- 3. check a spec

@dataclass
class Report:
    members: dict[str, list[int]] = field(default_factory=dict)  # axis instance -> kept teacher members
    seen: dict[str, list[str]] = field(default_factory=dict)  # axis instance -> where it was read
    sources: dict[str, str] = field(default_factory=dict)  # student tensor -> teacher tensor
    problems: list[str] = field(default_factory=list)

    def record(self, axis: str, members: list[int], where: str) -> None:
        known = self.members.get(axis)
        if known is None:
            self.members[axis] = members
        elif known != members:
            self.problems.append(f"axis {axis}: {where} keeps {members[:12]}, {self.seen[axis][0]} keeps {known[:12]}")
        self.seen.setdefault(axis, []).append(where)


def _top_level(expr: str, sep: str) -> list[str]:
    """Split on ``sep`` outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(expr):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == sep and depth == 0:
            parts.append(expr[start:i])
            start = i + 1
    parts.append(expr[start:])
    return parts


def _parse(expr: str) -> list[list[str]]:
    return [[f.strip() for f in _top_level(seg, "*")] for seg in _top_level(expr, "|")]


def _group(factor: str) -> str | None:
    """The inner layout of a parenthesized factor, else None."""
    return factor[1:-1] if factor.startswith("(") and factor.endswith(")") else None


def _size(factor: str, sizes: dict[str, int]) -> int:
    if factor.isdigit():
        return int(factor)
    inner = _group(factor)
    if inner is not None:
        return sum(math.prod(_size(f, sizes) for f in seg) for seg in _parse(inner))
    kind = factor.rsplit(".", 1)[-1]
    if kind not in sizes:
        raise KeyError(f"spec names axis kind {kind!r} without a size")
    return sizes[kind]


def _split_product(indices: list[int], factors: list[str], sizes: dict[str, int], where: str,
                   report: Report) -> dict[str, list[int]]:
    """Kept indices of a product segment -> kept members of each factor (a full product, row-major)."""
    dims = [_size(f, sizes) for f in factors]
    if not indices:
        return {f: [] for f in factors if not f.isdigit() and _group(f) is None}
    coords = np.unravel_index(np.asarray(indices, dtype=np.int64), dims)
    per = [list(dict.fromkeys(c.tolist())) for c in coords]  # members of each factor, first-seen order
    expected = [sum(m * math.prod(dims[j + 1:]) for j, m in enumerate(combo)) for combo in _product(per)]
    if expected != list(indices):
        report.problems.append(f"{where}: kept rows are not whole {' * '.join(factors)} blocks: {indices[:16]}")
        return {}
    out: dict[str, list[int]] = {}
    for f, members in zip(factors, per):
        if f.isdigit():
            if members != list(range(int(f))):
                report.problems.append(f"{where}: a block of {f} is not kept whole: {members}")
        elif _group(f) is not None:
            check_dim(members, _group(f), sizes, f"{where} {f}", report)
        else:
            out[f] = members
    return out


def _product(lists):
    if not lists:
        yield ()
        return
    for head in lists[0]:
        for rest in _product(lists[1:]):
            yield (head, *rest)


def check_dim(indices: list[int], expr: str, sizes: dict[str, int], where: str, report: Report) -> None:
    segments = _parse(expr)
    offset = 0
    rest = list(indices)
    for k, seg in enumerate(segments):
        span = math.prod(_size(f, sizes) for f in seg)
        mine = [i - offset for i in rest if offset <= i < offset + span]
        if rest[:len(mine)] != [i + offset for i in mine]:
            report.problems.append(f"{where}: segment {k} ({' * '.join(seg)}) is not kept in order: {indices[:16]}")
            return
        rest = rest[len(mine):]
        if all(f.isdigit() for f in seg) and len(mine) != span:
            report.problems.append(f"{where}: segment {k} (a block of {span}) is not kept whole: {mine}")
        else:
            for f, members in _split_product(mine, seg, sizes, f"{where} segment {k}", report).items():
                report.record(f, members, where)
        offset += span
    if rest:
        report.problems.append(f"{where}: indices past the layout {expr!r}: {rest[:8]}")


@dataclass
class Spec:
    rules: list[tuple[str, tuple[str, ...]]]  # (regex on the teacher name, one expression per dimension)
    sizes: dict[str, int]  # axis kind -> teacher size
    components: list[tuple[str, int, str]] = field(default_factory=list)  # (regex, group, axis template)

    def expressions(self, teacher_name: str) -> tuple[str, ...] | None:
        for pattern, dims in self.rules:
            m = re.fullmatch(pattern, teacher_name)
            if m:
                return tuple(d.format(*([m.group(0)] + list(m.groups()))) for d in dims)
        return None


def check(student_folder: Path, teacher_folder: Path, spec: Spec) -> Report:
    """Decode every student tensor and check every axis is kept the same way everywhere."""
    teacher = read_folder(teacher_folder)
    student = read_folder(student_folder)
    book = Codebook(teacher)
    report = Report()
    for name, tensor in sorted(student.items()):
        try:
            dec = decode(name, tensor, book)
        except AssertionError as e:
            report.problems.append(str(e))
            continue
        report.sources[name] = dec.source
        changed = tuple(tensor.shape) != tuple(teacher[dec.source].shape)
        exprs = spec.expressions(dec.source)
        if exprs is None:
            if changed:
                report.problems.append(f"{name} <- {dec.source}: changes shape but no spec rule covers it")
            continue
        if len(exprs) != tensor.dim():
            report.problems.append(f"{name}: spec gives {len(exprs)} dimensions, the tensor has {tensor.dim()}")
            continue
        for d, expr in enumerate(exprs):
            if expr != "*":
                check_dim(dec.index[d], expr, spec.sizes, f"{name}[{d}]", report)
        for pattern, group, template in spec.components:
            mt, ms = re.fullmatch(pattern, dec.source), re.fullmatch(pattern, name)
            if mt and ms:
                axis = template.format(*([mt.group(0)] + list(mt.groups())))
                _record_component(report, axis, int(ms.group(group)), int(mt.group(group)), name)
    _finish_components(report)
    return report


def _record_component(report: Report, axis: str, student_pos: int, teacher_member: int, where: str) -> None:
    slots = report.__dict__.setdefault("_components", {}).setdefault(axis, {})
    known = slots.get(student_pos)
    if known is not None and known != teacher_member:
        report.problems.append(f"axis {axis}: student member {student_pos} is teacher {teacher_member} in {where} "
                               f"but teacher {known} elsewhere")
    slots[student_pos] = teacher_member


def _finish_components(report: Report) -> None:
    for axis, slots in report.__dict__.get("_components", {}).items():
        members = [slots[j] for j in sorted(slots)]
        if sorted(slots) != list(range(len(slots))):
            report.problems.append(f"axis {axis}: student members {sorted(slots)} are not 0..n-1")
        report.record(axis, members, f"the names of {axis}")


def layer_map(report: Report, pattern: str = r"(.*\.)(\d+)(\..*)") -> dict[int, int]:
    """Student layer -> teacher layer, read from where each tensor's values came from."""
    out: dict[int, int] = {}
    for s, t in report.sources.items():
        ms, mt = re.fullmatch(pattern, s), re.fullmatch(pattern, t)
        if ms and mt:
            out.setdefault(int(ms.group(2)), int(mt.group(2)))
    return out


def config_of(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())
