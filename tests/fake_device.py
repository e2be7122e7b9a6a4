"""A fake CUDA device layer for slicer.run.cuda_gather.StagedGather, on the CPU.

It has the operations of ``TorchCudaOps`` (streams, events, pinned and device
buffers, copies, kernel launches) with CUDA's ordering rules made as unforgiving as
they may be: work put on a stream does not run when it is issued but only when the
host forces it (synchronizing on an event recorded after it), in stream order. So a
scheduler that refills a staging buffer before that buffer's upload has run, reuses
a device buffer across streams, or lets the writer read an output before its copy
back has run, produces wrong bytes, which the tests see. Fresh buffers are filled
with garbage for the same reason.

It records two logs: ``issued`` (what the scheduler asked for, in order) and ``ran``
(what the device executed, in order), and can raise out-of-memory errors: on any
allocation that would pass ``capacity`` bytes of device memory, or on chosen kernel
launches (``oom_launches``: 1-based launch numbers).
"""
from __future__ import annotations

import threading
import weakref

import torch


class FakeOutOfMemory(RuntimeError):
    pass


class FakeStream:
    def __init__(self, n: int):
        self.n = n
        self.queue: list = []  # (label, fn) not run yet
        self.issued = 0  # ops ever issued on this stream
        self.done = 0  # ops run

    def __repr__(self) -> str:
        return f"stream{self.n}"


class FakeEvent:
    def __init__(self, stream: FakeStream, position: int):
        self.stream, self.position = stream, position


class FakeDevice:
    def __init__(self, capacity: int | None = None, oom_launches: tuple[int, ...] = ()):
        self.capacity = capacity
        self.oom_launches = set(oom_launches)
        self.launches = 0
        self.streams: list[FakeStream] = []
        self.issued: list[tuple] = []
        self.ran: list[tuple] = []
        self.allocated = 0
        self.peak_allocated = 0
        self.ooms = 0
        self._device_ptrs: dict[int, int] = {}  # storage data_ptr -> nbytes, of live device buffers
        self._live: list[tuple[weakref.ref, int]] = []  # device buffers handed out, until dropped
        self._garbage = torch.Generator().manual_seed(99)
        # The engine's writer thread waits on events while the main thread issues work.
        self._lock = threading.RLock()

    # -- streams and events ----------------------------------------------------------------
    def stream(self) -> FakeStream:
        s = FakeStream(len(self.streams))
        self.streams.append(s)
        return s

    def _issue(self, stream: FakeStream, label: tuple, fn) -> None:
        with self._lock:
            stream.queue.append((label, fn))
            stream.issued += 1
            self.issued.append(label)

    def record(self, stream: FakeStream) -> FakeEvent:
        with self._lock:
            self.issued.append(("record", stream.n, stream.issued))
            return FakeEvent(stream, stream.issued)

    def synchronize(self, event: FakeEvent) -> None:
        with self._lock:
            self.issued.append(("sync", event.stream.n, event.position))
            s = event.stream
            while s.done < event.position:
                label, fn = s.queue.pop(0)
                fn()
                s.done += 1
                self.ran.append(label)

    def synchronize_all(self) -> None:
        with self._lock:
            for s in self.streams:
                self.synchronize(FakeEvent(s, s.issued))

    # -- memory ----------------------------------------------------------------------------
    def pinned(self, nbytes: int) -> torch.Tensor:
        self.issued.append(("pinned", nbytes))
        return self._garbage_tensor(nbytes)

    def device_buffer(self, nbytes: int, stream: FakeStream) -> torch.Tensor:
        self.issued.append(("alloc", stream.n, nbytes))
        self._collect()
        if self.capacity is not None and self.allocated + nbytes > self.capacity:
            self.ooms += 1
            raise FakeOutOfMemory(f"fake device: {nbytes} bytes asked, {self.allocated} of {self.capacity} in use")
        buf = self._garbage_tensor(nbytes)
        self._device_ptrs[buf.untyped_storage().data_ptr()] = nbytes
        self._track(buf)
        return buf

    def to_device(self, host: torch.Tensor, stream: FakeStream) -> torch.Tensor:
        self.issued.append(("index", stream.n, host.numel()))
        dev = host.clone()
        self._device_ptrs[dev.untyped_storage().data_ptr()] = 0
        return dev

    def release(self) -> None:
        self.issued.append(("release",))
        self._collect()

    def _garbage_tensor(self, nbytes: int) -> torch.Tensor:
        return torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=self._garbage)

    # Device memory in use: the device buffers whose tensor the scheduler still holds.
    def _track(self, buf: torch.Tensor) -> None:
        ptr = buf.untyped_storage().data_ptr()
        self.allocated += self._device_ptrs[ptr]
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self._live.append((weakref.ref(buf), ptr))

    def _collect(self) -> None:
        alive = []
        for ref, ptr in self._live:
            if ref() is None:
                self.allocated -= self._device_ptrs.pop(ptr, 0)
            else:
                alive.append((ref, ptr))
        self._live = alive

    # -- copies and kernels --------------------------------------------------------------
    def upload(self, dst: torch.Tensor, src: torch.Tensor, stream: FakeStream) -> None:
        self._issue(stream, ("h2d", stream.n, dst.numel()), lambda: dst.copy_(src))

    def download(self, dst: torch.Tensor, src: torch.Tensor, stream: FakeStream) -> None:
        self._issue(stream, ("d2h", stream.n, dst.numel()), lambda: dst.copy_(src))

    def launch(self, kernel, src, index, out, stream: FakeStream) -> None:
        self.launches += 1
        if self.launches in self.oom_launches:
            self.ooms += 1
            raise FakeOutOfMemory(f"fake device: out of memory in launch {self.launches}")
        self._issue(stream, ("kernel", stream.n, out.numel()), lambda: kernel(src, index, out))

    def is_device(self, tensor: torch.Tensor) -> bool:
        return tensor.untyped_storage().data_ptr() in self._device_ptrs

    def is_oom(self, error: BaseException) -> bool:
        return isinstance(error, FakeOutOfMemory)
