"""The rotation and what it does to one tensor (pure torch, no files).

``Q`` [d, d] is orthogonal, its columns the eigenvectors of the residual stream's covariance
in decreasing order of variance; ``Qk = Q[:, :k]`` keeps the top k. Each tensor's hidden-bound
dimension is multiplied by ``Qk`` (see ``family`` for the roles). Rows are independent for
embeddings and readers, so they are transformed in chunks of rows: the output tensor is the
only full-size buffer.
"""
from __future__ import annotations

import hashlib

import torch

from .family import Role

CHUNK_ELEMENTS = 1 << 22  # input rows per chunk: ~32 MB of float64


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


def apply(role: Role, tensor: torch.Tensor, qk: torch.Tensor, gains: dict[str, torch.Tensor],
          site_gain: dict, *, compute: torch.dtype = torch.float64) -> torch.Tensor:
    """The student's tensor for one teacher tensor. ``qk`` [d, k]; ``gains``: the teacher's norm
    gain per site (folded into its readers); ``site_gain``: the student's gain per norm site."""
    k = qk.shape[1]
    if role.kind == "norm":
        return torch.as_tensor(site_gain[role.site], dtype=torch.float64).expand(k).to(tensor.dtype).clone()
    if role.kind == "writer":  # [d] or [d, n]: Q^T @ W
        out = qk.to(compute).T @ tensor.to(compute)
        return out.to(tensor.dtype)
    if role.kind in ("embed", "reader"):  # [r, d] @ (diag(g) @ Qk)
        right = qk.to(compute)
        if role.kind == "reader":
            right = gains[role.site].to(compute)[:, None] * right
        out = torch.empty((tensor.shape[0], k), dtype=tensor.dtype)
        step = max(1, CHUNK_ELEMENTS // max(1, tensor.shape[1]))
        for r in range(0, tensor.shape[0], step):
            out[r:r + step] = (tensor[r:r + step].to(compute) @ right).to(tensor.dtype)
        return out
    return tensor


def output_shape(role: Role, shape: tuple[int, ...], k: int) -> tuple[int, ...]:
    if role.kind == "norm":
        return (k,)
    if role.kind == "writer":
        return (k, *shape[1:])
    if role.kind in ("embed", "reader"):
        return (shape[0], k)
    return tuple(shape)
