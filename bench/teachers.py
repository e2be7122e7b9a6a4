"""Generated bf16 teachers (and student templates) for the end-to-end benchmark.

The checkpoints are written *streaming*, by hand, in the safetensors format: an
8-byte little-endian header length, the JSON header (padded with spaces to a
multiple of 8), then the tensor bytes. Tensor data is copied from one reusable
block of random bf16 values (N(0, 0.02), so no NaN/inf), starting at a different
offset per tensor, so the generator never holds more than ~200 MB whatever the
model size. Both folders hold the config.json save_pretrained would write (HF folders, as
users have them: slicer then derives the bindings from transformers). Teachers are
HF-sharded (``model-0000i-of-0000n.safetensors`` of at
most 2 GB plus ``model.safetensors.index.json``); a student template is one
``model.safetensors`` whose data is never read, so it is a sparse file of zeros.

A checkpoint directory is complete when its ``.complete`` marker matches the spec
and every file has the expected size; otherwise it is rebuilt from scratch. Files
are written under temporary names and renamed, the marker comes last.

    python bench/teachers.py [--workdir DIR] [--which llama,gemma]   # build / check
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

BF16_BYTES = 2
SHARD_MAX_BYTES = 2_000_000_000  # "2GB", decimal, as huggingface_hub counts
BLOCK_BYTES = 64 << 20  # the reusable random block (held twice: 128 MB)
MARKER = ".complete"
INDEX_NAME = "model.safetensors.index.json"


# ----------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class LlamaShape:
    """The shape parameters of a Llama-style decoder (no biases, untied lm_head)."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    vocab: int

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) in the order HF's save_pretrained writes them."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for n in range(self.layers):
            p = f"model.layers.{n}."
            out += [
                (p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (q, h)),
                (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, q)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (i, h)),
                (p + "mlp.up_proj.weight", (i, h)),
                (p + "mlp.down_proj.weight", (h, i)),
            ]
        out += [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]
        return out


@dataclass(frozen=True)
class Pair:
    """A teacher and the student the benchmark shrinks it to."""

    name: str
    teacher: LlamaShape
    student: LlamaShape
    note: str


PAIRS: dict[str, Pair] = {
    # 16 layers: 16 x 354.4 MB + 2 x 1048.6 MB (embed, lm_head) = 7.77 GB.
    "llama": Pair(
        "llama",
        LlamaShape(hidden=4096, intermediate=11008, heads=32, kv_heads=8, head_dim=128, layers=16, vocab=128000),
        LlamaShape(hidden=2048, intermediate=5504, heads=16, kv_heads=4, head_dim=128, layers=8, vocab=128000),
        "Llama-shaped, 16 of 16 layers -> 8 (first-N), hidden 4096 -> 2048",
    ),
    # Two [256000, 4096] tensors (2.1 GB each) + 2 small layers (210 MB each) = 4.61 GB.
    "gemma": Pair(
        "gemma",
        LlamaShape(hidden=4096, intermediate=5120, heads=16, kv_heads=4, head_dim=256, layers=2, vocab=256000),
        LlamaShape(hidden=2048, intermediate=2560, heads=8, kv_heads=2, head_dim=256, layers=2, vocab=256000),
        "Gemma-like vocab: embed/lm_head [256000, 4096] -> [256000, 2048], 2 layers",
    ),
}


def nbytes(shape: tuple[int, ...]) -> int:
    n = BF16_BYTES
    for d in shape:
        n *= d
    return n


def total_bytes(tensors: list[tuple[str, tuple[int, ...]]]) -> int:
    return sum(nbytes(s) for _, s in tensors)


# ----------------------------------------------------------------------------- format
def build_header(tensors: list[tuple[str, tuple[int, ...]]]) -> bytes:
    """The 8-byte length + JSON header (space-padded to a multiple of 8) for bf16 tensors in order."""
    header: dict[str, object] = {}
    offset = 0
    for name, shape in tensors:
        size = nbytes(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def plan_shards(tensors: list[tuple[str, tuple[int, ...]]], max_bytes: int = SHARD_MAX_BYTES):
    """Greedy split in order, as huggingface_hub does; a tensor over the limit gets a shard of its own."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors:
        b = nbytes(shape)
        if shards[-1] and size + b > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += b
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    return list(zip(names, shards))


class RandomBlock:
    """A reusable block of random bf16 bytes, stored twice so any window of BLOCK_BYTES is contiguous."""

    def __init__(self, nbytes_: int = BLOCK_BYTES, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.size = nbytes_ - nbytes_ % 8
        buf = torch.empty(self.size, dtype=torch.bfloat16)  # 2 copies of size // 2 values = 2 * size bytes
        piece = 4 << 20  # fill in pieces: the float32 temporary stays at 16 MB
        for pos in range(0, self.size // 2, piece):
            n = min(piece, self.size // 2 - pos)
            buf[pos : pos + n] = torch.randn(n, generator=g).mul_(0.02)
        buf[self.size // 2 :] = buf[: self.size // 2]
        self._keep = buf
        self.view = memoryview(buf.view(torch.uint8).numpy())

    def write(self, f, count: int, key: str) -> None:
        """Write `count` bytes, starting at an offset derived from `key`."""
        pos = (zlib.crc32(key.encode()) % (self.size // 2)) * 2
        while count:
            n = min(count, self.size)
            f.write(self.view[pos : pos + n])
            count -= n
            pos = (pos + n) % self.size


def _expected_files(d: Path, spec: dict) -> dict[str, int]:
    return {name: size for name, size in spec["files"].items()}


def _is_complete(d: Path, spec: dict) -> dict | None:
    marker = d / MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if info.get("spec") != spec:
        return None
    for name, size in _expected_files(d, spec).items():
        try:
            if (d / name).stat().st_size != size:
                return None
        except OSError:
            return None
    return info


def _spec(kind: str, shape: LlamaShape, files: dict[str, int]) -> dict:
    return {"kind": kind, "shape": shape.__dict__, "dtype": "BF16", "files": files, "version": 1}


def build_teacher(d: Path, shape: LlamaShape, *, block: RandomBlock | None = None, log=print) -> dict:
    """Build (or reuse) a sharded teacher in `d`. Returns the marker info (with build_s, reused)."""
    tensors = shape.tensors()
    shards = plan_shards(tensors)
    files = {name: len(build_header(ts)) + total_bytes(ts) for name, ts in shards}
    index = {
        "metadata": {"total_size": total_bytes(tensors)},
        "weight_map": {t: name for name, ts in shards for t, _ in ts},
    } if len(shards) > 1 else None
    if index is not None:
        files[INDEX_NAME] = len(json.dumps(index, indent=2).encode())
    spec = _spec("teacher", shape, files)
    info = _is_complete(d, spec)
    if info is not None:
        return {**info, "reused": True}
    d.mkdir(parents=True, exist_ok=True)
    (d / MARKER).unlink(missing_ok=True)
    block = block or RandomBlock()
    t0 = time.perf_counter()
    for name, ts in shards:
        tmp = d / (name + ".tmp")
        with open(tmp, "wb", buffering=0) as f:
            f.write(build_header(ts))
            for tname, tshape in ts:
                block.write(f, nbytes(tshape), tname)
        os.replace(tmp, d / name)
        log(f"  wrote {d / name} ({files[name] / 1e9:.2f} GB, {time.perf_counter() - t0:.1f} s)")
    if index is not None:
        (d / INDEX_NAME).write_text(json.dumps(index, indent=2))
    info = {"spec": spec, "build_s": round(time.perf_counter() - t0, 2), "built_at": time.time()}
    (d / MARKER).write_text(json.dumps(info))
    return {**info, "reused": False}


def build_template(d: Path, shape: LlamaShape, *, log=print) -> dict:
    """Build (or reuse) a one-file student template in `d`: a valid safetensors file, sparse zeros."""
    tensors = shape.tensors()
    header = build_header(tensors)
    size = len(header) + total_bytes(tensors)
    spec = _spec("template", shape, {"model.safetensors": size})
    info = _is_complete(d, spec)
    if info is not None:
        return {**info, "reused": True}
    d.mkdir(parents=True, exist_ok=True)
    (d / MARKER).unlink(missing_ok=True)
    t0 = time.perf_counter()
    tmp = d / "model.safetensors.tmp"
    with open(tmp, "wb") as f:
        f.write(header)
        f.truncate(size)
    os.replace(tmp, d / "model.safetensors")
    info = {"spec": spec, "build_s": round(time.perf_counter() - t0, 3), "built_at": time.time()}
    (d / MARKER).write_text(json.dumps(info))
    log(f"  wrote {d / 'model.safetensors'} ({size / 1e9:.2f} GB, sparse)")
    return {**info, "reused": False}


# ----------------------------------------------------------------------------- layout
def hf_config(shape: LlamaShape) -> dict:
    """The config.json save_pretrained writes beside a LlamaForCausalLM of this shape: every Hub
    checkpoint has one, and slicer derives the model's bindings from it (the HF route)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate, "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads, "head_dim": shape.head_dim, "num_hidden_layers": shape.layers,
        "vocab_size": shape.vocab, "hidden_act": "silu", "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
        "dtype": "bfloat16",
    }


def write_config(d: Path, shape: LlamaShape) -> None:
    """config.json beside the weights (rewritten only when it differs: its mtime stays otherwise)."""
    text = json.dumps(hf_config(shape), indent=2) + "\n"
    path = d / "config.json"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def teacher_dir(workdir: Path, name: str) -> Path:
    return workdir / name / "teacher"


def template_dir(workdir: Path, name: str) -> Path:
    return workdir / name / "template"


def checkpoint_files(d: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (index order), or [d] for a file."""
    if d.is_file():
        return [d]
    index = d / INDEX_NAME
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [d / n for n in sorted(set(weight_map.values()))]
    return sorted(d.glob("*.safetensors"))


def ensure_pair(workdir: Path, name: str, *, log=print) -> dict:
    """Build or reuse the teacher and template of PAIRS[name]; returns build facts."""
    pair = PAIRS[name]
    log(f"[{name}] teacher: {pair.note}")
    t = build_teacher(teacher_dir(workdir, name), pair.teacher, log=log)
    s = build_template(template_dir(workdir, name), pair.student, log=log)
    write_config(teacher_dir(workdir, name), pair.teacher)  # HF folders, as users have them
    write_config(template_dir(workdir, name), pair.student)
    teacher_bytes = total_bytes(pair.teacher.tensors())
    student_bytes = total_bytes(pair.student.tensors())
    facts = {
        "teacher_dir": str(teacher_dir(workdir, name)),
        "template": str(template_dir(workdir, name) / "model.safetensors"),
        "template_dir": str(template_dir(workdir, name)),  # the HF folder: config.json beside the weights
        "teacher_bytes": teacher_bytes,
        "student_bytes": student_bytes,
        "teacher_files": [str(p) for p in checkpoint_files(teacher_dir(workdir, name))],
        "teacher_shape": pair.teacher.__dict__,
        "student_shape": pair.student.__dict__,
        "teacher_build_s": t["build_s"],
        "teacher_reused": t["reused"],
        "template_build_s": s["build_s"],
    }
    state = "reused (built earlier in" if t["reused"] else "built in"
    log(
        f"[{name}] teacher {teacher_bytes / 1e9:.2f} GB in {len(facts['teacher_files'])} shards, "
        f"{state} {t['build_s']:.1f} s{')' if t['reused'] else ''}; student {student_bytes / 1e9:.2f} GB"
    )
    return facts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/slicer-bench", type=Path)
    ap.add_argument("--which", default="llama,gemma")
    args = ap.parse_args(argv)
    for name in args.which.split(","):
        ensure_pair(args.workdir, name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
