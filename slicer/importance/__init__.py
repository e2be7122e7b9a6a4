"""Importance: score every axis of a teacher on calibration data, streamed, and rank by it.

- ``calibration``: the batch (text / JSONL tokenized with the teacher's tokenizer, token ids or
  pixel values in safetensors, a folder of images; a default text shipped here);
- ``forward``: the teacher run with one module's weights in memory at a time (accelerate's
  offloaded execution over a lazy map of the teacher's safetensors);
- ``hooks``: where each axis shows in the activations, read off the plan's layouts;
- ``members`` (pure): which member of which axis every element of a dimension is;
- ``taylor``: the default criterion, gradient x weight, with a streamed backward layer by layer;
- ``scoring``: the whole run; ``scores``: the scores file and the ``Ranking`` selection asks.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..teacher import open_checkpoint
from ..errors import SlicerError

if TYPE_CHECKING:
    from .scores import Scores

__all__ = ["Scores", "load", "save", "score", "score_to_file"]


def score(teacher: str | Path, output: str | Path | None = None, *, calibration: str | Path | None = None,
          samples: int = 32, seq_len: int = 128, device: str = "auto", criterion: str = "taylor") -> Scores:
    """Score every axis of ``teacher`` on ``calibration`` (None: the default text), streamed;
    written to ``output`` when given. ``scores.vectors``: axis name -> tensor of scores.
    ``criterion``: ``activation`` or ``taylor`` (gradient x weight, docs/importance.md)."""
    from .scores import load
    from .scoring import score_teacher

    if output is not None:
        score_to_file(teacher, output, calibration=calibration, samples=samples, seq_len=seq_len, device=device,
                      criterion=criterion)
        return load(output)
    return score_teacher(teacher, calibration, samples=samples, seq_len=seq_len, device=device,
                         criterion=criterion).scores


def score_to_file(teacher: str | Path, output: str | Path, *, calibration: str | Path | None = None,
                  samples: int = 32, seq_len: int = 128, device: str = "auto", criterion: str = "taylor") -> dict:
    """``slicer score``: score ``teacher`` and write the scores to ``output``; a summary."""
    from ..run.memory import PeakSampler
    from .scores import save
    from .scoring import score_teacher

    ckpt = open_checkpoint(teacher, role="teacher")
    out = Path(output)
    target = out.resolve()
    if ckpt.folder.resolve() in target.parents:
        raise SlicerError(f"{out}: the scores file would be written inside the teacher's folder; choose another -o")
    if not target.parent.is_dir():
        raise SlicerError(f"{out}: folder {out.parent} does not exist")
    if target.is_dir():
        raise SlicerError(f"{out}: is a folder; name the scores file, e.g. {out / 'scores.safetensors'}")
    with PeakSampler() as memory:
        run = score_teacher(ckpt, calibration, samples=samples, seq_len=seq_len, device=device, criterion=criterion)
    sha = save(out, run.scores)
    layer_lists = len(run.scores.layers())
    return {"teacher": str(ckpt.path), "output": str(out), "sha256": sha, "axes": len(run.scores.vectors) - layer_lists,
            "layer_lists": layer_lists, "tokens": run.tokens, "seconds": round(run.seconds, 3), "device": run.device,
            "peak_memory_bytes": memory.peak, "calibration": run.scores.metadata.get("calibration"),
            "criterion": run.scores.metadata.get("criterion")}


def __getattr__(name: str):
    """``Scores``, ``load`` and ``save`` on first use: the scores module needs torch, and
    ``import slicer`` (the CLI's plan, help and verify) must not pay for it."""
    if name in ("Scores", "load", "save"):
        from . import scores

        return getattr(scores, name)
    raise AttributeError(name)
