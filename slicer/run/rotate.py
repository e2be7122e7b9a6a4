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
    every hidden-bound dimension, cast to the output dtype, on the host."""
    import torch

    compute = rotation.compute or torch.float32
    q = rotation.matrix(device)
    y = x.to(device=device, dtype=compute)
    for dim in op.dims:
        last = dim == y.dim() - 1
        if not last:
            y = torch.movedim(y, dim, -1)
        if op.scale is not None and last:
            y = y * op.scale.to(device=device, dtype=compute)
        start = time.perf_counter()
        y = torch.matmul(y, q)
        if y.is_cuda:
            torch.cuda.synchronize(y.device)
        rotation.matmul_seconds += time.perf_counter() - start
        rotation.flops += 2.0 * (y.numel() // max(rotation.k, 1)) * rotation.d * rotation.k
        if not last:
            y = torch.movedim(y, -1, dim)
    return y.to(dtype=out_dtype).contiguous().cpu()


def fill(op: Op, shape, out_dtype):
    import torch

    return torch.as_tensor(op.value, dtype=torch.float64).expand(tuple(shape)).to(out_dtype).contiguous()


def matmul_alone(d: int, k: int, device: str = "cpu", seconds: float = 0.5) -> float:
    """GFLOP/s of ``torch.matmul`` alone on this machine, at the engine's shapes ([rows, d] @ [d, k],
    float32), for the summary to stand beside the engine's own figure."""
    import torch

    rows = max(64, (8 << 20) // (4 * d))  # an 8 MB slab, as the engine's are a few MB
    a = torch.randn(rows, d, device=device)
    b = torch.randn(d, k, device=device)
    torch.matmul(a, b)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        n += 1
    if a.is_cuda:
        torch.cuda.synchronize()
    return round(2.0 * rows * d * k * n / 1e9 / (time.perf_counter() - start), 2)


def out_dtype(job: TensorJob):
    from .host_arrays import torch_dtype

    return torch_dtype(job.dtype)


def itemsize(job: TensorJob) -> int:
    return DTYPES[job.dtype].itemsize
