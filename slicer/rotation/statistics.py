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

One streamed forward gives both (:class:`Gatherer`): the covariance is summed as the norms'
inputs go by, and the gains, which need ``Qk`` and so the whole covariance first, are taken
over a bounded sample of each site's rows held from the same pass (``SAMPLE_TOKENS`` tokens
per site, drawn uniformly by a seeded reservoir, the same tokens at every site: d x tokens x
sites float32, e.g. 2048 x 512 x 33 x 4 B = 138 MB for a 1.1 B Llama; all of them, and the
gains exactly the full pass's, when the calibration has no more tokens than that). With
importance scored on the fly, the scoring forward carries the gatherer too
(``score_teacher(taps=...)``), so a rotated shrink runs the teacher once after ``observe``.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io.checkpoint import Checkpoint
from ..errors import SlicerError

WEIGHTINGS = ("normalized", "raw")
GAINS = ("scalar", "vector")
# tokens per site held for the gains (the mean of one scalar per token): on SmolLM2, 512 of 4,096 give gains
# within 0.13% of every token's and perplexity +1.0% at half width, +0.2% hidden only (bench/RESULTS.md,
# "one streamed forward"); pass ``sample`` to hold more
SAMPLE_TOKENS = 512


@dataclass
class Statistics:
    covariance: torch.Tensor  # [d, d] float64, summed over sites and tokens
    tokens: int
    sites: list[str]
    calibration: dict
    gains: dict[str, float] = field(default_factory=dict)
    q: torch.Tensor | None = None  # the rotation of ``covariance`` (transform.rotation), once computed
    variances: torch.Tensor | None = None
    sampled: int = 0  # tokens per site the gains were taken over

    def rotation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, variances) of the covariance, computed once (an eigendecomposition of d x d)."""
        if self.q is None:
            from .transform import rotation

            self.q, self.variances = rotation(self.covariance)
        return self.q, self.variances


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
        from ..importance.scoring import run_forward, tapping

        with tapping(self.model, {s: (lambda x, s=s: hook(s, x)) for s in sites}, self.ckpt):
            run_forward(self.model, self.batch.inputs, self.device, self.ckpt)

    def close(self) -> None:
        self.weights.close()


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(-1, x.shape[-1]).double()


class Gatherer:
    """Everything the statistics read at the norm sites, from one streamed forward: called as
    ``gatherer(site, x)`` with each site's input (``taps()``: the same, by site, for
    ``score_teacher``). Holds the covariance [d, d] float64 and per site a reservoir of at most
    ``sample`` rows (float32, the forward's own values) for the gains; ``seconds``: the time
    spent in the forward's hooks, apart from the forward that carries them."""

    def __init__(self, sites: list[str], weighting: str = "normalized", sample: int = SAMPLE_TOKENS, seed: int = 0):
        if weighting not in WEIGHTINGS:
            raise SlicerError(f"unknown rotation weighting {weighting!r} (choose from {', '.join(WEIGHTINGS)})")
        self.sites = list(sites)
        self.weighting = weighting
        self.sample = max(int(sample), 1)
        self.seed = seed
        self.covariance: torch.Tensor | None = None
        self.count = 0  # rows summed, over every site
        self.seconds = 0.0
        self._seen: dict[str, int] = {}  # site -> rows seen so far
        self._kept: dict[str, torch.Tensor] = {}  # site -> [<= sample, d] float32 on the CPU
        self._draws: dict[str, torch.Generator] = {}  # site -> its reservoir's generator (one seed: the same tokens)

    def held(self, site: str) -> torch.Tensor:
        """The rows held for ``site``'s gain ([<= sample, d] float32)."""
        return self._kept[site]

    def taps(self) -> dict[str, Callable[[torch.Tensor], None]]:
        return {s: (lambda x, s=s: self(s, x)) for s in self.sites}

    def __call__(self, site: str, x: torch.Tensor) -> None:
        start = time.perf_counter()
        self._hold(site, x.detach().reshape(-1, x.shape[-1]))
        rows = _rows(x)
        if self.weighting == "normalized":
            rows = rows / rows.pow(2).mean(1, keepdim=True).sqrt().clamp(min=1e-12)
        # float64 throughout (the same sum, bit for bit, as the separate pass had): float32 products, twice as
        # fast, gave another Q, and SmolLM2's full-width logits then missed allclose(1e-4) (1.36e-4)
        c = rows.T @ rows
        self.covariance = c if self.covariance is None else self.covariance + c
        self.count += rows.shape[0]
        self.seconds += time.perf_counter() - start

    def _hold(self, site: str, x: torch.Tensor) -> None:
        """Reservoir sampling (Vitter's algorithm R) of the site's rows: every row seen so far is
        held with the same probability, whatever the number of calls and their sizes."""
        seen = self._seen.get(site, 0)
        n = x.shape[0]
        self._seen[site] = seen + n
        kept = self._kept.get(site)
        room = self.sample - (0 if kept is None else kept.shape[0])
        first = x[:room].float().cpu().clone() if room > 0 else x[:0].float().cpu()
        kept = first if kept is None else torch.cat([kept, first])
        rest = x[max(room, 0):]
        if rest.shape[0]:
            draw = self._draws.setdefault(site, torch.Generator().manual_seed(self.seed))
            # each row's count of rows seen, itself included
            position = torch.arange(seen + max(room, 0), seen + n, dtype=torch.float64) + 1
            slot = (torch.rand(rest.shape[0], generator=draw, dtype=torch.float64) * position).long()
            hit = torch.nonzero(slot < self.sample).flatten()
            if hit.numel():
                # a later row replacing the same slot wins: keep each slot's last hit
                slots = slot[hit]
                last = {int(a): int(b) for a, b in zip(slots.tolist(), hit.tolist())}
                to = torch.tensor(list(last), dtype=torch.long)
                kept[to] = rest[torch.tensor(list(last.values()), device=rest.device)].float().cpu()
        self._kept[site] = kept

    def statistics(self, calibration: dict, keep: int | None = None, gains: str = "scalar") -> Statistics:
        """The covariance, its rotation and (with ``keep`` = k) each site's gain over its sample."""
        if self.covariance is None:
            raise SlicerError("the calibration forward reached no norm site: no statistics for the rotation")
        stats = Statistics(self.covariance.cpu(), self.count // len(self.sites), self.sites, calibration)
        stats.sampled = min(self._seen.values(), default=0) if self._seen else 0
        stats.sampled = min(stats.sampled, self.sample)
        if keep is not None:
            q, _ = stats.rotation()
            stats.gains = site_gains(Sample(self._kept), self.sites, q[:, :keep], gains)
            self._kept = {}  # the sample has served: not held through the engine (138 MB at 1.1B)
        return stats


class Sample:
    """The rows a :class:`Gatherer` held, replayed site by site as a teacher's forward would
    hand them to a hook (what ``site_gains`` reads)."""

    device = torch.device("cpu")

    def __init__(self, rows: dict[str, torch.Tensor]):
        self.rows = rows

    def run(self, sites: list[str], hook) -> None:
        for s in sites:
            if s in self.rows:
                hook(s, self.rows[s])


def collect(ckpt: Checkpoint, sites: list[str], *, calibration=None, samples: int = 32, seq_len: int = 128,
            device: str = "cpu", weighting: str = "normalized", keep: int | None = None,
            gains: str = "scalar", sample: int = SAMPLE_TOKENS) -> Statistics:
    """The covariance (and, with ``keep`` = k, the per-site gains of the top-k rotation), from one
    streamed forward of the teacher."""
    gatherer = Gatherer(sites, weighting, sample)
    teacher = _Teacher(ckpt, calibration, samples, seq_len, device)
    try:
        teacher.run(sites, gatherer)
    finally:
        teacher.close()
    return gatherer.statistics(teacher.batch.describe(), keep, gains)


def collect_two_passes(ckpt: Checkpoint, sites: list[str], *, calibration=None, samples: int = 32, seq_len: int = 128,
                       device: str = "cpu", weighting: str = "normalized", keep: int | None = None,
                       gains: str = "scalar") -> Statistics:
    """As :func:`collect`, the gains over every calibration token by a second forward once ``Qk``
    is known (the reference the sampled gains are measured against: bench/rotation_quality.py)."""
    gatherer = Gatherer(sites, weighting, sample=1)
    teacher = _Teacher(ckpt, calibration, samples, seq_len, device)
    try:
        teacher.run(sites, gatherer)
        stats = gatherer.statistics(teacher.batch.describe())
        if keep is not None:
            q, _ = stats.rotation()
            stats.gains = site_gains(teacher, sites, q[:, :keep], gains)
            stats.sampled = stats.tokens
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
