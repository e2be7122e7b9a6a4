"""Calibration statistics for the rotation, from the teacher's streamed forward (the one
``slicer score`` runs: one module's weights in memory at a time).

1. ``covariance``: sum over every norm site (every layer's two norms and the final norm) and
   every calibration token of ``x x^T``, x the norm's input (the residual stream), in float64;
   ``weighting="normalized"`` divides each x by its rms first, so every site and token weighs
   the same as the norm's output does.
2. ``site_gains``: with ``Qk`` chosen, per site the student's norm gain that reproduces the
   teacher's normalized activations: the student normalizes ``Qk^T x`` by its rms over k
   channels, the teacher ``x`` over d, so the gain is ``sqrt(d / k) * mean(|Qk^T x| / |x|)``
   (the least-squares scalar; 1 when nothing is cut).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io.checkpoint import Checkpoint
from ..errors import SlicerError

WEIGHTINGS = ("normalized", "raw")
GAINS = ("scalar", "vector")


@dataclass
class Statistics:
    covariance: torch.Tensor  # [d, d] float64, summed over sites and tokens
    tokens: int
    sites: list[str]
    calibration: dict
    gains: dict[str, float] = field(default_factory=dict)


class _Teacher:
    """The teacher's model with empty weights, streamed, and its calibration batch."""

    def __init__(self, ckpt: Checkpoint, calibration, samples: int, seq_len: int, device: str):
        from ..importance import calibration as calib
        from ..importance.forward import CheckpointWeights, empty_model, import_accelerate, pick_device, stream

        import_accelerate()
        self.ckpt = ckpt
        self.batch = calib.load(calibration, ckpt.folder, samples=samples, seq_len=seq_len)
        self.device = pick_device(device)
        self.model = empty_model(ckpt.config_path())
        self.weights = CheckpointWeights(ckpt, self.model)
        stream(self.model, self.weights, self.device)

    def run(self, sites: list[str], hook) -> None:
        from ..importance.scoring import run_forward

        modules = dict(self.model.named_modules())
        missing = [s for s in sites if s not in modules]
        if missing:
            raise SlicerError(f"{self.ckpt.path}: the model has no norm module {missing[0]} (is this a "
                              f"{self.model.config.model_type} checkpoint?)")
        handles = [modules[s].register_forward_pre_hook(lambda m, args, s=s: hook(s, args[0])) for s in sites]
        try:
            run_forward(self.model, self.batch.inputs, self.device, self.ckpt)
        finally:
            for h in handles:
                h.remove()

    def close(self) -> None:
        self.weights.close()


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(-1, x.shape[-1]).double()


def collect(ckpt: Checkpoint, sites: list[str], *, calibration=None, samples: int = 32, seq_len: int = 128,
            device: str = "cpu", weighting: str = "normalized", keep: int | None = None,
            gains: str = "scalar") -> Statistics:
    """The covariance (and, with ``keep`` = k, the per-site gains of the top-k rotation)."""
    if weighting not in WEIGHTINGS:
        raise SlicerError(f"unknown rotation weighting {weighting!r} (choose from {', '.join(WEIGHTINGS)})")
    teacher = _Teacher(ckpt, calibration, samples, seq_len, device)
    try:
        acc: dict[str, torch.Tensor] = {}
        count = [0]

        def gather(site: str, x: torch.Tensor) -> None:
            rows = _rows(x)
            if weighting == "normalized":
                rows = rows / rows.pow(2).mean(1, keepdim=True).sqrt().clamp(min=1e-12)
            acc["c"] = acc["c"] + rows.T @ rows if "c" in acc else rows.T @ rows
            count[0] += rows.shape[0]

        teacher.run(sites, gather)
        stats = Statistics(acc["c"].cpu(), count[0] // len(sites), sites, teacher.batch.describe())
        if keep is not None:
            from .transform import rotation

            q, _ = rotation(stats.covariance)
            stats.gains = site_gains(teacher, sites, q[:, :keep], gains)
        return stats
    finally:
        teacher.close()


def site_gains(teacher: _Teacher, sites: list[str], qk: torch.Tensor, mode: str = "scalar") -> dict:
    """Per site: a float (``scalar``), or one gain per kept component (``vector``: the
    least-squares ``c_j`` of ``c_j * a_j ~ b_j``, a = the student's normalized component, b = the
    teacher's)."""
    d, k = qk.shape
    if k == d:  # nothing cut: the teacher's own normalization
        return {s: 1.0 for s in sites}
    sums: dict[str, list] = {s: [0.0, 0.0, 0] for s in sites}
    q = qk.to(teacher.device)

    def gather(site: str, x: torch.Tensor) -> None:
        rows = _rows(x)
        kept = rows @ q
        u = kept.norm(dim=1).clamp(min=1e-30)
        v = rows.norm(dim=1).clamp(min=1e-30)
        if mode == "vector":
            sq = kept.pow(2)
            sums[site][0] += (sq * (math.sqrt(k * d) / (u * v))[:, None]).sum(0)
            sums[site][1] += (sq * (k / u.pow(2))[:, None]).sum(0)
        else:
            sums[site][0] += float((u / v).sum())
        sums[site][2] += rows.shape[0]

    teacher.run(sites, gather)
    if mode == "vector":
        return {s: (num / den.clamp(min=1e-30)).cpu() for s, (num, den, _) in sums.items()}
    return {s: math.sqrt(d / k) * total / max(n, 1) for s, (total, _, n) in sums.items()}


def teacher_stats(teacher: str | Path, sites: list[str], keep: int, **kwargs) -> Statistics:
    ckpt = teacher if isinstance(teacher, Checkpoint) else Checkpoint.open(teacher, role="teacher")
    return collect(ckpt, sites, keep=keep, **kwargs)
