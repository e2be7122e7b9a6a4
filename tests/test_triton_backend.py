"""The Triton backend (in the interpreter, on the CPU) writes the same bytes as torch.

`--backend triton --device cpu` runs the real kernel under TRITON_INTERPRET=1; every
shard it writes must be byte-identical to the torch backend's, casts included.
"""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import slicer  # noqa: E402


def shard_bytes(out) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.safetensors"))}


@pytest.mark.parametrize("fam,layout,dtype", [
    ("vit", "file", "keep"),             # fp32
    ("convnext_timm", "sharded", "keep"),  # fp32, per-stage depths
    ("llama", "folder", "keep"),           # bf16
    ("llama", "folder", "fp32"),           # fused bf16 -> fp32 cast
    ("zoo", "folder", "keep"),             # every dtype, random bit patterns
    ("zoo_values", "folder", "bf16"),      # casts from every floating dtype
])
def test_triton_backend_writes_the_same_bytes_as_torch(ckpts, tmp_path, fam, layout, dtype):
    teacher, _ = ckpts.teacher(fam, layout)
    template, _ = ckpts.template(fam)
    kw = dict(template=template, dtype=dtype, layer_selection="uniform", max_shard_size="20KB", device="cpu")
    slicer.shrink(teacher, tmp_path / "torch", backend="torch", **kw)
    slicer.shrink(teacher, tmp_path / "triton", backend="triton", chunk_bytes=4096, **kw)
    torch_out, triton_out = shard_bytes(tmp_path / "torch"), shard_bytes(tmp_path / "triton")
    assert torch_out and list(torch_out) == list(triton_out)
    for name in torch_out:
        assert torch_out[name] == triton_out[name], f"{name} differs between backends"
