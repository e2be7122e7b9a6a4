"""Write the rotated teacher: the teacher with its hidden axis multiplied by ``Qk`` (width k),
norm gains folded, the head untied; a stock checkpoint of the teacher's architecture.

Streamed: the header is planned from the teacher's header (shapes only), then each tensor is
read (memory-mapped), transformed and written in order; one output tensor in memory at a time.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..io.checkpoint import Checkpoint
from ..io.format import DTYPES, build_header
from .family import roles
from .transform import apply, output_shape

SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
              "generation_config.json", "chat_template.jinja", "vocab.json", "merges.txt")


def _open_tensors(ckpt: Checkpoint):
    from safetensors import safe_open

    handles = {p: safe_open(str(p), framework="pt") for p in ckpt.files}
    where = {name: p for p, h in handles.items() for name in h.keys()}
    return lambda name: handles[where[name]].get_tensor(name)


def rotated_config(config: dict, k: int) -> dict:
    """The teacher's config at hidden size k: head size pinned (it was hidden / heads), head untied."""
    out = dict(config)
    if "head_dim" not in out or out["head_dim"] is None:
        out["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    out["hidden_size"] = k
    out["tie_word_embeddings"] = False
    return out


def write_rotated(ckpt: Checkpoint, out: Path, prefix: str, qk: torch.Tensor, site_gain: dict[str, float]) -> dict:
    """The rotated teacher in ``out`` (config.json, model.safetensors, tokenizer files)."""
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads(ckpt.config_path().read_text())
    k = qk.shape[1]
    read = _open_tensors(ckpt)
    names = list(ckpt.tensors)
    embed = f"{prefix}.embed_tokens.weight"
    if "lm_head.weight" not in names:  # tied: the head is the embedding, read through the final norm
        names.append("lm_head.weight")
    table = roles(prefix, names)
    gains = {role.site: read(f"{role.site}.weight").double() for role in table.values() if role.kind == "reader"}
    source = lambda name: embed if name == "lm_head.weight" and name not in ckpt.tensors else name  # noqa: E731
    entries = []
    for name in names:
        info = ckpt.tensors[source(name)]
        shape = output_shape(table[name], tuple(info.shape), k)
        nbytes = info.itemsize
        for s in shape:
            nbytes *= s
        entries.append((name, info.dtype, shape, nbytes))
    header, _ = build_header(entries, {"format": "pt"})
    tmp = out / "model.safetensors.incomplete"
    with open(tmp, "wb") as f:
        f.write(header)
        for name, dtype, shape, nbytes in entries:
            t = apply(table[name], read(source(name)), qk, gains, site_gain).to(DTYPES[dtype].torch_dtype).contiguous()
            assert tuple(t.shape) == tuple(shape), (name, t.shape, shape)
            f.write(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    os.replace(tmp, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(rotated_config(config, k), indent=2))
    for side in SIDE_FILES:
        if (ckpt.folder / side).is_file():
            shutil.copyfile(ckpt.folder / side, out / side)
    return {"tensors": len(entries), "bytes": sum(e[3] for e in entries), "untied": "lm_head.weight" not in ckpt.tensors}


__all__ = ["rotated_config", "write_rotated"]
