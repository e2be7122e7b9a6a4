"""A rotated hidden axis, inside the engine: the dimensions of a tensor bound to the hidden
axis are *multiplied* by the kept columns of a rotation ``Qk`` [d, k] instead of gathered.

The plan is the ordinary one (its other axes gathered as usual); for a rotated job the
engine gathers the teacher's tensor with every other dimension selected and the hidden
dimension(s) whole (d), a slab of rows at a time, and multiplies each slab by ``Qk`` on the
engine's device (``torch.matmul``: BLAS on the CPU, cuBLAS on a GPU). Gathering the other
axes first is exact: a gather on one dimension commutes with a product on another.

What each rotated job does (:class:`Op`, built by ``slicer.rotation``):
- ``rotate``: for each hidden-bound dimension ``dim``: ``x = moveaxis(x, dim, -1) @ Qk``,
  the row scale (a norm's gain folded into the linear that reads it) applied first;
- ``fill``: a student norm gain, one value per site.

Memory: ``Qk`` once (on the device), and one slab: rows of at most the chunk budget, or a whole
tensor where its first dimension is itself hidden-bound (a writer ``[d, n]``: every output row
needs all d input rows; that is one module's weight, never the model).
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from ..io.format import DTYPES
from ..plan.build import TensorJob
from ..selection import IndexSet


@dataclass(frozen=True)
class Op:
    kind: str  # "rotate" | "fill"
    dims: tuple[int, ...] = ()  # rotate: the dimensions bound to the hidden axis
    scale: Any = None  # rotate: a [d] torch tensor multiplying the last dimension before the product (a norm's gain)
    value: float = 1.0  # fill: the value of every element


@dataclass
class Rotation:
    """``qk`` [d, k] (a torch tensor), and what to do to each student tensor (by name)."""

    qk: Any
    ops: dict[str, Op]
    compute: Any = None  # torch dtype of the products (default float32)
    flops: float = 0.0
    matmul_seconds: float = 0.0
    seconds: float = 0.0  # every rotated job, reading included
    shapes: Counter = field(default_factory=Counter)  # (rows, d, k, side) -> products of that shape (matmul_alone)
    _on: dict = field(default_factory=dict)

    @property
    def d(self) -> int:
        return int(self.qk.shape[0])

    @property
    def k(self) -> int:
        return int(self.qk.shape[1])

    def matrix(self, device):
        """``Qk`` in the compute dtype on ``device``, moved there once."""
        import torch

        key = str(device)
        if key not in self._on:
            self._on[key] = self.qk.to(device=device, dtype=self.compute or torch.float32).contiguous()
        return self._on[key]

    def scaled(self, op: "Op", device):
        """``diag(op.scale) @ Qk``: a reader's folded norm gain, for the slabs of one tensor in a row."""
        held = self._on.get("scaled")
        if held is None or held[0] is not op:
            q = self.matrix(device)
            held = (op, op.scale.to(device=device, dtype=q.dtype)[:, None] * q)
            self._on["scaled"] = held
        return held[1]

    def transposed(self, device):
        """``Qk^T`` [k, d], contiguous (a writer's product from the left), moved there once."""
        key = f"{device}:T"
        if key not in self._on:
            self._on[key] = self.matrix(device).T.contiguous()
        return self._on[key]

    def stats(self) -> dict:
        return {"gflop": round(self.flops / 1e9, 3), "matmul_seconds": round(self.matmul_seconds, 3),
                "gflop_per_s": round(self.flops / 1e9 / max(self.matmul_seconds, 1e-9), 2),
                "rotated_tensor_seconds": round(self.seconds, 3)}


def whole(job: TensorJob, op: Op, d: int) -> TensorJob:
    """The job that gathers what a rotated job multiplies: its other dimensions selected as
    planned, its hidden-bound dimensions whole (d)."""
    index = list(job.index)
    shape = list(job.shape)
    for dim in op.dims:
        ix = job.index[dim]
        index[dim] = IndexSet(f"{ix.key}:whole", d, d)
        shape[dim] = d
    dtype = job.dtype if job.dequant is not None else job.source.dtype  # cast after the product, not before
    return replace(job, index=tuple(index), shape=tuple(shape), dtype=dtype)


def slabs(job: TensorJob, op: Op, budget: int):
    """Sub-jobs of ``whole(job)`` cut along dimension 0 where it is not hidden-bound, each at most
    ``budget`` bytes in float32 (at least one row)."""
    if not job.shape or 0 in op.dims or job.shape[0] == 0:
        yield job
        return
    row = 4 * math.prod(job.shape[1:])
    step = max(1, budget // max(row, 1))
    ix = job.index[0]
    kept = ix.indices()
    if step >= len(kept):
        yield job
        return
    for a in range(0, len(kept), step):
        part = IndexSet.from_list(f"{ix.key}[{a}:{a + step}]", ix.t, kept[a:a + step])
        yield replace(job, index=(part, *job.index[1:]), shape=(part.s, *job.shape[1:]))


def apply(rotation: Rotation, op: Op, x, device, out_dtype):
    """One slab's student values: ``x`` (teacher values, other axes gathered) times ``Qk`` on
    every hidden-bound dimension, cast to the output dtype, on the host.

    Each product runs on contiguous operands with a contiguous result, as ``torch.matmul`` alone
    does: the last dimension as ``x @ Qk``, the first (a writer ``[d, n]``) as ``Qk^T @ x``, any
    other moved last (and back) around the product."""
    import torch

    compute = rotation.compute or torch.float32
    y = x.to(device=device, dtype=compute)
    for dim in op.dims:
        last = dim == y.dim() - 1
        if dim == 0 and not last:
            side, operand = "left", y.reshape(y.shape[0], -1).contiguous()
        else:
            side, operand = "right", (y if last else torch.movedim(y, dim, -1)).contiguous()
        rows = operand.numel() // rotation.d
        start = time.perf_counter()
        if side == "left":
            out = torch.matmul(rotation.transposed(device), operand)
        elif last and op.scale is not None:  # (x * g) @ Qk == x @ (g[:, None] * Qk): the gain on d x k, not rows x d
            out = torch.matmul(operand, rotation.scaled(op, device))
        else:
            out = torch.matmul(operand, rotation.matrix(device))
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        rotation.matmul_seconds += time.perf_counter() - start
        rotation.flops += 2.0 * rows * rotation.d * rotation.k
        rotation.shapes[(rows, rotation.d, rotation.k, side)] += 1
        if side == "left":
            y = out.reshape(rotation.k, *y.shape[1:])
        else:
            y = out if last else torch.movedim(out, -1, dim)
    return y.to(dtype=out_dtype).contiguous().cpu()


def fill(op: Op, shape, out_dtype):
    import torch

    return torch.as_tensor(op.value, dtype=torch.float64).expand(tuple(shape)).to(out_dtype).contiguous()


def matmul_alone(rotation: Rotation, device: str = "cpu", seconds: float = 2.0) -> dict:
    """``torch.matmul`` alone on this machine on the engine's own products: every shape it
    multiplied (rows x d by d x k, from the right or the left), timed on random operands of the
    same layout with nothing else running in this process, weighted as the engine ran them.
    Returns GFLOP/s of that mix, and the seconds it predicts for the engine's products
    (``seconds`` bounds the time spent measuring, split over the shapes)."""
    import torch

    compute = rotation.compute or torch.float32
    if not rotation.shapes:
        return {"matmul_alone_gflop_per_s": None, "matmul_alone_seconds": 0.0}
    each = seconds / len(rotation.shapes)
    predicted = 0.0
    for (rows, d, k, side), count in rotation.shapes.items():
        a = torch.randn(rows, d, device=device, dtype=compute) if side == "right" else \
            torch.randn(d, rows, device=device, dtype=compute)
        b = torch.randn(d, k, device=device, dtype=compute)
        bt = b.T.contiguous()
        product = (lambda: torch.matmul(a, b)) if side == "right" else (lambda: torch.matmul(bt, a))
        product()
        n, start = 0, time.perf_counter()
        while n < 2 or (time.perf_counter() - start < each and n < count):
            product()
            n += 1
        if a.is_cuda:
            torch.cuda.synchronize()
        predicted += count * (time.perf_counter() - start) / n
    return {"matmul_alone_gflop_per_s": round(rotation.flops / 1e9 / max(predicted, 1e-9), 2),
            "matmul_alone_seconds": round(predicted, 3), "shapes": len(rotation.shapes)}


def out_dtype(job: TensorJob):
    from .host_arrays import torch_dtype

    return torch_dtype(job.dtype)


def itemsize(job: TensorJob) -> int:
    return DTYPES[job.dtype].itemsize
