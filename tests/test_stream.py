"""slicer.stream yields the same tensors that shrink writes, without writing files."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

import slicer

from helpers import assert_bit_equal


@pytest.mark.parametrize("fam,backend,dtype", [
    ("llama", "torch", "keep"),
    ("llama", "numpy", "keep"),
    ("zoo", "numpy", "keep"),
    ("convnext_orig", "numpy", "fp16"),
    ("zoo", "torch", "keep"),
    ("convnext_orig", "torch", "fp16"),
    ("llama", "triton", "fp32"),
])
def test_stream_yields_what_shrink_writes(ckpts, tmp_path, fam, backend, dtype):
    if backend == "triton":
        os.environ.setdefault("TRITON_INTERPRET", "1")
        pytest.importorskip("triton")
    teacher, _ = ckpts.teacher(fam, "sharded")
    template, shapes = ckpts.template(fam)
    kw = dict(template=template, layer_selection="uniform", dtype=dtype)
    slicer.shrink(teacher, tmp_path / "out", **kw, device="cpu")
    written = load_file(tmp_path / "out" / "model.safetensors")
    streamed = dict(slicer.stream(teacher, **kw, device="cpu", backend=backend, chunk_bytes=256))
    assert sorted(streamed) == sorted(written)
    for name, tensor in streamed.items():
        assert tensor.device.type == "cpu"
        assert_bit_equal(tensor, written[name], name)
    assert not any(tmp_path.glob("*.safetensors"))


def test_stream_checks_the_plan_before_yielding(ckpts):
    teacher, _ = ckpts.teacher("vit", "folder")
    template, _ = ckpts.template("llama")
    with pytest.raises(slicer.SlicerError, match="no source in the teacher"):
        next(slicer.stream(teacher, template=template, device="cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stream_on_cuda_matches_cpu(ckpts):
    teacher, _ = ckpts.teacher("llama", "sharded")
    template, _ = ckpts.template("llama")
    cpu = dict(slicer.stream(teacher, template=template, device="cpu"))
    for name, tensor in slicer.stream(teacher, template=template, device="cuda", backend="triton"):
        assert tensor.is_cuda
        assert_bit_equal(tensor.cpu(), cpu[name], name)
