"""The Python API: ``plan`` (headers only), ``shrink`` (plan, then write) and ``stream``.

Thin keyword wrappers: each builds one :class:`~slicer.plan.request.Request` (its fields
are the options, with their defaults) and hands it on: to :mod:`slicer.job` for a run in
this process, to :mod:`slicer.rotation` for a rotated hidden axis, to
:mod:`slicer.distributed` for shards and executors. The command line builds the same
Request and calls :func:`shrink_request` / :func:`plan_request`.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SlicerError
from .job import Summary, describe_student, plan_student, shrink_here, stream_here
from .plan.build import Plan
from .plan.request import Request

if TYPE_CHECKING:
    import torch

__all__ = ["Request", "Summary", "plan", "plan_request", "shrink", "shrink_request", "stream"]


def plan(teacher: str | Path, **options) -> Plan:
    """Plan a student without reading tensor data: sources, index sets, shards.

    The student comes from ``template`` (a checkpoint whose headers give names and
    shapes) or from a Hugging Face config: ``student_config`` (a config.json) and/or
    ``config_set`` (keys edited into the teacher's config.json, or into student_config).
    ``method``, ``seed``, ``layer_selection``, ``attention``, ``exclude``, ``dtype``,
    ``max_shard_size``, ``quantized`` choose how (see :class:`~slicer.plan.request.Request`
    for every option and its default; ``quantized``: "blocks" keeps an FP8 teacher's whole
    blocks, bits exact, "dequantize" is implied by a float ``dtype``).

    ``teacher`` may be a URL (``hf://ORG/NAME``, ``s3://bucket/prefix/``, any fsspec URL,
    ``https://host/folder/``): only headers are fetched. ``revision`` (hf:// only) pins a
    branch, tag or commit; ``cache_dir`` keeps fetched bytes on disk for later runs;
    ``remote`` tunes the fetching (a dict of :class:`slicer.remote.RemoteOptions` fields).

    ``method="importance"`` / ``layer_selection="importance"`` rank by ``scores`` (a file of
    ``slicer score``), or score the teacher first on ``calibration`` (None: the default text).
    """
    return plan_request(teacher, Request.of(allowed=Request.STUDENT, **options))


def plan_request(teacher: str | Path, request: Request) -> Plan:
    ckpt, student, options = describe_student(teacher, request)
    return plan_student(ckpt, student, options)


def shrink(teacher: str | Path, out: str | Path, **options) -> Summary:
    """Write the student selected from ``teacher`` into the folder ``out``.

    The student is named as for :func:`plan`. Everything is checked (paths, headers,
    shapes) before anything is written; on any error nothing is left in ``out`` and
    the inputs are untouched. A non-empty ``out`` needs ``overwrite=True``, which
    replaces only a previous slicer student's files (proved by their recorded size and
    sha256) and files of the names this run writes (``Summary.replaced`` lists them).
    ``resume=True`` continues an interrupted run into the same ``out`` (completed shards
    that provably did not change are kept), or, over the same finished student, does
    nothing (``Summary.unchanged``). Ctrl-C raises :class:`slicer.errors.Interrupted` (a
    KeyboardInterrupt) saying what ``out`` holds. A remote ``teacher`` (see :func:`plan`) is
    read by range requests of the kept rows only. Importance options as for :func:`plan`
    (scoring runs on ``device``); ``backend``, ``progress``, ``chunk_bytes`` as the CLI's.

    ``hidden="rotate"``: the hidden axis keeps the top principal components of the residual
    stream instead of a subset of its channels (see :mod:`slicer.rotation`;
    ``rotation_weighting``, ``save_rotation``).

    ``correct="writers,lm_head"`` (and ``correct_alpha``): after writing, refit those maps on the
    student's own inputs against the teacher's outputs on ``calibration`` (see
    :mod:`slicer.corrections`); ``Summary.corrections`` is the manifest's record.

    Beyond one machine (see :mod:`slicer.distributed`): ``shards`` (numbers from 1) writes
    only those output shards into ``out`` as a staging folder, for ``slicer finish``;
    ``executor="ray"`` or ``"slurm"`` runs one task per output shard (``executor_options``:
    e.g. ``{"address": ...}`` for Ray, submitit parameters for Slurm) and finishes ``out``.
    """
    return shrink_request(teacher, out, Request.of(**options))


def shrink_request(teacher: str | Path, out: str | Path, request: Request) -> Summary:
    """The one place that chooses how a shrink runs: rotated, distributed, or here."""
    if request.hidden != "select":
        if request.distributed:
            raise SlicerError("--hidden rotate runs in one process: its rotation comes from the calibration forward "
                              "it runs first; drop --shards / --executor")
        from .rotation.shrink import shrink_request as shrink_rotated

        return shrink_rotated(teacher, out, request)
    if request.distributed:
        if request.correct:
            from .corrections.refit import check_request

            check_request(teacher, request)  # refuses: corrections run in one process
        from .distributed import shrink_distributed

        return shrink_distributed(teacher, out, request)
    if not request.correct:
        return shrink_here(teacher, out, request)
    from .corrections.refit import check_request, correct

    which = check_request(teacher, request)
    ranks = request.method == "importance" or request.layer_selection == "importance"
    # the calibration is the refit's too; selection only takes it where it ranks
    summary = shrink_here(teacher, out, request if ranks else request.replace(calibration=None))
    summary.corrections = correct(teacher, out, which, alpha=request.correct_alpha, calibration=request.calibration,
                                  samples=request.samples, seq_len=request.seq_len, device=request.device)
    return summary


def stream(teacher: str | Path, **options) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every student tensor, on ``device``, writing no file.

    For pipelines that feed a training or distillation job directly. The plan is made
    (and checked) before the first tensor is yielded; tensors come in teacher file
    order; memory in flight is one student tensor plus the chunk budget. Options as for
    :func:`plan`, and ``backend``, ``chunk_bytes``.
    """
    allowed = (*Request.STUDENT, "backend", "chunk_bytes")
    return stream_here(teacher, Request.of(allowed=allowed, **options))
