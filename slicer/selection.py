"""Index sets: which teacher elements (per dimension) and layers a student keeps.

Pure functions of (teacher length t, student length s, method, seed); no tensor data.
The formulas follow the reference code of Xu et al. bit for bit, including its
float32 ``torch.linspace`` rounding (see docs: weight-selection.md), reproduced here
without torch so that planning never imports it (only the random methods do).
"""
from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass

from .errors import SlicerError

LAYER_SELECTIONS = ("first", "uniform", "importance")


def uniform_indices(t: int, s: int) -> list[int]:
    """Evenly spaced indices, exactly as the reference computes them."""
    _check(t, s)
    if t % s == 0:
        step = t // s
        return list(range(0, t, step))
    # float32 linspace on the CPU then round-half-to-even: this is what the reference
    # does, and it differs from exact arithmetic at some ties (e.g. t=8934, s=2686).
    if t > _F32_EXACT_INTS:  # beyond what _linspace_f32 proves exact: ask torch itself
        import torch

        return torch.round(torch.linspace(0, t - 1, s, dtype=torch.float32)).to(torch.int64).tolist()
    return [round(v) for v in _linspace_f32(t - 1, s)]  # round(): half to even, as torch.round


_F32_EXACT_INTS = 1 << 24  # every integer up to this is a float32


def _linspace_f32(end: int, steps: int) -> array:
    """``torch.linspace(0, end, steps, dtype=torch.float32)`` on the CPU, bit for bit.

    torch's CPU kernel computes ``step = (end - start) / (steps - 1)`` in float32, then
    ``start + step * i`` below the halfway index ``steps // 2`` and
    ``end - step * (steps - 1 - i)`` from it on. Its AVX2/AVX512 builds (what torch
    dispatches to on any x86-64 machine of the last decade) contract each of those into
    one fused multiply-add: the exact value, rounded once to float32. Here the exact
    value is a double (with end < 2**24 and step >= 1, ``step * i`` needs at most 48
    significant bits and ``end - step * k`` at most 47), and ``array("f")`` rounds it to
    the nearest float32, ties to even, as the FMA does. The division is rounded to
    float32 by way of a double, which gives the correctly rounded float32 quotient
    (53 >= 2 * 24 + 2 bits). Checked against torch for every t <= 3000 (and random t up
    to 10**6): bench/linspace_proof.py, tests/test_selection_reference.py.
    """
    stop = _f32(end)
    step = _f32(stop / _f32(steps - 1))
    half = steps // 2
    return array("f", [step * i for i in range(half)] + [stop - step * (steps - 1 - i) for i in range(half, steps)])


def _f32(x: float) -> float:
    return array("f", (x,))[0]


def consecutive_indices(t: int, s: int) -> list[int]:
    """The first s."""
    _check(t, s)
    return list(range(s))


def random_indices(t: int, s: int, seed_material: str) -> list[int]:
    """A sorted random subset of size s, determined by ``seed_material`` alone.

    Each (seed, t, s) -- or (seed, tensor, dim, t, s) for the inconsistent ablation --
    gets its own generator, so the subset does not depend on the order tensors are
    visited in, and a rerun gives the same student.
    """
    import torch  # only the random methods need it (its generator defines the subsets)

    _check(t, s)
    digest = hashlib.sha256(seed_material.encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.randperm(t, generator=gen)[:s].sort().values.tolist()


def _check(t: int, s: int) -> None:
    if not 1 <= s <= t:
        raise ValueError(f"cannot select {s} of {t}")


@dataclass(frozen=True)
class IndexSet:
    """The kept indices of one dimension: ``start + step*i`` or an explicit sorted list."""

    key: str  # its name in the manifest, shared by every dimension that uses it
    t: int
    s: int
    start: int = 0
    step: int = 1
    explicit: tuple[int, ...] | None = None

    @classmethod
    def from_list(cls, key: str, t: int, indices: list[int]) -> "IndexSet":
        """Store an arithmetic progression as (start, step): it is a strided view."""
        s = len(indices)
        if s <= 1:
            return cls(key, t, s, indices[0] if s else 0, 1)
        step = indices[1] - indices[0]
        if step > 0 and all(b - a == step for a, b in zip(indices, indices[1:])):
            return cls(key, t, s, indices[0], step)
        return cls(key, t, s, explicit=tuple(indices))

    @property
    def is_identity(self) -> bool:
        return self.explicit is None and self.s == self.t and self.start == 0 and self.step == 1

    @property
    def is_strided(self) -> bool:
        return self.explicit is None

    def indices(self) -> list[int]:
        if self.explicit is not None:
            return list(self.explicit)
        return list(range(self.start, self.start + self.step * self.s, self.step))

    def part(self, a: int, b: int) -> range | tuple[int, ...]:
        """Indices a..b-1 of this set, as a range when strided."""
        if self.explicit is not None:
            return self.explicit[a:b]
        return range(self.start + a * self.step, self.start + b * self.step, self.step)

    def describe(self) -> dict:
        """Manifest form: the rule when strided (``start + step*i``), else the list."""
        if self.explicit is None:
            return {"t": self.t, "s": self.s, "start": self.start, "step": self.step}
        return {"t": self.t, "s": self.s, "indices": list(self.explicit)}


def manifest_indices(entry: dict) -> list[int]:
    """The kept indices of a manifest index-set entry (either form of ``describe``)."""
    if "indices" in entry:
        return list(entry["indices"])
    return list(range(entry["start"], entry["start"] + entry["step"] * entry["s"], entry["step"]))


def layer_indices(teacher_depth: int, student_depth: int, mode: str, scores=None) -> list[int]:
    """Teacher layer feeding each student layer along one depth axis (``scores``: one per
    teacher layer, for "importance": the top ones, kept in order)."""
    if mode == "first":
        return list(range(student_depth))
    if mode == "uniform":
        return uniform_indices(teacher_depth, student_depth)
    if mode == "importance":
        if scores is None or len(scores) != teacher_depth:
            got = "none" if scores is None else f"{len(scores)}"
            raise SlicerError(f"--layer-selection importance: {got} layer scores for a list of {teacher_depth} layers")
        _check(teacher_depth, student_depth)
        order = sorted(range(teacher_depth), key=lambda i: (-float(scores[i]), i))  # ties: the lower layer
        return sorted(order[:student_depth])
    raise SlicerError(f"unknown layer selection {mode!r} (choose from {', '.join(LAYER_SELECTIONS)})")


@dataclass(frozen=True)
class Method:
    """An element-selection method: how a leaf axis of t members keeps s of them.

    ``consistent``: one index set per axis, shared by every tensor it touches (all but the
    paper's ablation). ``ranked``: the members come from importance scores, not a formula.
    ``members(t, s, salt)``: the formula (``salt`` seeds the random methods: the seed, and
    for the ablation the tensor and dimension as well).
    """

    name: str
    consistent: bool = True
    ranked: bool = False
    members: Callable[[int, int, str], list[int]] | None = None


METHOD_TABLE: dict[str, Method] = {m.name: m for m in (
    Method("uniform", members=lambda t, s, salt: uniform_indices(t, s)),
    Method("consecutive", members=lambda t, s, salt: consecutive_indices(t, s)),
    Method("random", members=lambda t, s, salt: random_indices(t, s, salt)),
    Method("random-inconsistent", consistent=False, members=lambda t, s, salt: random_indices(t, s, salt)),
    Method("importance", ranked=True),
)}
METHODS = tuple(METHOD_TABLE)  # the choices, in the order --help lists them


def method(name: str) -> Method:
    """The method of that name, or one line naming the choices."""
    found = METHOD_TABLE.get(name)
    if found is None:
        raise SlicerError(f"unknown method {name!r} (choose from {', '.join(METHODS)})")
    return found
