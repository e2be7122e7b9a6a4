"""Which bytes to fetch: the plan's kept rows as spans, coalesced into requests. Pure.

The engine asks for teacher spans in a fixed order (shards, jobs, chunks; see
``engine.chunks``); of each span the gather reads only the rows that dimension 0 keeps.
So the plan alone says every byte range a run needs, in order: :func:`plan_spans` lists
them, :func:`coalesce` turns them into requests, merging ranges whose gap is at most
``gap`` bytes (the gap is fetched and dropped, or lands in the span's buffer where it
falls inside a span) and splitting runs longer than ``max_bytes``.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from ..plan.chunks import Chunk, chunks
from ..plan.build import Plan

# Gap bytes a run may fetch beyond what it keeps, as a share of the kept bytes.
DEFAULT_OVERFETCH = 0.1


@dataclass(eq=False)
class Span:
    """``nbytes`` teacher bytes of ``file`` from ``offset``; only ``runs`` (start, length; relative) are needed."""

    file: Hashable
    offset: int
    nbytes: int
    runs: list[tuple[int, int]]

    @property
    def kept_bytes(self) -> int:
        return sum(n for _, n in self.runs)


@dataclass(eq=False)
class Request:
    """Bytes ``start..end-1`` of ``file``; ``pieces`` say where each part goes, in order:
    (span, offset in the span, length), span None for a gap between spans (dropped)."""

    file: Hashable
    start: int
    end: int
    pieces: list[tuple[Span | None, int, int]] = field(default_factory=list)
    seals: list[Span] = field(default_factory=list)  # spans whose last bytes this request carries

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def row_runs(rows: range | Sequence[int], row_bytes: int) -> list[tuple[int, int]]:
    """Byte runs (start, length) of the kept rows of a span: consecutive rows make one run."""
    if isinstance(rows, range) and rows.step == 1:
        return [(rows.start * row_bytes, len(rows) * row_bytes)] if len(rows) else []
    runs: list[tuple[int, int]] = []
    for r in rows:
        start = r * row_bytes
        if runs and runs[-1][0] + runs[-1][1] == start:
            runs[-1] = (runs[-1][0], runs[-1][1] + row_bytes)
        else:
            runs.append((start, row_bytes))
    return runs


def chunk_span(file: Hashable, tensor_offset: int, itemsize: int, chunk: Chunk) -> Span:
    """The span the engine maps for ``chunk`` of a tensor at ``tensor_offset``, with its kept rows."""
    offset = tensor_offset + chunk.first * itemsize
    nbytes = chunk.count * itemsize
    if not chunk.span_shape:  # a scalar
        return Span(file, offset, nbytes, [(0, nbytes)])
    row_bytes = math.prod(chunk.span_shape[1:]) * itemsize
    return Span(file, offset, nbytes, row_runs(chunk.index[0], row_bytes))


def copy_spans(file: Hashable, offset: int, nbytes: int, chunk_bytes: int) -> Iterator[Span]:
    """A tensor kept whole, in pieces of at most ``chunk_bytes`` (the writer's unit)."""
    for pos in range(0, nbytes, chunk_bytes):
        n = min(chunk_bytes, nbytes - pos)
        yield Span(file, offset + pos, n, [(0, n)])


def plan_spans(plan: Plan, chunk_bytes: int, skip_shards: Iterable[str] = (), whole_copies: bool = True) -> Iterator[Span]:
    """Every span the engine will ask for, in its order (shards in ``skip_shards`` are not read).

    ``whole_copies``: tensors kept whole come as blocks (``Engine.run`` streams them to
    the writer); else as chunks like every other tensor (``Engine.tensor``)."""
    skip = set(skip_shards)
    for shard in plan.shards:
        if shard.filename in skip:
            continue
        for job in shard.jobs:
            info = job.source
            if job.dequant is not None:
                continue  # dequantized jobs fetch their weight and scale spans on demand (RemoteReader.span)
            if job.is_copy and whole_copies:
                yield from copy_spans(info.path, info.offset, job.nbytes, chunk_bytes)
            else:
                for chunk in chunks(job, chunk_bytes):
                    yield chunk_span(info.path, info.offset, info.itemsize, chunk)


def coalesce(spans: Iterable[Span], gap: int, max_bytes: int, overfetch: float = DEFAULT_OVERFETCH,
             policy=None) -> Iterator[Request]:
    """Requests that fetch every kept run of ``spans``, in order.

    A run joins the open request when it is in the same file, starts at or after the
    request's end, no more than ``gap`` bytes later, the request stays within
    ``max_bytes``, and the gap bytes bridged so far stay within ``overfetch`` times the
    kept bytes so far (so a run never fetches more than 1 + overfetch times what it keeps,
    whatever the gaps: keeping every other 8 kB row would otherwise fetch twice the bytes).
    Gap bytes inside one span are written into that span's buffer (they are its unkept
    rows); gap bytes between spans are dropped. ``policy`` (``adaptive.AdaptivePolicy``), when
    given, replaces ``gap`` and ``overfetch`` before each run (``policy.limits(run_bytes)``)
    with what it has measured, and ``max_bytes`` with ``policy.max_bytes`` where that is set;
    it is told of every request made (``policy.issued(nbytes)``). Bytes bridged without a
    budget (``overfetch`` infinite) are not counted against a later finite one.
    """
    req: Request | None = None
    kept = bridged = 0
    default_max = max_bytes
    for span in spans:
        for rel, length in span.runs:
            if policy is not None:
                gap, overfetch = policy.limits(length)
                max_bytes = policy.max_bytes or default_max
            start = span.offset + rel
            end = start + length
            kept += length
            while start < end:
                if req is not None and not (req.file == span.file and req.end <= start <= req.end + gap
                                            and start - req.start < max_bytes
                                            and bridged + (start - req.end) <= overfetch * kept):
                    if policy is not None:
                        policy.issued(req.nbytes)
                    yield req
                    req = None
                if req is not None and overfetch != math.inf:  # only a budget counts what it bridged
                    bridged += start - req.end
                if req is None:
                    req = Request(span.file, start, start)
                piece_end = min(end, req.start + max_bytes)
                _add(req, span, start, piece_end)
                start = piece_end
        # runs are never empty, so the open request now holds this span's last bytes
        req.seals.append(span)
    if req is not None:
        if policy is not None:
            policy.issued(req.nbytes)
        yield req


def _add(req: Request, span: Span, start: int, end: int) -> None:
    """Append span bytes start..end-1 (absolute) to the request, bridging the gap before them."""
    if start > req.end:
        prev = req.pieces[-1][0] if req.pieces else None
        if prev is span:  # the gap is inside the span: fill it into the span's buffer
            s, off, n = req.pieces[-1]
            req.pieces[-1] = (s, off, n + start - req.end)
        else:
            req.pieces.append((None, 0, start - req.end))
    if req.pieces and req.pieces[-1][0] is span and span.offset + req.pieces[-1][1] + req.pieces[-1][2] == start:
        s, off, n = req.pieces[-1]
        req.pieces[-1] = (s, off, n + end - start)
    else:
        req.pieces.append((span, start - span.offset, end - start))
    req.end = end
