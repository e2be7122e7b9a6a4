"""The rotation (pure torch, no files).

``Q`` [d, d] is orthogonal, its columns the eigenvectors of the residual stream's covariance
in decreasing order of variance; ``Qk = Q[:, :k]`` keeps the top k. The engine multiplies each
tensor's hidden-bound dimensions by ``Qk`` (slicer.run.rotate; the roles: ``roles``).
"""
from __future__ import annotations

import hashlib

import torch


def rotation(covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, variances): eigenvectors of a symmetric [d, d] matrix by decreasing eigenvalue, each
    column's sign fixed (its largest-magnitude entry positive) so a rotation is reproducible."""
    values, vectors = torch.linalg.eigh(covariance.double())
    order = torch.argsort(values, descending=True)
    values, vectors = values[order], vectors[:, order]
    pivot = vectors.abs().argmax(0)
    signs = torch.sign(vectors[pivot, torch.arange(vectors.shape[1])])
    signs[signs == 0] = 1
    return vectors * signs, values


def matrix_sha256(q: torch.Tensor) -> str:
    """sha256 of the matrix as little-endian float64, row-major (as saved in rotation.safetensors)."""
    return hashlib.sha256(q.double().contiguous().numpy().tobytes()).hexdigest()
