"""The GPU path: chunks staged through pinned memory, double-buffered on CUDA streams.

Only the rows that dimension 0 keeps cross the bus: they are gathered on the host
into a pinned staging buffer (a strided or indexed copy of whole rows), copied to the
device, and the device kernel selects the other dimensions (and casts, if asked)
into a device buffer that is copied back into the caller's output (the engine's
pinned pool), or straight into a device tensor (the streaming API).

Each chunk goes to the next of ``slots`` slots (two: double buffering). A slot owns a
CUDA stream, a pinned staging buffer and two device buffers (rows in, chunk out). On
its stream the chunk's host-to-device copy, kernel and device-to-host copy run in
order, so a slot's device buffers are reused safely by its next chunk; the host
waits only for the *upload* of a slot's previous chunk before it refills the slot's
staging buffer. So while chunk k copies up, selects and copies back on its stream, the
host gathers chunk k+1's rows into the other slot, and the writer thread writes chunk
k-1: each call returns a :class:`Pending` whose ``wait()`` the writer calls before it
reads the output. Host memory is bounded by the slots' staging buffers plus the
engine's pool, device memory by the slots' buffers: each at most one chunk.

A CUDA out-of-memory error halves the chunk and retries the same chunk in pieces,
down to ``floor_bytes``; the first halving is logged once; below the floor it is a
SlicerError. The engine then cuts later chunks to the halved size (``chunk_bytes``).

Every CUDA call goes through a device layer (:class:`TorchCudaOps`); the tests drive
the same scheduler with a fake layer that runs stream work lazily, records the order
of operations and injects out-of-memory errors (tests/fake_device.py).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from .engine import Gather, Pending
from ..errors import SlicerError

log = logging.getLogger("slicer")

SLOTS = 2
FLOOR_BYTES = 1 << 20  # below this a chunk is not halved again: the device is too full


class TorchCudaOps:
    """The device layer on torch.cuda: streams, events, pinned and device buffers, copies."""

    def __init__(self, device: str = "cuda"):
        import torch

        self.torch = torch
        self.device = torch.device(device)

    def stream(self):
        return self.torch.cuda.Stream(device=self.device)

    def record(self, stream):
        event = self.torch.cuda.Event()
        event.record(stream)
        return event

    def synchronize(self, event) -> None:
        event.synchronize()  # releases the GIL while it waits

    def synchronize_all(self) -> None:
        self.torch.cuda.synchronize(self.device)

    def pinned(self, nbytes: int):
        return self.torch.empty(nbytes, dtype=self.torch.uint8, pin_memory=True)

    def device_buffer(self, nbytes: int, stream):
        # Allocated on the slot's stream, so the caching allocator never hands the block to
        # work on another stream while this one may still use it.
        with self.torch.cuda.stream(stream):
            return self.torch.empty(nbytes, dtype=self.torch.uint8, device=self.device)

    def to_device(self, host, stream):
        with self.torch.cuda.stream(stream):
            return host.to(self.device)  # once per index set: a blocking copy is fine

    def upload(self, dst, src, stream) -> None:
        with self.torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)

    def download(self, dst, src, stream) -> None:
        with self.torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)

    def launch(self, kernel: Gather, src, index, out, stream) -> None:
        with self.torch.cuda.stream(stream):  # torch ops and Triton launches use the current stream
            kernel(src, index, out)

    def is_device(self, tensor) -> bool:
        return tensor.is_cuda

    def is_oom(self, error: BaseException) -> bool:
        return isinstance(error, self.torch.cuda.OutOfMemoryError)

    def release(self) -> None:
        self.torch.cuda.empty_cache()


class _Done(Pending):
    def __init__(self, ops, events: Sequence):
        self.ops, self.events = ops, list(events)

    def wait(self) -> None:
        for event in self.events:
            self.ops.synchronize(event)
        self.events.clear()


class _Slot:
    def __init__(self, stream):
        self.stream = stream
        self.uploaded = None  # event: the staging buffer's last upload is done
        self.buffers: dict[str, object] = {}  # "up" (pinned), "src", "out" (device): uint8, grown on demand


class StagedGather:
    """A Gather for the GPU path: ``self(src, index, out)`` returns a :class:`Pending`."""

    def __init__(self, kernel: Gather, ops, *, slots: int = SLOTS, floor_bytes: int = FLOOR_BYTES):
        self.kernel = kernel
        self.ops = ops
        self.floor_bytes = floor_bytes
        self.chunk_bytes: int | None = None  # set once out-of-memory has halved the chunks
        self._slots = [_Slot(ops.stream()) for _ in range(slots)]
        self._next = 0
        self._device_index: dict[int, tuple[object, object]] = {}  # id(host index) -> (host, device copy)
        self._warned = False

    def __call__(self, src, index: Sequence, out) -> Pending:
        try:
            return self._submit(src, index, out)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if not self.ops.is_oom(e):
                raise
            return self._retry_smaller(src, index, out, e)

    # -- one chunk ------------------------------------------------------------------------

    def _submit(self, src, index: Sequence, out) -> Pending:
        ops = self.ops
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        rows = index[0] if index else None
        kept = tuple(src.shape) if rows is None else (len(rows), *src.shape[1:])
        nbytes = math.prod(kept) * src.element_size()
        if slot.uploaded is not None:
            ops.synchronize(slot.uploaded)  # the staging buffer is read by that upload until then
        up = self._buffer(slot, "up", nbytes).view(src.dtype).view(kept)
        _host_rows(src, rows, up)
        dev_src = self._buffer(slot, "src", nbytes).view(src.dtype).view(kept)
        ops.upload(dev_src, up, slot.stream)
        slot.uploaded = ops.record(slot.stream)
        rest = ([range(0, len(rows), 1)] if rows is not None else [])
        rest += [ix if isinstance(ix, range) else self._on_device(ix, slot.stream) for ix in index[1:]]
        if ops.is_device(out):  # the streaming API: the result stays on the device
            ops.launch(self.kernel, dev_src, rest, out, slot.stream)
        else:
            dev_out = self._buffer(slot, "out", out.numel() * out.element_size()).view(out.dtype).view(out.shape)
            ops.launch(self.kernel, dev_src, rest, dev_out, slot.stream)
            ops.download(out, dev_out, slot.stream)
        return _Done(ops, [ops.record(slot.stream)])

    def _buffer(self, slot: _Slot, name: str, nbytes: int):
        buf = slot.buffers.get(name)
        if buf is None or buf.numel() < nbytes:
            slot.buffers.pop(name, None)  # freed first: the new one may take its memory
            size = max(nbytes, 1)
            buf = slot.buffers[name] = self.ops.pinned(size) if name == "up" else self.ops.device_buffer(size, slot.stream)
        return buf[:nbytes]

    def _on_device(self, ix, stream):
        found = self._device_index.get(id(ix))
        if found is None or found[0] is not ix:
            found = self._device_index[id(ix)] = (ix, self.ops.to_device(ix, stream))
        return found[1]

    # -- out of memory ----------------------------------------------------------------------

    def _retry_smaller(self, src, index: Sequence, out, error: BaseException) -> Pending:
        size = max(out.numel() * out.element_size(), _kept_bytes(src, index))
        half = size // 2
        if half < self.floor_bytes or not index or len(index[0]) < 2:
            raise SlicerError(f"CUDA out of memory with a chunk of {_mb(size)} (not halved below {_mb(self.floor_bytes)}); "
                              "free GPU memory, lower --chunk-mb, or use --device cpu") from error
        if not self._warned:
            log.warning("CUDA out of memory with a chunk of %s: halving the chunk and retrying (down to %s)",
                        _mb(size), _mb(self.floor_bytes))
            self._warned = True
        self.ops.synchronize_all()  # in-flight chunks finish before their buffers are dropped
        for slot in self._slots:
            slot.buffers.clear()
            slot.uploaded = None
        self.ops.release()
        self.chunk_bytes = half if self.chunk_bytes is None else min(self.chunk_bytes, half)
        rows = index[0]
        n = len(rows)
        per_piece = max(1, n // 2)
        events: list = []
        for a in range(0, n, per_piece):
            b = min(a + per_piece, n)
            piece = self(src, [rows[a:b], *index[1:]], out[a:b])  # through __call__: halves again if need be
            events += piece.events
        return _Done(self.ops, events)


def _host_rows(src, rows, up) -> None:
    """The kept rows of ``src`` into the pinned ``up``, as bits (index_select knows no fp8)."""
    if rows is None:
        up.copy_(src)
    elif isinstance(rows, range):
        up.copy_(src[rows.start:rows.stop:rows.step])
    else:
        import torch

        from ..io.format import BITS_DTYPE

        bits = BITS_DTYPE[src.element_size()]
        torch.index_select(src.view(bits), 0, rows, out=up.view(bits))


def _kept_bytes(src, index: Sequence) -> int:
    if not index:
        return src.element_size()
    return len(index[0]) * math.prod(src.shape[1:]) * src.element_size()


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def make_cuda_gather(kernel: Gather, device: str = "cuda", *, ops=None, slots: int = SLOTS,
                     floor_bytes: int = FLOOR_BYTES) -> StagedGather:
    """The GPU path around a device kernel; ``ops`` replaces the device layer (tests)."""
    return StagedGather(kernel, ops if ops is not None else TorchCudaOps(device), slots=slots, floor_bytes=floor_bytes)
