"""Execute a plan: chunk every tensor, gather, and stream the bytes into the shards.

Two stages overlap: the calling thread maps teacher spans and gathers chunks (numpy
and torch copies and kernel launches release the GIL), a writer thread appends
finished chunks to the shard files. A fixed pool of output buffers bounds the memory
in flight: ``depth`` buffers of ``chunk_bytes`` each, whatever the size of the model
or of its largest tensor. Host memory is numpy throughout (see host_arrays.py), so the
CPU path runs without importing torch. A gather may finish later (the GPU path):
it then returns a :class:`Pending`, which the writer waits for before writing.

A rotated hidden axis (slicer.run.rotate) runs here too, for it shares the reader, the writer
thread and the chunk budget: its jobs are gathered with the hidden dimension whole and
multiplied, slab by slab (which takes the module a little over 400 lines).
"""
from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io import stop
from ..errors import SlicerError
from .host_arrays import HostArrays, torch_dtype, torch_view
from ..plan.build import Plan, TensorJob
from ..plan.chunks import Chunk, chunks
from ..io.reader import TeacherReader
from ..io.format import DTYPES
from ..selection import IndexSet

if TYPE_CHECKING:
    from ..io.writer import OutputDir, ShardWriter
    from .rotate import Op, Rotation

DEFAULT_CHUNK_BYTES = 32 << 20
PIPELINE_DEPTH = 3

# gather(src, index, out): numpy arrays or torch tensors, as the backend's host arrays
# say. Returns when ``out`` holds the chunk, or a Pending that completes it later.
Gather = Callable[[Any, Sequence, Any], Any]


class Pending:
    """A gather still running (on a device); ``wait()`` returns once ``out`` holds it."""

    def wait(self) -> None:
        raise NotImplementedError


def wait_for(result: object) -> None:
    if isinstance(result, Pending):
        result.wait()


class Engine:
    def __init__(self, gather: Gather, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES, depth: int = PIPELINE_DEPTH,
                 device: str = "cpu", arrays: str = "torch", rotation: "Rotation | None" = None):
        self.gather = gather
        self.rotation = rotation  # a rotated hidden axis (slicer.run.rotate): its jobs are multiplied, not gathered
        self.chunk_bytes = max(chunk_bytes, 16)  # a chunk holds at least one element of any dtype
        self.depth = depth
        self.device = device
        self.arrays = HostArrays(arrays)
        self._index_tensors: dict[tuple[str, int, int], Any] = {}

    @property
    def budget(self) -> int:
        """Bytes per chunk: the GPU path may have lowered its own (out of device memory)."""
        lowered = getattr(self.gather, "chunk_bytes", None)
        return max(16, self.chunk_bytes if lowered is None else min(self.chunk_bytes, lowered))

    def run(self, plan: Plan, output: OutputDir, on_bytes: Callable[[int], None] = lambda n: None,
            on_tensor: Callable[[], None] = lambda: None) -> int:
        """Write every shard of the plan not already done into ``output``'s staging
        folder (each recorded there when complete). Returns the teacher bytes read."""
        free: queue.Queue = queue.Queue()
        for _ in range(self.depth):
            free.put(_pool_buffer(self.chunk_bytes, pinned=self.device == "cuda"))
        work: queue.Queue = queue.Queue(maxsize=self.depth)
        writer = _WriterThread(work, free, on_bytes, on_tensor, output.record_done)
        writer.start()
        bytes_read = 0
        out: ShardWriter | None = None
        try:
            with self.open_reader(plan, skip_shards=output.done) as reader:
                try:
                    for shard in plan.shards:
                        stop.check()
                        if shard.filename in output.done:  # completed by the run we resume
                            on_bytes(shard.size)
                            for _ in shard.jobs:
                                on_tensor()
                            continue
                        out = output.shard(shard.filename, shard.size)
                        writer.submit(("open", out))
                        writer.submit(("bytes", shard.header, None))
                        for job in shard.jobs:
                            stop.check()  # Ctrl-C: between tensors and chunks only (slicer.io.stop)
                            bytes_read += self._run_job(job, reader, writer, free)
                            writer.submit(("tensor",))
                        writer.submit(("finish", out))
                    writer.submit(None)
                    writer.join()
                    writer.raise_error()
                    _check_teacher(reader)  # every byte read was the teacher's as planned
                except Exception as e:
                    # A teacher that changed under us explains a short read or a bad chunk best.
                    try:
                        _check_teacher(reader)
                    except SlicerError as changed:
                        raise changed from e
                    raise
        finally:
            writer.stop()
            if out is not None:  # opened here but maybe never reached the writer: close it
                out.abort()
        writer.raise_error()
        return bytes_read

    def open_reader(self, plan: Plan, skip_shards=(), whole_copies: bool = True) -> TeacherReader:
        """The teacher's reader: short-lived maps of local files, or (a remote teacher) a
        reader that fetches the plan's kept rows ahead of the engine, in the order ``run``
        (``whole_copies``) or ``tensor`` (not) asks for them."""
        return plan.teacher.source.plan_reader(plan, skip_shards, self.chunk_bytes, whole_copies)

    def _run_job(self, job: TensorJob, reader: TeacherReader, writer: "_WriterThread", free: queue.Queue) -> int:
        op = self.rotation.ops.get(job.name) if self.rotation is not None else None
        if op is not None:
            touched = 0
            for part, values in self._rotated(job, op, reader):
                touched += part
                writer.submit(("bytes", values.reshape(-1).view(torch_dtype("U8")).numpy(), None))
                stop.check()
            return touched
        if job.is_copy:
            if reader.streams_copies:  # remote: the bytes come as buffers, not from a file descriptor
                for block in reader.copy_blocks(job.source):
                    writer.submit(("bytes", block, None))
            else:
                writer.submit(("copy", reader.fd(job.source.path), job.source.offset, job.nbytes))
            return job.nbytes
        out_size = DTYPES[job.dtype].itemsize
        touched = 0
        buf = None

        def pool_buffer(chunk: Chunk, cast: bool):
            nonlocal buf
            buf = writer.take(free)  # handed back to the pool by the writer once written
            return self.arrays.typed(buf[:math.prod(chunk.out_shape) * out_size], job.dtype, cast).reshape(chunk.out_shape)

        for chunk, _, done in self.select(job, reader, pool_buffer):
            touched += _bytes_touched(job, chunk)
            writer.submit(("bytes", buf, math.prod(chunk.out_shape) * out_size, done))
            stop.check()  # after the hand-over: the writer owns the buffer (and waits for its device copy)
        return touched

    def tensor(self, job: TensorJob, reader: TeacherReader):
        """One whole student tensor as a torch tensor on the engine's device (the streaming
        API's unit of work)."""
        op = self.rotation.ops.get(job.name) if self.rotation is not None else None
        if op is not None:
            import torch

            parts = [values for _, values in self._rotated(job, op, reader)]
            return torch.cat([p.reshape(-1) for p in parts]).view(job.shape).to(self.device)
        return self._gathered(job, reader)

    def _gathered(self, job: TensorJob, reader: TeacherReader):
        """``tensor``, gathered (never rotated)."""
        out_size = DTYPES[job.dtype].itemsize
        nbytes = math.prod(job.shape) * out_size
        if self.device == "cpu":  # host bytes, typed the backend's way chunk by chunk
            raw = np.empty(nbytes, dtype=np.uint8)
        else:
            import torch

            raw = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        done = 0

        def into_full(chunk: Chunk, cast: bool):
            nonlocal done
            n = math.prod(chunk.out_shape) * out_size
            part = raw[done:done + n]
            done += n
            view = self.arrays.typed(part, job.dtype, cast) if self.device == "cpu" else torch_view(part, job.dtype, cast)
            return view.reshape(chunk.out_shape)

        for _, _, result in self.select(job, reader, into_full):
            wait_for(result)
        return torch_view(raw, job.dtype).view(job.shape)

    def _rotated(self, job: TensorJob, op: "Op", reader: TeacherReader):
        """A rotated job's student values, slab by slab in output order, as host torch tensors:
        (teacher bytes read, values)."""
        import time

        from . import rotate

        dtype = rotate.out_dtype(job)
        if op.kind == "fill":
            yield 0, rotate.fill(op, job.shape, dtype)
            return
        start = time.perf_counter()
        for part in rotate.slabs(rotate.whole(job, op, self.rotation.d), op, self.budget):
            x = self._gathered(part, reader)
            yield part.bytes_to_read, rotate.apply(self.rotation, op, x, self.device, dtype)
            self.rotation.seconds += time.perf_counter() - start
            start = time.perf_counter()

    def select(self, job: TensorJob, reader: TeacherReader,
               destination: Callable[[Chunk, bool], Any]) -> Iterator[tuple[Chunk, Any, object]]:
        """Gather every chunk of a job into ``destination(chunk, cast)``, in output order.
        Yields (chunk, out, what the gather returned: a Pending or not)."""
        if job.dequant is not None:
            yield from self._dequantized(job, reader, destination)
            return
        cast = job.dtype != job.source.dtype
        for chunk in chunks(job, self.budget):
            out = destination(chunk, cast)  # first: it may wait; the span is checked and read right away
            rows = {"rows": (chunk.span_shape[0], chunk.index[0])} if chunk.span_shape and getattr(reader, "reads_rows", False) else {}
            raw = reader.map(job.source, chunk.first, chunk.count, prefetch=chunk.dense, **rows)  # uint8 bytes
            span = self.arrays.typed(raw, job.source.dtype, cast).reshape(chunk.span_shape)
            try:
                result = self.gather(span, self._index(job, chunk), out)
            except SlicerError:
                raise
            except (RuntimeError, ValueError) as e:
                raise SlicerError(f"{job.source.path}: selecting tensor {job.source.name!r} failed: {e}") from e
            del span, raw  # unmaps the teacher span before the next one is mapped
            yield chunk, out, result

    def _dequantized(self, job: TensorJob, reader: TeacherReader,
                     destination: Callable[[Chunk, bool], Any]) -> Iterator[tuple[Chunk, Any, object]]:
        """A job whose values are dequantized from the teacher's stored tensors (slicer.run.dequant), on the
        CPU whatever the device: chunks sized so that the temporaries fit the chunk budget too."""
        import torch

        from . import dequant
        from ..io.format import BITS_DTYPE

        out_dtype = torch_dtype(job.dtype)
        budget = max(16, self.chunk_bytes * DTYPES[job.dtype].itemsize // dequant.BYTES_PER_ELEMENT)

        last: dict[str, tuple[int, int, torch.Tensor]] = {}

        def read(info, first: int, count: int) -> torch.Tensor:
            # Chunks of one packed expert read the same span (a chunk is a range of its inputs, the innermost
            # packed dimension): keep the last span of each tensor mapped rather than map it per chunk.
            got = last.get(info.name)
            if got is None or got[:2] != (first, count):
                got = last[info.name] = (first, count, reader.span(info, first, count, BITS_DTYPE[info.itemsize]))
            return got[2]

        for chunk in chunks(job, budget):
            try:
                got = dequant.values(read, job.dequant, job.source, self._absolute(job, chunk), out_dtype)
            except (RuntimeError, ValueError) as e:
                raise SlicerError(f"{job.source.path}: dequantizing tensor {job.source.name!r} failed: {e}") from e
            out = destination(chunk, True)  # values, not bits: a torch view of the output
            out.copy_(got.reshape(chunk.out_shape))
            yield chunk, out, None

    def _absolute(self, job: TensorJob, chunk: Chunk) -> list:
        """The teacher indices of every dimension a chunk keeps (those before the chunked one: one each)."""
        import torch

        shape = job.source.shape
        k = len(shape) - len(chunk.index)
        strides = [math.prod(shape[d + 1:]) for d in range(len(shape))]
        out = [torch.tensor([chunk.first // strides[d] % shape[d]], dtype=torch.int64) for d in range(k)]
        if k < len(shape):
            lo = chunk.first // strides[k] % shape[k]
            out.append(torch.tensor(list(chunk.index[0]), dtype=torch.int64) + lo)
        out += [torch.as_tensor(self._full_index(job.index[d])) for d in range(k + 1, len(shape))]
        return out

    def _index(self, job: TensorJob, chunk: Chunk) -> list:
        out: list = []
        k = len(job.index) - len(chunk.index)  # the chunked dimension; those after it are whole
        for d, part in enumerate(chunk.index):
            if isinstance(part, range):
                out.append(part)
            elif d == 0:
                out.append(self.arrays.index(part))
            else:
                out.append(self._full_index(job.index[k + d]))
        return out

    def _full_index(self, ix: IndexSet):
        key = (ix.key, ix.t, ix.s)
        t = self._index_tensors.get(key)
        if t is None:
            t = self._index_tensors[key] = self.arrays.index(ix.indices())
        return t


def _check_teacher(reader) -> None:
    """The local teacher's files are as planned (a remote reader checks its ETags itself)."""
    check = getattr(reader, "check_all", None)
    if check is not None:
        check()


def _bytes_touched(job: TensorJob, chunk: Chunk) -> int:
    """Teacher bytes in the rows a chunk keeps (the pages a gather faults in)."""
    itemsize = job.source.itemsize if job.dequant is None else job.dequant.stored_itemsize
    if not chunk.out_shape:
        return int(itemsize)
    return int(chunk.out_shape[0] * math.prod(chunk.span_shape[1:]) * itemsize)


def _pool_buffer(nbytes: int, pinned: bool) -> np.ndarray:
    """One output buffer. Pinned on the GPU path: device-to-host copies land in it directly."""
    if not pinned:
        return np.empty(nbytes, dtype=np.uint8)
    import torch

    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).numpy()  # the array keeps the tensor alive


class _WriterThread(threading.Thread):
    """Runs the shard writes in order; keeps the first error for the main thread."""

    def __init__(self, work: queue.Queue, free: queue.Queue, on_bytes: Callable[[int], None],
                 on_tensor: Callable[[], None], on_shard: Callable[[ShardWriter], None]):
        super().__init__(name="slicer-writer", daemon=True)
        self.work, self.free, self.on_bytes, self.on_shard = work, free, on_bytes, on_shard
        self.on_tensor = on_tensor
        self.error: BaseException | None = None
        self.current: ShardWriter | None = None
        self._stopped = False

    def submit(self, item) -> None:
        self.raise_error()
        self.work.put(item)

    def take(self, free: queue.Queue) -> np.ndarray:
        while True:
            self.raise_error()
            stop.check()  # a slow disk must not hold a Ctrl-C back
            try:
                return free.get(timeout=0.1)
            except queue.Empty:
                if not self.is_alive():
                    raise SlicerError("internal error: writer stopped") from self.error

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Abandon the work: drain the queue so the thread ends, drop a half shard."""
        if self.is_alive():
            self._stopped = True
            self.work.put(None)
            self.join()
        if self.current is not None:
            self.current.abort()

    def run(self) -> None:
        while True:
            item = self.work.get()
            if item is None:
                return
            try:
                if self.error is None and not self._stopped:
                    self._do(item)
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                self.error = e
            finally:
                if item[0] == "bytes" and item[2] is not None:
                    if self.error is not None or self._stopped:
                        _quietly_wait(item[3])  # no device copy may still land in a reused buffer
                    self.free.put(item[1])  # the buffer is free again, written or not

    def _do(self, item) -> None:
        kind = item[0]
        if kind == "open":
            self.current = item[1]
        elif kind == "bytes":
            data, n = item[1], item[2]
            if n is None:
                self.current.write(data)
                self.on_bytes(len(data))
            else:
                wait_for(item[3])  # a device gather still copying into the buffer
                self.current.write(data[:n])
                self.on_bytes(n)
        elif kind == "copy":
            _, fd, offset, n = item
            self.current.copy_from(fd, offset, n)
            self.on_bytes(n)
        elif kind == "tensor":  # every byte of one tensor is written
            self.on_tensor()
        elif kind == "finish":
            self.current.finish()
            self.on_shard(self.current)
            self.current = None


def _quietly_wait(result: object) -> None:
    try:
        wait_for(result)
    except Exception:  # noqa: BLE001 - the run is failing already; the first error is kept
        pass
