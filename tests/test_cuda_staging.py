"""The GPU path's scheduling (slicer.run.cuda_gather.StagedGather), on the CPU.

A fake device layer (tests/fake_device.py) runs stream work lazily, only when the
host synchronizes on an event recorded after it, and fills fresh buffers with
garbage: a missing wait shows as wrong bytes. Checked here: every chunk equals the
spec's ix_ (every dtype, casts, fp8); the host gathers chunk k+1 while chunk k's
copies and kernel are still queued; a scheduler that skips a wait is caught;
out-of-memory halves the chunk (logged once) until it fits, and below the floor is one
``slicer: error:`` line with nothing left in OUT. On a machine with a GPU the real
device layer runs the same checks.
"""
from __future__ import annotations

import logging

import pytest
import torch

import slicer
from slicer import cli
from slicer.run.backends import Backend
from slicer.run.cuda_gather import StagedGather, make_cuda_gather
from slicer.errors import SlicerError
from slicer.run.torch_gather import gather_torch

from fake_device import FakeDevice
from helpers import assert_bit_equal, gather, random_tensor, read_output

CASES = [
    ((37, 53), [range(0, 37, 3), range(1, 53, 2)]),
    ((37, 53), [[0, 5, 36], range(0, 53, 1)]),
    ((9, 4, 10), [[1, 2, 8], [0, 3], range(0, 10, 2)]),
    ((40,), [range(0, 40, 4)]),
    ((), []),
]
DTYPES = [(torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32), (torch.float8_e4m3fn, torch.bfloat16),
          (torch.int64, torch.int64), (torch.bool, torch.bool)]


def _case(shape, index, dtype, out_dtype, seed=0, device="cpu"):
    src = random_tensor(shape, dtype, torch.Generator().manual_seed(sum(shape) + seed), bits=dtype == out_dtype)
    ix = [i if isinstance(i, range) else torch.tensor(i) for i in index]
    want = gather(src, [list(i) for i in index]).to(out_dtype)
    out = torch.zeros(want.shape, dtype=out_dtype, device=device)
    return src, ix, out, want


@pytest.mark.parametrize("dtype,out_dtype", DTYPES, ids=str)
def test_staged_chunks_in_flight_together_each_equal_ix(dtype, out_dtype):
    staged = StagedGather(gather_torch, FakeDevice())
    runs = []
    for rep in range(3):  # more chunks in flight than slots: staging buffers are reused
        for shape, index in CASES:
            src, ix, out, want = _case(shape, index, dtype, out_dtype, seed=rep)
            runs.append((staged(src, ix, out), out, want, shape))
    for pending, out, want, shape in runs:
        pending.wait()
        assert_bit_equal(out, want, str(shape))


def test_host_gathers_the_next_chunk_while_the_previous_one_is_still_on_the_device():
    dev = FakeDevice()
    staged = StagedGather(gather_torch, dev)
    chunks = [_case((64, 32), [range(0, 64, 2), range(0, 32, 2)], torch.bfloat16, torch.bfloat16, seed=k) for k in range(3)]
    pendings = []
    pendings.append(staged(*chunks[0][:3]))
    pendings.append(staged(*chunks[1][:3]))
    assert dev.ran == []  # chunks 0 and 1 issued (slots 0, 1), nothing forced: all of it may overlap
    pendings.append(staged(*chunks[2][:3]))  # slot 0 again: waits for chunk 0's upload only
    assert dev.ran == [("h2d", 0, 32 * 32)]  # 32 kept rows of 32
    assert [op[0] for op in dev.issued if op[0] in ("h2d", "kernel", "d2h")] == ["h2d", "kernel", "d2h"] * 3
    pendings[1].wait()  # the writer waits for chunk 1: its stream runs, chunk 0's kernel still queued
    assert ("kernel", 0, 32 * 16) not in dev.ran
    assert dev.ran[-3:] == [("h2d", 1, 32 * 32), ("kernel", 1, 32 * 16), ("d2h", 1, 32 * 16)]
    for p, (_, _, out, want) in zip(pendings, chunks):
        p.wait()
        assert_bit_equal(out, want, "chunk")
    streams = [op[1] for op in dev.issued if op[0] == "kernel"]
    assert streams == [0, 1, 0]  # double buffered: chunks alternate between two streams


def test_a_scheduler_that_refills_staging_before_its_upload_ran_is_caught(monkeypatch):
    # Break the scheduler on purpose: forget the upload events. Chunk 0's staging buffer is
    # then overwritten by chunk 2 before its queued upload runs, and the fake shows it.
    import slicer.run.cuda_gather as cg

    monkeypatch.setattr(cg._Slot, "uploaded", property(lambda self: None, lambda self, value: None), raising=False)
    staged = StagedGather(gather_torch, FakeDevice())
    chunks = [_case((64, 32), [range(0, 64, 2), range(0, 32, 2)], torch.bfloat16, torch.bfloat16, seed=k) for k in range(3)]
    pendings = [staged(*c[:3]) for c in chunks]
    for p in pendings:
        p.wait()
    _, _, out, want = chunks[0]
    assert not torch.equal(out.view(torch.int16), want.view(torch.int16))


def test_reading_an_output_before_its_pending_completes_sees_no_data():
    staged = StagedGather(gather_torch, FakeDevice())
    src, ix, out, want = _case((37, 53), [range(0, 37, 3), range(1, 53, 2)], torch.bfloat16, torch.bfloat16)
    pending = staged(src, ix, out)
    assert not out.view(torch.int16).any()  # still zeros: the copy back has not run
    pending.wait()
    assert_bit_equal(out, want, "after wait")


def test_out_of_memory_halves_the_chunk_until_it_fits_and_says_so_once(caplog):
    # Each slot keeps two device buffers (rows in, chunk out); 4 KB of device memory holds a
    # 512-byte chunk in both slots but not the 32 KB one asked for.
    dev = FakeDevice(capacity=4096)
    staged = StagedGather(gather_torch, dev, floor_bytes=256)
    with caplog.at_level(logging.WARNING, logger="slicer"):
        results = []
        for seed in range(3):
            src, ix, out, want = _case((256, 128), [range(0, 256, 2), range(0, 128, 1)], torch.bfloat16, torch.bfloat16,
                                       seed=seed)
            results.append((staged(src, ix, out), out, want))
        for pending, out, want in results:
            pending.wait()
            assert_bit_equal(out, want, "halved")
    assert dev.ooms >= 1 and dev.peak_allocated <= 4096
    assert staged.chunk_bytes is not None and staged.chunk_bytes <= 1024
    warnings = [r for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_out_of_memory_in_one_kernel_launch_is_retried_exactly():
    dev = FakeDevice(oom_launches=(2,))
    staged = StagedGather(gather_torch, dev, floor_bytes=64)
    runs = [_case((64, 40), [[0, 3, 9, 20, 63], range(0, 40, 3)], torch.float32, torch.bfloat16, seed=k) for k in range(3)]
    pendings = [staged(*r[:3]) for r in runs]
    for p, (_, _, out, want) in zip(pendings, runs):
        p.wait()
        assert_bit_equal(out, want, "retried")
    assert dev.ooms == 1


def test_out_of_memory_below_the_floor_is_a_slicer_error():
    staged = StagedGather(gather_torch, FakeDevice(capacity=100), floor_bytes=1 << 20)
    src, ix, out, _ = _case((256, 128), [range(0, 256, 2), range(0, 128)], torch.bfloat16, torch.bfloat16)
    with pytest.raises(SlicerError, match="CUDA out of memory"):
        staged(src, ix, out)


def _fake_gpu(monkeypatch, dev: FakeDevice, **kw) -> None:
    """Route shrink through StagedGather on the fake device (the engine's pool unpinned)."""
    def choose(device="auto", backend="auto"):
        return Backend("torch", "cpu", StagedGather(gather_torch, dev, **kw))

    monkeypatch.setattr("slicer.run.backends.choose", choose)


@pytest.mark.parametrize("dtype", ["keep", "fp32"])
def test_shrink_through_the_staged_path_writes_the_cpu_student(ckpts, tmp_path, monkeypatch, dtype):
    teacher, _ = ckpts.teacher("llama")
    template, _ = ckpts.template("llama")
    want = read_output(slicer.shrink(teacher, tmp_path / "cpu", template=template, dtype=dtype, device="cpu").out)[0]
    dev = FakeDevice()
    _fake_gpu(monkeypatch, dev)
    slicer.shrink(teacher, tmp_path / "gpu", template=template, dtype=dtype, chunk_bytes=2048)
    got = read_output(tmp_path / "gpu")[0]
    assert dev.launches > len(got)  # many chunks, so staging buffers were reused
    assert got.keys() == want.keys()
    for name in want:
        assert_bit_equal(got[name], want[name], name)


def test_shrink_on_a_nearly_full_device_halves_chunks_and_stays_exact(ckpts, tmp_path, monkeypatch, caplog):
    teacher, _ = ckpts.teacher("llama")
    template, _ = ckpts.template("llama")
    want = read_output(slicer.shrink(teacher, tmp_path / "cpu", template=template, device="cpu").out)[0]
    dev = FakeDevice(capacity=6000)
    _fake_gpu(monkeypatch, dev, floor_bytes=64)
    with caplog.at_level(logging.WARNING, logger="slicer"):
        slicer.shrink(teacher, tmp_path / "gpu", template=template, chunk_bytes=8192)
    got = read_output(tmp_path / "gpu")[0]
    for name in want:
        assert_bit_equal(got[name], want[name], name)
    assert dev.ooms >= 1 and dev.peak_allocated <= 6000
    assert sum("out of memory" in r.getMessage() for r in caplog.records) == 1


def test_cli_reports_a_device_too_full_as_one_error_line_and_leaves_out_empty(ckpts, tmp_path, monkeypatch, capsys):
    teacher, _ = ckpts.teacher("llama")
    template, _ = ckpts.template("llama")
    _fake_gpu(monkeypatch, FakeDevice(capacity=16), floor_bytes=4096)
    out = tmp_path / "out"
    code = cli.main(["shrink", str(teacher), str(out), "--template", str(template), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("slicer: error: CUDA out of memory") and len(err.strip().splitlines()) == 1, err
    assert not out.exists() or not [p for p in out.iterdir()], sorted(out.iterdir())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape,index", CASES)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gpu_path_equals_ix(shape, index, backend):
    from slicer.run.backends import choose

    staged = choose("cuda", backend).gather
    for device in ("cpu", "cuda"):  # out in host memory, or staying on the device
        runs = [_case(shape, index, torch.bfloat16, torch.bfloat16, seed=k, device=device) for k in range(3)]
        pendings = [staged(*r[:3]) for r in runs]
        for p, (_, _, out, want) in zip(pendings, runs):
            p.wait()
            assert_bit_equal(out.cpu(), want, str(shape))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_out_of_memory_is_halved_on_the_real_device():
    """A device layer that fails the first device allocation larger than 64 KB, once."""
    from slicer.run.cuda_gather import TorchCudaOps

    class Tight(TorchCudaOps):
        failed = False

        def device_buffer(self, nbytes, stream):
            if nbytes > 65536 and not Tight.failed:
                Tight.failed = True
                raise torch.cuda.OutOfMemoryError("injected")
            return super().device_buffer(nbytes, stream)

    staged = make_cuda_gather(gather_torch, ops=Tight(), floor_bytes=4096)
    src, ix, out, want = _case((512, 256), [range(0, 512, 2), range(0, 256)], torch.bfloat16, torch.bfloat16)
    staged(src, ix, out).wait()
    assert_bit_equal(out, want, "halved on the GPU")
