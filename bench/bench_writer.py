"""The shard writer: ShardWriter appending N MB in engine-sized chunks, with and without sha256.

    pytest bench/bench_writer.py --benchmark-only

Writes go to the page cache of the filesystem holding pytest's tmp dir (nothing is
fsync'd, as slicer shrink does not); each round creates, fills, finishes (renames)
and deletes one shard. Bytes moved = bytes written.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from benchutil import report  # noqa: E402
from slicer.io.writer import ShardWriter  # noqa: E402

CHUNK = 32 << 20  # the engine's default chunk


@pytest.mark.parametrize("checksum", [True, False], ids=["sha256", "no-checksum"])
@pytest.mark.parametrize("mb", [64, 256])
def test_shard_writer(benchmark, tmp_path, mb, checksum):
    benchmark.group = f"ShardWriter {mb} MB"
    total = mb << 20
    block = torch.empty(CHUNK, dtype=torch.uint8).fill_(0x3C).numpy()
    path = tmp_path / "model.safetensors"

    def write():
        w = ShardWriter(path, total, checksum=checksum)
        left = total
        while left:
            n = min(left, CHUNK)
            w.write(block[:n])
            left -= n
        w.finish()
        path.unlink()

    benchmark.pedantic(write, rounds=5, warmup_rounds=1)
    report(benchmark, total)
