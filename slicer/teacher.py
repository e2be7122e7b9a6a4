"""Open a checkpoint wherever it lies: the one place that tells a URL from a local path.

A local path is a :class:`~slicer.io.checkpoint.Checkpoint` read from disk; a URL
(``hf://``, ``s3://``, ``https://``...) is opened by :mod:`slicer.remote`, imported only
then, and gives a Checkpoint of the same layouts whose files are reached through the
network. Everything above (the API, verify, importance, the transformers route) opens
teachers and templates here and never asks which kind it holds.
"""
from __future__ import annotations

from pathlib import Path

from .errors import SlicerError
from .io.checkpoint import Checkpoint, is_url


def open_checkpoint(path: str | Path, role: str = "checkpoint", *, revision: str | None = None,
                    cache_dir: str | Path | None = None, remote: object = None) -> Checkpoint:
    """``revision``, ``cache_dir`` and ``remote`` (a RemoteOptions or a dict of its fields)
    apply to a URL only."""
    if is_url(path):
        from .remote import open_checkpoint as open_remote

        return open_remote(str(path), role, revision=revision, cache_dir=cache_dir, options=remote)
    if revision is not None:
        raise SlicerError(f"{path}: --revision applies to hf:// teachers; this {role} is a local path")
    return Checkpoint.open(path, role)
