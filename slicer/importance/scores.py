"""Scores files: per-axis importance vectors in safetensors, bound to the teacher they describe.

Format (``slicer-scores/1``), so rankings made by other tools can be imported:
- one 1-D floating tensor per axis instance, named by the axis (the names ``slicer plan
  --json`` lists under ``axes``: ``hidden``, ``model.layers.3.mlp:ffn``,
  ``model.layers.3.self_attn:kv-heads``, ``model.layers.3.self_attn:group``,
  ``model.layers.3.mlp:experts``, ...), as long as the teacher's axis; higher = more
  important; selection keeps the top s, in teacher order (ties: the lower index);
- ``{list}:layers`` (e.g. ``model.layers:layers``): one score per layer of that layer list,
  read by ``--layer-selection importance``;
- metadata (strings): ``format`` = ``slicer-scores/1``; ``teacher`` = JSON list of the teacher's
  safetensors files ``[{"name": ..., "size": ..., "sha256_first_mib": ...}]`` (names relative
  to the teacher's folder; the sha256 of the file's first MiB, the whole file if smaller);
  optional ``calibration`` (JSON: source, sha256, shape), ``statistic``, ``slicer_version``.
A scores file whose ``teacher`` does not name exactly the teacher's files, sizes and first-MiB
hashes is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..axes import Axis, Ranking
from ..io.checkpoint import Checkpoint
from ..io.writer import sha256_file as file_digest
from ..errors import SlicerError

FORMAT = "slicer-scores/1"
LAYERS = "layers"  # the kind suffix of a layer list's scores: "model.layers:layers"


FINGERPRINT_BYTES = 1 << 20


def teacher_files(ckpt: Checkpoint) -> list[dict]:
    """What names a teacher: its files, their sizes and the sha256 of each file's first MiB
    (header and first tensors: two teachers of one architecture differ there, and it costs
    a MiB per shard to read, whatever the teacher's size)."""
    out = []
    for p in ckpt.files:
        with open(p, "rb") as f:
            head = hashlib.sha256(f.read(FINGERPRINT_BYTES)).hexdigest()
        out.append({"name": os.path.relpath(p, ckpt.folder), "size": os.stat(p).st_size, "sha256_first_mib": head})
    return out


def layer_key(prefix: str) -> str:
    return f"{prefix}:{LAYERS}"


class Scores(Ranking):
    """Per-axis scores for one teacher: the Ranking importance selection asks."""

    def __init__(self, vectors: Mapping[str, torch.Tensor], metadata: dict, source: str = "scores",
                 sha256: str | None = None):
        super().__init__({k: v.double().tolist() for k, v in vectors.items()}, source)
        self.vectors = dict(vectors)
        self.metadata = dict(metadata)
        self.sha256 = sha256

    def top(self, ax: Axis) -> list[int]:
        if ax.kind == "flat":
            raise SlicerError(f"{self.source}: importance ranks the model's own axes, but dimension {ax.name} is "
                              "selected flat (no config): name the student with --set / --student-config, or put "
                              "config.json beside the teacher and the template")
        return super().top(ax)

    def has(self, ax: Axis) -> bool:
        """Whether ``ax`` is ranked by its own scores. A nested axis (query heads, chosen per kv head)
        is not by slicer's activation scores (``criterion`` "activation", or a slicer file from before
        criteria: ``statistic`` alone): a head's output norm chose worse query heads per kv head than
        summed over the block (bench/RESULTS.md, 2026-12-07), so their group stays one per block.
        Taylor scores and imported files (no ``statistic``) choose per kv head."""
        criterion = self.metadata.get("criterion", "activation" if "statistic" in self.metadata else None)
        if ax.nested and criterion == "activation":
            return False
        return super().has(ax)

    def layers(self) -> dict[str, list[float]]:
        """Layer list -> one score per teacher layer (for --layer-selection importance)."""
        suffix = ":" + LAYERS
        return {k[:-len(suffix)]: v for k, v in self.scores.items() if k.endswith(suffix)}

    def describe(self) -> dict:
        """For the manifest: where the scores came from."""
        out = {"source": self.source, "sha256": self.sha256}
        if "calibration" in self.metadata:
            out["calibration"] = self.metadata["calibration"]
        for key in ("criterion", "taylor", "statistic"):  # criterion/taylor: absent from files written before them
            if key in self.metadata:
                out[key] = self.metadata[key]
        return out

    def check_teacher(self, ckpt: Checkpoint) -> None:
        named = self.metadata.get("teacher")
        have = teacher_files(ckpt)
        if named is None:
            raise SlicerError(f"{self.source}: scores file names no teacher (metadata \"teacher\": the teacher's "
                              "files and sizes); see the scores format in docs/importance.md")
        problem = _difference(named, have)
        if problem:
            raise SlicerError(f"{self.source}: scores were computed for another teacher than {ckpt.path}: {problem}")


def _difference(named, have: list[dict]) -> str | None:
    """What tells the scored teacher from this one, or None when they are the same files."""
    if not isinstance(named, list) or not all(isinstance(f, dict) for f in named):
        return "its \"teacher\" metadata is not a list of files"
    theirs, mine = {f.get("name"): f for f in named}, {f["name"]: f for f in have}
    if set(theirs) != set(mine):
        return f"the scores name files {sorted(map(str, theirs))[:3]}, the teacher has {sorted(mine)[:3]}"
    for name, f in mine.items():
        other = theirs[name]
        if other.get("size") != f["size"]:
            return f"{name} is {f['size']} bytes, {other.get('size')} in the scores"
        if other.get("sha256_first_mib") != f["sha256_first_mib"]:
            return f"{name} differs from the file that was scored (sha256 of its first MiB)"
    return None


def save(path: str | Path, scores: Scores) -> str:
    """Write a scores file (atomically); returns its sha256."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"format": FORMAT}
    for k, v in scores.metadata.items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    tensors = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in sorted(scores.vectors.items())}
    if not tensors:
        raise SlicerError(f"{path}: no scores to write")
    tmp = path.with_name(path.name + ".incomplete")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise SlicerError(f"{path}: cannot write: {e.strerror or e}") from e
    return sha256_file(path)


def sha256_file(path: Path) -> str:
    """The scores file's sha256 (the manifest's ``scores`` record names it)."""
    return file_digest(path)[0]


def load(path: str | Path, ckpt: Checkpoint | None = None) -> Scores:
    """Read a scores file; with ``ckpt``, refuse it unless it names that teacher."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SlicerError(f"{path}: scores file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            vectors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors' parse errors
        raise SlicerError(f"{path}: not a safetensors scores file ({str(e)[:200]})") from e
    if meta.get("format") != FORMAT:
        raise SlicerError(f"{path}: not a slicer scores file (metadata format is {meta.get('format')!r}, "
                          f"expected {FORMAT!r})")
    for k, v in vectors.items():
        if v.dim() != 1 or not v.dtype.is_floating_point:
            raise SlicerError(f"{path}: scores {k!r} must be a 1-D floating tensor, got {v.dtype} {list(v.shape)}")
        if not torch.isfinite(v).all():
            raise SlicerError(f"{path}: scores {k!r} hold NaN or infinite values")
    metadata = {}
    for k, v in meta.items():
        if k == "format":
            continue
        try:
            metadata[k] = json.loads(v)
        except ValueError:
            metadata[k] = v
    scores = Scores(vectors, metadata, str(path), sha256_file(path))
    if ckpt is not None:
        scores.check_teacher(ckpt)
    return scores
