"""Test helpers: small checkpoint builders, an independent reference, output readers.

Nothing here imports ``slicer``: the reference below is written from
docs/weight-selection.md alone, so a bug in the implementation cannot hide in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

REPO_ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- dtypes

ST_NAME = {
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.bool: "BOOL",
}
ALL_DTYPES = list(ST_NAME)

# Same-width integer type used to compare bits exactly (NaN payloads included).
_INT_VIEW = {
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float8_e4m3fn: torch.uint8,
    torch.float8_e5m2: torch.uint8,
    torch.bool: torch.uint8,
}

CAST_TARGET = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def int_view(t: torch.Tensor) -> torch.Tensor:
    iv = _INT_VIEW.get(t.dtype)
    return t if iv is None else t.view(iv)


def assert_bit_equal(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert tuple(got.shape) == tuple(want.shape), f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.equal(int_view(got), int_view(want)), f"{name}: values differ from the reference"


def assert_state_bit_equal(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want), (
        f"tensor names differ: missing {sorted(set(want) - set(got))}, extra {sorted(set(got) - set(want))}")
    for name in want:
        assert_bit_equal(got[name], want[name], name)


# --------------------------------------------------------------------------- random tensors

def random_tensor(shape, dtype, gen: torch.Generator, bits: bool = False) -> torch.Tensor:
    """Random tensor. bits=True: random bit patterns for floats (NaNs, infs, subnormals)."""
    shape = tuple(shape)
    n = int(np.prod(shape)) if shape else 1
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen, dtype=torch.uint8).to(torch.bool)
    if dtype.is_floating_point and not bits:
        return (torch.randn(shape, generator=gen, dtype=torch.float32) * 3).to(dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (n * itemsize,), generator=gen, dtype=torch.uint8)
    return raw.view(dtype).reshape(shape).clone()


def make_state(shapes: dict, dtype=torch.float32, seed: int = 0, bits: bool = False) -> dict:
    """shapes: name -> shape, or name -> (shape, dtype)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, spec in shapes.items():
        if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], torch.dtype):
            shape, dt = spec
        else:
            shape, dt = spec, dtype
        out[name] = random_tensor(shape, dt, gen, bits=bits)
    return out


def shapes_of(spec: dict) -> dict:
    out = {}
    for name, s in spec.items():
        if isinstance(s, tuple) and len(s) == 2 and isinstance(s[1], torch.dtype):
            s = s[0]
        out[name] = tuple(s)
    return out


# --------------------------------------------------------------------------- model shapes

def vit_shapes(dim, depth, mlp, patch=4, img=16, num_classes=10, in_chans=3, head=True):
    n = (img // patch) ** 2
    s = {
        "cls_token": [1, 1, dim],
        "pos_embed": [1, n + 1, dim],
        "patch_embed.proj.weight": [dim, in_chans, patch, patch],
        "patch_embed.proj.bias": [dim],
    }
    for i in range(depth):
        p = f"blocks.{i}."
        s.update({
            p + "norm1.weight": [dim], p + "norm1.bias": [dim],
            p + "attn.qkv.weight": [3 * dim, dim], p + "attn.qkv.bias": [3 * dim],
            p + "attn.proj.weight": [dim, dim], p + "attn.proj.bias": [dim],
            p + "norm2.weight": [dim], p + "norm2.bias": [dim],
            p + "mlp.fc1.weight": [mlp, dim], p + "mlp.fc1.bias": [mlp],
            p + "mlp.fc2.weight": [dim, mlp], p + "mlp.fc2.bias": [dim],
        })
    s["norm.weight"] = [dim]
    s["norm.bias"] = [dim]
    if head:
        s["head.weight"] = [num_classes, dim]
        s["head.bias"] = [num_classes]
    return s


def convnext_timm_shapes(dims, depths, num_classes=10, k=7):
    s = {
        "stem.0.weight": [dims[0], 3, 4, 4], "stem.0.bias": [dims[0]],
        "stem.1.weight": [dims[0]], "stem.1.bias": [dims[0]],
    }
    for st, (c, d) in enumerate(zip(dims, depths)):
        if st > 0:
            p = f"stages.{st}.downsample."
            s.update({
                p + "0.weight": [dims[st - 1]], p + "0.bias": [dims[st - 1]],
                p + "1.weight": [c, dims[st - 1], 2, 2], p + "1.bias": [c],
            })
        for b in range(d):
            p = f"stages.{st}.blocks.{b}."
            s.update({
                p + "conv_dw.weight": [c, 1, k, k], p + "conv_dw.bias": [c],
                p + "norm.weight": [c], p + "norm.bias": [c],
                p + "mlp.fc1.weight": [4 * c, c], p + "mlp.fc1.bias": [4 * c],
                p + "mlp.fc2.weight": [c, 4 * c], p + "mlp.fc2.bias": [c],
                p + "gamma": [c],
            })
    s.update({
        "head.norm.weight": [dims[-1]], "head.norm.bias": [dims[-1]],
        "head.fc.weight": [num_classes, dims[-1]], "head.fc.bias": [num_classes],
    })
    return s


def convnext_orig_shapes(dims, depths, num_classes=10, k=7):
    s = {
        "downsample_layers.0.0.weight": [dims[0], 3, 4, 4], "downsample_layers.0.0.bias": [dims[0]],
        "downsample_layers.0.1.weight": [dims[0]], "downsample_layers.0.1.bias": [dims[0]],
    }
    for st in range(1, len(dims)):
        p = f"downsample_layers.{st}."
        s.update({
            p + "0.weight": [dims[st - 1]], p + "0.bias": [dims[st - 1]],
            p + "1.weight": [dims[st], dims[st - 1], 2, 2], p + "1.bias": [dims[st]],
        })
    for st, (c, d) in enumerate(zip(dims, depths)):
        for b in range(d):
            p = f"stages.{st}.{b}."
            s.update({
                p + "gamma": [c],
                p + "dwconv.weight": [c, 1, k, k], p + "dwconv.bias": [c],
                p + "norm.weight": [c], p + "norm.bias": [c],
                p + "pwconv1.weight": [4 * c, c], p + "pwconv1.bias": [4 * c],
                p + "pwconv2.weight": [c, 4 * c], p + "pwconv2.bias": [c],
            })
    s.update({
        "norm.weight": [dims[-1]], "norm.bias": [dims[-1]],
        "head.weight": [num_classes, dims[-1]], "head.bias": [num_classes],
    })
    return s


def llama_shapes(hidden, inter, layers, kv, vocab=64):
    s = {"model.embed_tokens.weight": [vocab, hidden]}
    for i in range(layers):
        p = f"model.layers.{i}."
        s.update({
            p + "self_attn.q_proj.weight": [hidden, hidden],
            p + "self_attn.k_proj.weight": [kv, hidden],
            p + "self_attn.v_proj.weight": [kv, hidden],
            p + "self_attn.o_proj.weight": [hidden, hidden],
            p + "mlp.gate_proj.weight": [inter, hidden],
            p + "mlp.up_proj.weight": [inter, hidden],
            p + "mlp.down_proj.weight": [hidden, inter],
            p + "input_layernorm.weight": [hidden],
            p + "post_attention_layernorm.weight": [hidden],
        })
    s["model.norm.weight"] = [hidden]
    s["lm_head.weight"] = [vocab, hidden]
    return s


def bert_shapes(hidden, inter, layers, vocab=50, max_pos=16):
    s = {
        "embeddings.word_embeddings.weight": [vocab, hidden],
        "embeddings.position_embeddings.weight": [max_pos, hidden],
        "embeddings.token_type_embeddings.weight": [2, hidden],
        "embeddings.LayerNorm.weight": [hidden], "embeddings.LayerNorm.bias": [hidden],
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for m in ("query", "key", "value"):
            s[p + f"attention.self.{m}.weight"] = [hidden, hidden]
            s[p + f"attention.self.{m}.bias"] = [hidden]
        s.update({
            p + "attention.output.dense.weight": [hidden, hidden],
            p + "attention.output.dense.bias": [hidden],
            p + "attention.output.LayerNorm.weight": [hidden],
            p + "attention.output.LayerNorm.bias": [hidden],
            p + "intermediate.dense.weight": [inter, hidden],
            p + "intermediate.dense.bias": [inter],
            p + "output.dense.weight": [hidden, inter],
            p + "output.dense.bias": [hidden],
            p + "output.LayerNorm.weight": [hidden],
            p + "output.LayerNorm.bias": [hidden],
        })
    s["pooler.dense.weight"] = [hidden, hidden]
    s["pooler.dense.bias"] = [hidden]
    return s


def zoo_shapes(depth, big, vec, with_scalar=True):
    """One tensor family per dtype: blocks.i.<dtype> of shape big, plus vectors and scalars."""
    s = {}
    for dt, nm in ST_NAME.items():
        key = nm.lower()
        for i in range(depth):
            s[f"blocks.{i}.{key}.weight"] = (list(big), dt)
        s[f"{key}.vec"] = ([vec], dt)
        if with_scalar:
            s[f"{key}.scalar"] = ([], dt)
    return s


# Teacher/student pairs. Sizes are small; several student widths are not divisors of
# the teacher's so the float32 linspace branch of "uniform" is exercised. The ViT's width
# halves (as in the paper, 384 -> 192), so flat selection keeps its fused qkv's q, k and v
# apart and a template without a config may select it flat.
VIT_T = dict(dim=48, depth=4, mlp=192)
VIT_S = dict(dim=24, depth=2, mlp=80)
CNX_T_DIMS, CNX_T_DEPTHS = (16, 24, 32, 48), (3, 2, 5, 4)
CNX_S_DIMS, CNX_S_DEPTHS = (8, 12, 20, 24), (1, 2, 3, 2)


def family(name: str):
    """-> (teacher spec, student shapes, bits). spec values: shape or (shape, dtype)."""
    if name == "vit":
        t = vit_shapes(**VIT_T)
        s = vit_shapes(**VIT_S)
        return t, s, False
    if name == "vit_d3":  # 4 -> 3 blocks: uniform layer map hits a tie (1.5 -> 2)
        return vit_shapes(**VIT_T), vit_shapes(dim=24, depth=3, mlp=80), False
    if name == "vit_d4":  # equal depth, smaller width
        return vit_shapes(**VIT_T), vit_shapes(dim=24, depth=4, mlp=80), False
    if name == "convnext_timm":
        return (convnext_timm_shapes(CNX_T_DIMS, CNX_T_DEPTHS),
                convnext_timm_shapes(CNX_S_DIMS, CNX_S_DEPTHS), False)
    if name == "convnext_orig":
        return (convnext_orig_shapes(CNX_T_DIMS, CNX_T_DEPTHS),
                convnext_orig_shapes(CNX_S_DIMS, CNX_S_DEPTHS), False)
    if name == "llama":
        t = {k: (v, torch.bfloat16) for k, v in llama_shapes(40, 96, 6, 20).items()}
        return t, llama_shapes(24, 56, 4, 12), False
    if name == "bert":
        t = {k: (v, torch.float16) for k, v in bert_shapes(32, 64, 5).items()}
        return t, bert_shapes(16, 40, 2), False
    if name == "zoo":  # every dtype, random bit patterns
        return (zoo_shapes(4, [9, 6, 5], 10),
                shapes_of(zoo_shapes(3, [4, 6, 3], 7)), True)
    if name == "zoo_values":  # every dtype, ordinary values (for casts)
        return (zoo_shapes(2, [9, 6, 5], 10),
                shapes_of(zoo_shapes(2, [4, 6, 3], 7)), False)
    raise KeyError(name)


# --------------------------------------------------------------------------- writing

def save_sharded(state: dict, folder, n_shards: int) -> Path:
    """HF layout: model-0000k-of-0000N.safetensors + model.safetensors.index.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(state)
    chunks = [names[i::n_shards] for i in range(n_shards)]  # interleave: a block spans shards
    weight_map, total = {}, 0
    for k, chunk in enumerate(chunks, start=1):
        fn = f"model-{k:05d}-of-{n_shards:05d}.safetensors"
        save_file({n: state[n].contiguous() for n in chunk}, str(folder / fn), metadata={"format": "pt"})
        for n in chunk:
            weight_map[n] = fn
            total += state[n].numel() * state[n].element_size()
    idx = folder / "model.safetensors.index.json"
    idx.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return idx


def write_checkpoint(state: dict, dest, layout: str, config: dict | None = None) -> Path:
    """Write ``state`` under directory ``dest``; return the path to hand to the slicer.

    layouts: file (dest/ckpt.safetensors, the file path), folder (dest/model.safetensors,
    the folder), sharded (index + 3 shards, the folder), index (same, the index path),
    folder-any (dest/weights.safetensors, the folder).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (dest / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in state.items()}
    if layout == "file":
        p = dest / "ckpt.safetensors"
        save_file(state, str(p), metadata={"format": "pt"})
        return p
    if layout == "folder":
        save_file(state, str(dest / "model.safetensors"), metadata={"format": "pt"})
        return dest
    if layout == "folder-any":
        save_file(state, str(dest / "weights.safetensors"), metadata={"format": "pt"})
        return dest
    if layout in ("sharded", "index"):
        idx = save_sharded(state, dest, 3)
        return dest if layout == "sharded" else idx
    raise KeyError(layout)


def write_raw_safetensors(path, header, data: bytes = b"", header_len: int | None = None) -> None:
    """Write a (possibly broken) safetensors file: 8-byte LE length, header, data."""
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(hb) if header_len is None else header_len
    Path(path).write_bytes(struct.pack("<Q", n) + hb + data)


# --------------------------------------------------------------------------- reading

def read_header(path) -> dict:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def student_files(root) -> list[str]:
    """Anything under root that looks like slicer output (final or temporary)."""
    found = []
    for dirpath, _, files in os.walk(root):
        for fn in files:
            if "safetensors" in fn or "manifest" in fn or fn.endswith(".index.json"):
                found.append(os.path.join(dirpath, fn))
    return sorted(found)


SHARD_RE = re.compile(r"^model-(\d{5})-of-(\d{5})\.safetensors$")


def read_output(out_dir, max_shard_size: int | None = None) -> tuple[dict, dict]:
    """Load a slicer output folder, checking its layout. -> (tensors, info)."""
    out_dir = Path(out_dir)
    names = sorted(os.listdir(out_dir))
    idx_path = out_dir / "model.safetensors.index.json"
    tensors: dict = {}
    info: dict = {"files": names}
    if idx_path.exists():
        assert "model.safetensors" not in names, "both model.safetensors and an index were written"
        index = json.loads(idx_path.read_text())
        shards = sorted(n for n in names if n.endswith(".safetensors"))
        assert shards and all(SHARD_RE.match(s) for s in shards), f"bad shard names {shards}"
        n_total = int(SHARD_RE.match(shards[0]).group(2))
        assert [int(SHARD_RE.match(s).group(1)) for s in shards] == list(range(1, n_total + 1)), shards
        assert all(int(SHARD_RE.match(s).group(2)) == n_total for s in shards), shards
        wm = index["weight_map"]
        total = 0
        for s in shards:
            with safe_open(str(out_dir / s), "pt") as f:
                assert f.metadata() == {"format": "pt"}, f"{s}: metadata {f.metadata()}"
            part = load_file(str(out_dir / s))
            part_bytes = 0
            for n, t in part.items():
                assert n not in tensors, f"{n} written twice"
                assert wm.get(n) == s, f"index says {n} is in {wm.get(n)}, found in {s}"
                tensors[n] = t
                part_bytes += t.numel() * t.element_size()
            total += part_bytes
            if max_shard_size is not None and len(part) > 1:
                assert part_bytes <= max_shard_size, f"{s}: {part_bytes} tensor bytes > max {max_shard_size}"
        assert set(wm) == set(tensors), f"index lists {sorted(set(wm) ^ set(tensors))} wrongly"
        assert index["metadata"]["total_size"] == total, (index["metadata"], total)
        info.update(layout="sharded", shards=shards, index=index)
    else:
        p = out_dir / "model.safetensors"
        assert p.exists(), f"no model.safetensors in {names}"
        assert not any(SHARD_RE.match(n) for n in names), names
        with safe_open(str(p), "pt") as f:
            assert f.metadata() == {"format": "pt"}, f"metadata {f.metadata()}"
        tensors = load_file(str(p))
        info.update(layout="single", shards=["model.safetensors"])
    mpath = out_dir / "slicer_manifest.json"
    assert mpath.exists(), "no slicer_manifest.json"
    info["manifest"] = json.loads(mpath.read_text())
    info["headers"] = {s: read_header(out_dir / s) for s in info["shards"]}
    return tensors, info


def sha256_tree(root, skip=None) -> dict:
    """Relative path -> sha256 for every file under root (skip: a path to leave out)."""
    root = Path(root)
    out = {}
    for dirpath, _, files in os.walk(root):
        if skip is not None and Path(dirpath).resolve().is_relative_to(Path(skip).resolve()):
            continue
        for fn in files:
            p = Path(dirpath) / fn
            if p.is_symlink() or not p.is_file():
                continue
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --------------------------------------------------------------------------- the reference

def ref_uniform(t: int, s: int) -> list[int]:
    """Spec: identity if s == t; i*(t//s) if t % s == 0; else torch.round(float32 linspace)."""
    if s == t:
        return list(range(t))
    if s == 0:
        return []
    if t % s == 0:
        return [i * (t // s) for i in range(s)]
    lin = torch.linspace(0, t - 1, s, dtype=torch.float32, device="cpu")
    return [int(v) for v in torch.round(lin).to(torch.int64).tolist()]


def exact_uniform(t: int, s: int) -> list[int]:
    """Same formula in exact rational arithmetic (half-to-even): NOT the spec, for contrast."""
    if s == t:
        return list(range(t))
    if t % s == 0:
        return [i * (t // s) for i in range(s)]
    out = []
    for i in range(s):
        q, r = divmod(i * (t - 1), s - 1)
        if 2 * r > s - 1 or (2 * r == s - 1 and q % 2 == 1):
            q += 1
        out.append(q)
    return out


def ref_consecutive(t: int, s: int) -> list[int]:
    return list(range(s))


REF_METHODS = {"uniform": ref_uniform, "consecutive": ref_consecutive}


def _is_int(c: str) -> bool:
    return c.isascii() and c.isdigit()  # '²'.isdigit() is True, but it is no layer index


def _depth_table(names) -> dict:
    """prefix (tuple of components) -> set of integers found right after it."""
    table: dict = {}
    for n in names:
        parts = n.split(".")
        for k, c in enumerate(parts):
            if _is_int(c):
                table.setdefault(tuple(parts[:k]), set()).add(int(c))
    return table


class LayerMapper:
    """Student name -> teacher name by the spec's layer selection (per prefix, nested)."""

    def __init__(self, teacher_names, student_names, layer_selection: str = "first"):
        assert layer_selection in ("first", "uniform")
        self.sel = layer_selection
        self.t_table = _depth_table(teacher_names)
        self.s_table = _depth_table(student_names)
        self.maps: dict = {}  # student prefix (dotted) -> list, only where counts differ
        self.kept: set = set()  # prefixes with equal counts

    def source(self, student_name: str) -> str | None:
        parts = student_name.split(".")
        tparts: list = []
        for k, c in enumerate(parts):
            if not _is_int(c):
                tparts.append(c)
                continue
            s_prefix, t_prefix = tuple(parts[:k]), tuple(tparts)
            s_depth = len(self.s_table[s_prefix])
            t_depth = len(self.t_table.get(t_prefix, ()))
            j = int(c)
            key = ".".join(s_prefix)
            if s_depth == t_depth:
                self.kept.add(key)
                tparts.append(c)
                continue
            if t_depth < s_depth:
                return None
            if self.sel == "first":
                m = list(range(s_depth))
            else:
                m = ref_uniform(t_depth, s_depth)
            self.maps[key] = m
            tparts.append(str(m[j]))
        return ".".join(tparts)


def ref_layer_maps(teacher_names, student_names, layer_selection) -> dict:
    lm = LayerMapper(teacher_names, student_names, layer_selection)
    for n in student_names:
        lm.source(n)
    return dict(lm.maps)


def gather(t: torch.Tensor, index_lists) -> torch.Tensor:
    """t[ix_(I_0, ..., I_{n-1})] done with numpy on a same-width integer view."""
    assert len(index_lists) == t.dim()
    if t.dim() == 0:
        return t.clone()
    iv = _INT_VIEW.get(t.dtype, t.dtype)
    a = t.contiguous().view(iv).numpy()
    sel = a[np.ix_(*[np.asarray(ix, dtype=np.int64) for ix in index_lists])]
    return torch.from_numpy(np.ascontiguousarray(sel)).view(t.dtype)


def index_sets_from_manifest(manifest: dict) -> dict:
    """student name -> [indices of each dim] as the manifest records them."""
    sets = manifest["index_sets"]
    return {n: [set_indices(sets[k]) for k in rec["index"]] for n, rec in manifest["tensors"].items()}


def set_indices(entry: dict) -> list[int]:
    """A manifest index set: an explicit "indices" list, or the rule start + step*i, i < s."""
    if "indices" in entry:
        return list(entry["indices"])
    return [entry["start"] + entry["step"] * i for i in range(entry["s"])]


def excluded(name: str, exclude) -> bool:
    return any(re.search(p, name) for p in exclude)


def reference_student(teacher_state_dict: dict, template_shapes: dict, method: str = "uniform",
                      layer_selection: str = "first", index_sets_for_random: dict | None = None,
                      dtype: str = "keep", exclude=()) -> dict:
    """Every student tensor, built by advanced indexing on the fully loaded teacher.

    For random methods the index sets cannot be recomputed independently, so they are
    taken from ``index_sets_for_random`` (student name -> index list per dim).
    """
    mapper = LayerMapper(list(teacher_state_dict), list(template_shapes), layer_selection)
    out = {}
    for name, shape in template_shapes.items():
        if excluded(name, exclude):
            continue
        src = mapper.source(name)
        assert src in teacher_state_dict, f"reference: no teacher source for {name}"
        w = teacher_state_dict[src]
        shape = tuple(shape)
        assert w.dim() == len(shape), name
        if method in REF_METHODS:
            ix = [REF_METHODS[method](t, s) for t, s in zip(w.shape, shape)]
        else:
            ix = index_sets_for_random[name]
        assert [len(i) for i in ix] == list(shape), name
        r = gather(w, ix)
        if dtype != "keep" and r.is_floating_point():
            r = r.to(CAST_TARGET[dtype])
        out[name] = r
    return out


def reference_sources(teacher_names, template_names, layer_selection) -> dict:
    mapper = LayerMapper(list(teacher_names), list(template_names), layer_selection)
    return {n: mapper.source(n) for n in template_names}
