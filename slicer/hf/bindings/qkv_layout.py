"""How an attention module lays out its fused q/k/v projection, read off the model's own code.

The rows of a fused projection are one of four layouts of the block's heads:
- ``qkv``: [all query heads | all key heads | all value heads] (Phi-3, GPT-2, Falcon multi-query);
- ``kv``: [key heads | value heads] (GPT-2 cross-attention: its queries come from ``q_attn``);
- ``per-head``: per head [q, k, v] (GPT-NeoX, Bloom, Falcon without multi-query, MiniMax's
  lightning attention): every head has its own key and value;
- ``grouped``: per kv head [its query heads, its key, its value] (Falcon's new decoder
  architecture).
Sizes cannot tell ``qkv`` from ``grouped`` (both hold heads + 2 kv heads) nor ``qkv`` from
``per-head``, so the layout is never assumed from a name:
1. a module with a split method of its own (Falcon's ``_split_heads``, Bloom's ``_reshape``) is
   *probed*: called on the row numbers, it says which row lands in which head of q, k and v;
2. otherwise its ``forward`` is read where it consumes the projection's output: a view per head
   three head sizes wide (``view(..., -1, 3 * self.head_size)``) is per-head; a split, a
   slice, or a view with the 3 outermost (``view(..., 3, num_heads, head_dim)``) is [q | k | v];
   any other reshape is a layout slicer does not know, and is refused.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import replace
from functools import lru_cache

from .geometry import HeadGeometry
from .observe import fused_rows

LAYOUTS = ("qkv", "kv", "per-head", "grouped")
_SPLIT_METHODS = ("_split_heads", "_reshape")
_HEADS = r"(?:-1|self\.num_\w*heads|self\.n_heads?)"
_HEAD_SIZE = r"self\.(?:head_dim|head_size|attention_head_size)"
_PER_HEAD_VIEW = re.compile(rf"{_HEADS}\s*,\s*(?:3\s*\*\s*{_HEAD_SIZE}|3\s*,\s*{_HEAD_SIZE})\s*\)?\s*$")
_THREE_OUTER_VIEW = re.compile(rf"\b3\s*,\s*{_HEADS}\s*,")
_VIEW = re.compile(r"\.(?:view|reshape)\((?P<args>(?:[^()]|\((?:[^()]|\([^()]*\))*\))*)\)")


def fused_layout(module, leaf: str, rows: int, geometry: HeadGeometry) -> str | None:
    """One of LAYOUTS for the fused projection ``leaf`` (``rows`` output rows) of an attention
    module, or None: slicer cannot tell (the caller refuses)."""
    T = geometry
    if rows == 2 * T.kv_heads * T.head_dim and rows != (T.heads + 2 * T.kv_heads) * T.head_dim:
        return "kv"  # keys and values only: the queries have a projection of their own
    if rows != (T.heads + 2 * T.kv_heads) * T.head_dim:
        return None
    if type(module).__module__.startswith("torch.nn"):
        return "qkv"  # torch.nn.MultiheadAttention packs in_proj_weight as [q | k | v] (documented)
    seen = observed_layout(module, leaf, rows, T)
    if seen is not None:
        return seen or None
    probed = _probe(module, rows, T)
    if probed is not None:
        return probed or None
    found = _from_source(type(module), leaf)
    if found == "per-head" and T.kv_heads != T.heads:
        return None  # every head owns a key and a value: kv heads must be heads (see per_head_kv)
    return found


def per_head_kv(module, g: HeadGeometry) -> HeadGeometry:
    """``g`` with kv heads = heads where the module's code gives every head its own key and value.

    MiniMax's lightning attention packs [q, k, v] per head in ``qkv_proj`` while its config's
    ``num_key_value_heads`` is the softmax layers'; the code, not the config, says what the rows hold."""
    if g.kv_heads == g.heads:
        return g
    for name, child in module.named_children():  # observed: keys and values as the module hands them over
        rows = _rows_of(child)
        if rows == 3 * g.heads * g.head_dim and observed_layout(module, name, rows, g) == "per-head":
            return replace(g, kv_heads=g.heads)
    if _probe_method(module) is not None:  # older Falcon: its split method says what the rows hold
        whole = replace(g, kv_heads=g.heads)
        for child in module.children():
            rows = _rows_of(child)
            if rows == 3 * g.heads * g.head_dim and _probe(module, rows, whole) == "per-head":
                return whole
        return g
    for name, child in module.named_children():
        if getattr(child, "weight", None) is not None and _from_source(type(module), name) == "per-head":
            return replace(g, kv_heads=g.heads)
    return g


# ---------------------------------------------------------------------------- 0. observe the forward

def _rows_of(child) -> int | None:
    weight = getattr(child, "weight", None)
    if weight is None or weight.dim() != 2:
        return None
    return int(weight.shape[1] if type(child).__name__ == "Conv1D" else weight.shape[0])


_OBSERVED: dict = {}


def observed_layout(module, leaf: str, rows: int, T: HeadGeometry) -> str | None:
    """The layout of ``leaf``'s rows seen by running ``module`` (``observe.fused_rows``): one of
    LAYOUTS, "" where the rows land in a way none of them describes, None where the module could
    not be observed. A per-head layout is recognised whatever kv heads the config names: there
    every head has its own key and value."""
    config = getattr(module, "config", None)
    key = (type(module), id(config), leaf, rows, T)  # every layer of a model: one run
    if key not in _OBSERVED:
        seen = fused_rows(module, leaf, rows, T.head_dim, T.rotary_dim)
        # the config is held with the answer, so its id cannot be reused by another config
        _OBSERVED[key] = (config, None if seen is None else _match(seen, T))
    return _OBSERVED[key][1]


def _match(seen, T: HeadGeometry) -> str:
    q, k, v = seen
    for g in dict.fromkeys((T, replace(T, kv_heads=T.heads))):
        kk, vv = _kv_rows(k, g), _kv_rows(v, g)
        if kk is None or vv is None or q.shape[0] != g.heads:
            continue
        got = (q.tolist(), kk.tolist(), vv.tolist())
        for layout in ("qkv", "per-head", "grouped"):
            if _rows(layout, g) == got:
                return layout
    return ""


# ---------------------------------------------------------------------------- 1. probe a split method

def _probe_method(module):
    for name in _SPLIT_METHODS:
        fn = getattr(module, name, None)
        if not callable(fn):
            continue
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            continue
        if len(params) == 1:
            return fn
    return None


def _probe(module, rows: int, T: HeadGeometry) -> str | None:
    """The layout the module's own split method gives; "" where it does not fit any; None: no method."""
    fn = _probe_method(module)
    if fn is None:
        return None
    import torch

    try:
        out = fn(torch.arange(rows, dtype=torch.float64).view(1, 1, rows))
        q, k, v = (t.reshape(-1, T.head_dim).to(torch.int64) for t in out)
    except Exception:  # noqa: BLE001 - a split method of another signature: we cannot tell
        return ""
    k, v = _kv_rows(k, T), _kv_rows(v, T)
    if k is None or v is None or q.shape[0] != T.heads:
        return ""
    got = (q.tolist(), k.tolist(), v.tolist())
    for layout in ("qkv", "per-head", "grouped"):
        if _rows(layout, T) == got:
            return layout
    return ""


def _kv_rows(t, T: HeadGeometry):
    """Key (value) rows per kv head; a split that repeats each kv head for its group is undone."""
    if t.shape[0] == T.kv_heads:
        return t
    if t.shape[0] == T.heads and T.heads % T.kv_heads == 0:
        g = T.heads // T.kv_heads
        per = t.view(T.kv_heads, g, T.head_dim)
        if bool((per == per[:, :1]).all()):
            return per[:, 0]
    return None


def _rows(layout: str, T: HeadGeometry) -> tuple[list, list, list]:
    """Which fused row each (head, dim) of q, k and v reads, for a layout."""
    H, KV, d = T.heads, T.kv_heads, T.head_dim
    g = H // KV
    if layout == "qkv":
        q = [[h * d + i for i in range(d)] for h in range(H)]
        k = [[(H + j) * d + i for i in range(d)] for j in range(KV)]
        v = [[(H + KV + j) * d + i for i in range(d)] for j in range(KV)]
    elif layout == "per-head":
        q = [[3 * h * d + i for i in range(d)] for h in range(H)]
        k = [[(3 * h + 1) * d + i for i in range(d)] for h in range(KV)] if KV == H else []
        v = [[(3 * h + 2) * d + i for i in range(d)] for h in range(KV)] if KV == H else []
    else:  # grouped: per kv head, its g query heads, its key, its value
        q = [[(h // g * (g + 2) + h % g) * d + i for i in range(d)] for h in range(H)]
        k = [[(j * (g + 2) + g) * d + i for i in range(d)] for j in range(KV)]
        v = [[(j * (g + 2) + g + 1) * d + i for i in range(d)] for j in range(KV)]
    return q, k, v


# ---------------------------------------------------------------------------- 2. read the forward

@lru_cache(maxsize=None)
def _from_source(cls: type, leaf: str) -> str | None:
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return None
    lines = source.splitlines()
    call = re.compile(rf"self\.{re.escape(leaf)}\(")
    start = next((k for k, line in enumerate(lines) if call.search(line)), None)
    if start is None:
        return None
    first = lines[start]
    assigned = re.match(r"\s*(\w+)\s*=", first)
    var = assigned.group(1) if assigned and "," not in first.split("=", 1)[0] else None
    # the statement that calls the projection, then the lines that use what it returned
    uses = [first[call.search(first).start():]]
    if var is not None:
        uses += [line for line in lines[start + 1:start + 12] if re.search(rf"\b{var}\b", line)]
    text = "\n".join(uses)
    names = _assignments(source)
    for m in _VIEW.finditer(text):
        args = names.get(m.group("args").strip(), m.group("args"))
        if _PER_HEAD_VIEW.search(args.strip()):
            return "per-head"
        if _THREE_OUTER_VIEW.search(args):
            return "qkv"
        return None  # a view slicer does not know (CodeGen's per-shard [q, v, k]...)
    if var is not None and re.search(rf"\b{var}\s*\[\s*\.\.\.\s*,\s*:", text) or \
            re.search(r"\.split\(|\.chunk\(\s*3|torch\.split\(", text):
        return "qkv"
    return None


def _assignments(source: str) -> dict[str, str]:
    """``name = (...)`` tuples of the forward (a view's shape kept in a variable, as GPT-NeoX does)."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s*(\w+)\s*=\s*\((.*)\)\s*$", source, re.MULTILINE)}
