"""Fuzz the header and index validation: mutants of a small valid checkpoint.

Builds a small valid teacher (one file, and the same tensors as two shards with a
``model.safetensors.index.json``) and a template, then mutates one of them at a time:
bytes flipped or set, the header length changed, the file truncated or extended, JSON
fields given wrong types, huge or negative numbers, NaN tokens, deep nesting, bad
dtype strings, shifted or swapped offsets, duplicate or renamed keys, a lying
``[2**40, 2**40]`` shape with matching offsets, index entries outside the folder...

Every mutant must either work or be refused cleanly:

- worked: the output reads back with safetensors and equals, bit for bit, the
  selection of the mutant *as safetensors itself loads it* (per the manifest's sources
  and index sets), and the student's shapes are the template's as safetensors reads them;
- refused: a ``SlicerError`` with a one-line message (through the CLI: exit 2 and one
  ``slicer: error:`` line on stderr, no traceback);
- anything else is a finding: another exception, a hang (past ``--timeout``), output
  that differs, or output from a mutant that safetensors itself refuses to load.

    python bench/fuzz_headers.py [-n 500] [--seed 0] [--cli 0] [--timeout 20] [--show 5]

``--cli K`` also runs K of the mutants through ``python -m slicer shrink`` in a
subprocess (~2 s each). Exit status 0 when every mutant worked or was refused cleanly.
tests/test_fuzz.py drives the same mutations with hypothesis.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import slicer  # noqa: E402
from slicer import cli  # noqa: E402

INDEX = "model.safetensors.index.json"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")

# --------------------------------------------------------------------------- the base checkpoint

TEACHER = {  # name -> (shape, dtype)
    "embed.weight": ((12, 8), torch.float32),
    "blocks.0.w": ((8, 8), torch.bfloat16),
    "blocks.0.b": ((8,), torch.float16),
    "blocks.1.w": ((8, 8), torch.bfloat16),
    "blocks.1.b": ((8,), torch.float16),
    "conv.weight": ((4, 3, 3), torch.float32),
    "ids": ((5, 3), torch.int64),
    "mask": ((6,), torch.bool),
    "norm.scale": ((), torch.float32),
    "unused.extra": ((7,), torch.uint8),
}
STUDENT = {  # one block of two: layer map "first"
    "embed.weight": (6, 4),
    "blocks.0.w": (4, 4),
    "blocks.0.b": (4,),
    "conv.weight": (2, 3, 3),
    "ids": (2, 3),
    "mask": (3,),
    "norm.scale": (),
}

ST_DTYPE = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32",
            torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32",
            torch.float64: "F64"}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("F8_E8M0", "float8_e8m0fnu"),
                     ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"), ("C64", "complex64")):
    if hasattr(torch, _attr):
        ST_DTYPE[getattr(torch, _attr)] = _name
INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class Base:
    root: Path
    teacher_file: Path  # a single .safetensors
    teacher_sharded: Path  # folder: two shards + index
    template: Path  # folder: model.safetensors + config.json


def set_indices(entry: dict) -> list[int]:
    """A manifest index set: an explicit "indices" list, or the rule start + step*i, i < s."""
    if "indices" in entry:
        return list(entry["indices"])
    return [entry["start"] + entry["step"] * i for i in range(entry["s"])]


def build_base(root: Path, seed: int = 0) -> Base:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, (shape, dtype) in TEACHER.items():
        if dtype == torch.bool:
            state[name] = torch.randint(0, 2, shape, generator=gen).to(torch.bool)
        elif dtype.is_floating_point:
            state[name] = torch.randn(shape, generator=gen).to(dtype)
        else:
            state[name] = torch.randint(0, 100, shape, generator=gen).to(dtype)
    root.mkdir(parents=True, exist_ok=True)
    (root / "teacher").mkdir(exist_ok=True)
    save_file(state, str(root / "teacher" / "ckpt.safetensors"), metadata={"format": "pt"})
    sharded = root / "teacher-sharded"
    sharded.mkdir(exist_ok=True)
    names = list(state)
    weight_map = {}
    for k, part in enumerate((names[0::2], names[1::2])):
        save_file({n: state[n] for n in part}, str(sharded / SHARDS[k]), metadata={"format": "pt"})
        weight_map.update({n: SHARDS[k] for n in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (sharded / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    template = root / "template"
    template.mkdir(exist_ok=True)
    save_file({n: torch.zeros(s) for n, s in STUDENT.items()}, str(template / "model.safetensors"))
    (template / "config.json").write_text('{"model_type": "fuzz"}\n')
    return Base(root, root / "teacher" / "ckpt.safetensors", sharded, template)


# --------------------------------------------------------------------------- choices

class Chooser:
    """Where a mutation's choices come from: random here, hypothesis in tests/test_fuzz.py."""

    def pick(self, options: Sequence):
        raise NotImplementedError

    def integer(self, lo: int, hi: int) -> int:
        raise NotImplementedError


class RandomChooser(Chooser):
    def __init__(self, rng: random.Random):
        self.rng = rng

    def pick(self, options: Sequence):
        return options[self.rng.randrange(len(options))]

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


class HypothesisChooser(Chooser):
    """Choices drawn by hypothesis (``data`` is ``st.data()``'s object): shrinkable failures."""

    def __init__(self, data):
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def pick(self, options: Sequence):
        return self.data.draw(self.st.sampled_from(list(options)))

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))


INTS = [0, 1, 2, 3, 7, 8, 9, 16, -1, -8, 2**31 - 1, 2**31, 2**32, 2**40, 2**53 + 1, 2**62, 2**63 - 1, 2**63,
        2**64 - 1, 2**64, 10**30]
WRONG_TYPES = [None, True, False, "8", "", 8.0, 8.5, 1e308, -0.0, [], {}, [8], [[8]], {"a": 1}, [None], ["8", 8]]
RAW_TOKENS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "8.0", "8e0", "-0", "08", "0x8", "+8", "1E400",
              "18446744073709551616", "-9223372036854775809", "99999999999999999999999999999999",
              "7" * 5000, "-" + "9" * 4400, "1" + "0" * 400 + "e-400"]  # past Python's 4300-digit int limit
DTYPE_STRINGS = ["BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2", "F8_E8M0", "I16", "U16", "F16", "BF16", "I32", "U32",
                 "F32", "I64", "U64", "F64", "C64", "F4", "F6_E2M3", "F6_E3M2", "F8_E4M3FN", "f32", "bf16",
                 "F17", "", "F32 ", " F32", "FLOAT32", "F32\u0000", "I4", "STR", "\u00c9F32", "F\u0033\u0032x"]
NAMES = ["", " ", "__metadata__", "embed.weight", "blocks.0.w", "blocks.1.w", "blocks.2.w", "blocks.-1.w",
         "blocks.00.w", "blocks.0.w.", ".", "..", "a/../b", "\u00e9", "\ud800", "x\udfff", "\u0000", "\n",
         "blocks.99999999999999999999.w", "blocks.0." * 50 + "w"]
SHARD_NAMES = ["../teacher/ckpt.safetensors", "/etc/passwd", "", ".", "..", "sub/../" + SHARDS[0],
               SHARDS[0] + "/..", "model-00003-of-00002.safetensors", SHARDS[0], SHARDS[1], "./" + SHARDS[1],
               SHARDS[1].upper(), SHARDS[1] + "\u0000", "\ud800.safetensors", INDEX]
META_VALUES = [None, [], "pt", 5, {"format": 5}, {"format": None}, {"format": ["pt"]}, {"": ""}, {"a": {"b": "c"}},
               {"format": "pt", "x": "\ud800"}]
CHARS = [b"{", b"}", b"[", b"]", b'"', b",", b":", b"-", b"0", b"9", b" ", b"\\", b"\xff", b"\x00", b"\xc3", b"e"]


@dataclass
class Mutant:
    teacher: Path
    template: Path
    what: str  # one line: which file, which mutation


# --------------------------------------------------------------------------- mutating safetensors files

def _split(path: Path) -> tuple[int, bytes, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, raw[8:8 + n], raw[8 + n:]


def _write(path: Path, header_text: str | bytes, data: bytes, length: int | None = None) -> None:
    hb = header_text.encode("utf-8", "surrogatepass") if isinstance(header_text, str) else header_text
    hb += b" " * (-len(hb) % 8)
    path.write_bytes(struct.pack("<Q", len(hb) if length is None else length) + hb + data)


def _dumps(obj: object, raw: dict[str, str] | None = None) -> str:
    """JSON text; string values "@@RAWk@@" become the raw tokens raw[k] (NaN, 1e999, ...)."""
    text = json.dumps(obj)  # \uXXXX escapes: lone surrogates stay expressible
    for marker, token in (raw or {}).items():
        text = text.replace(json.dumps(marker), token)
    return text


ST_KINDS = ("flip", "set_byte", "length", "truncate", "extend", "field_type", "raw_token", "dim", "offset", "huge",
            "dtype", "drop_field", "extra_field", "rename", "metadata", "duplicate", "deep", "swap_offsets",
            "drop_tensor", "add_tensor", "shift_all", "leading_space", "trailing")
INDEX_KINDS = ("flip", "value", "key", "drop", "add", "weight_map", "top", "metadata", "duplicate", "deep",
               "not_utf8", "raw_token")
TARGETS = ("file", "shard", "index", "template")


def mutate_safetensors(path: Path, ch: Chooser, kind: str | None = None) -> str:
    """Mutate the safetensors file at ``path`` in place; returns what was done."""
    n, header, data = _split(path)
    obj = json.loads(header)
    names = [k for k in obj if k != "__metadata__"]
    kind = kind or ch.pick(ST_KINDS)
    name = ch.pick(names)
    entry = obj[name]
    if kind == "flip":
        raw = bytearray(path.read_bytes())
        pos = ch.integer(0, min(len(raw), 8 + n + 16) - 1)
        bit = ch.integer(1, 255)
        raw[pos] ^= bit
        path.write_bytes(bytes(raw))
        return f"flip byte {pos} ^ {bit:#x}"
    if kind == "set_byte":
        raw = bytearray(path.read_bytes())
        pos = ch.integer(8, 8 + n - 1)
        c = ch.pick(CHARS)
        raw[pos:pos + 1] = c
        path.write_bytes(bytes(raw))
        return f"byte {pos} = {c!r}"
    if kind == "length":
        new = ch.pick([n + ch.integer(-24, 24), 0, 1, 7, 8, n + len(data), n + len(data) + 1, 99_999_999,
                       100_000_001, 2**32, 2**63, 2**64 - 1])
        new = min(max(new, 0), 2**64 - 1)
        _write(path, header, data, length=new)
        return f"header length {n} -> {new}"
    if kind == "truncate":
        k = ch.integer(1, len(data) + n + 8)
        path.write_bytes(path.read_bytes()[:-k])
        return f"truncate {k} bytes"
    if kind == "extend":
        k = ch.integer(1, 64)
        path.write_bytes(path.read_bytes() + bytes(range(k)))
        return f"append {k} bytes"
    if kind == "field_type":
        key = ch.pick(["dtype", "shape", "data_offsets"])
        value = ch.pick(WRONG_TYPES + INTS)
        entry[key] = value
        _write(path, _dumps(obj), data)
        return f"{name!r}.{key} = {value!r}"
    if kind == "raw_token":
        key = ch.pick(["shape", "data_offsets"])
        token = ch.pick(RAW_TOKENS)
        d = ch.integer(0, max(len(entry[key]) - 1, 0))
        value = list(entry[key]) or [0]
        value[min(d, len(value) - 1)] = "@@RAW0@@"
        entry[key] = value
        _write(path, _dumps(obj, {"@@RAW0@@": token}), data)
        return f"{name!r}.{key}[{d}] = {token}"
    if kind == "dim":
        shape = list(entry["shape"]) or [1]
        d = ch.integer(0, len(shape) - 1)
        shape[d] = ch.pick(INTS + [shape[d] + 1, shape[d] - 1, shape[d] * 2])
        entry["shape"] = shape
        _write(path, _dumps(obj), data)
        return f"{name!r}.shape = {shape}"
    if kind == "offset":
        i = ch.integer(0, 1)
        offsets = list(entry["data_offsets"])
        offsets[i] = ch.pick(INTS + [offsets[i] + 1, offsets[i] - 1, offsets[1 - i], offsets[i] + 8])
        entry["data_offsets"] = offsets
        _write(path, _dumps(obj), data)
        return f"{name!r}.data_offsets = {offsets}"
    if kind == "huge":
        # A lying header: an enormous tensor whose offsets match its shape.
        big = ch.pick([2**40, 2**31, 2**33, 2**62])
        begin = entry["data_offsets"][0]
        entry.update(dtype="F32", shape=[big, big], data_offsets=[begin, begin + big * big * 4])
        _write(path, _dumps(obj), data)
        return f"{name!r} = F32 [{big}, {big}] with matching offsets"
    if kind == "dtype":
        value = ch.pick(DTYPE_STRINGS)
        entry["dtype"] = value
        _write(path, _dumps(obj), data)
        return f"{name!r}.dtype = {value!r}"
    if kind == "drop_field":
        key = ch.pick(["dtype", "shape", "data_offsets"])
        del entry[key]
        _write(path, _dumps(obj), data)
        return f"{name!r}: no {key}"
    if kind == "extra_field":
        entry[ch.pick(["extra", "dtype2", "offsets", ""])] = ch.pick(WRONG_TYPES)
        _write(path, _dumps(obj), data)
        return f"{name!r}: extra field"
    if kind == "rename":
        new = ch.pick(NAMES)
        obj = {(new if k == name else k): v for k, v in obj.items()} if new not in obj else obj
        if new in obj and new != name:  # renaming onto an existing key: a duplicate key in the text
            text = _dumps(obj)
            text = text[:-1] + ", " + json.dumps(new) + ": " + json.dumps(entry) + "}"
            _write(path, text, data)
            return f"{name!r} also as duplicate key {new!r}"
        _write(path, _dumps(obj), data)
        return f"rename {name!r} -> {new!r}"
    if kind == "metadata":
        value = ch.pick(META_VALUES)
        obj["__metadata__"] = value
        _write(path, _dumps(obj), data)
        return f"__metadata__ = {value!r}"
    if kind == "duplicate":
        other = dict(entry)
        other["shape"] = list(reversed(entry["shape"])) if ch.integer(0, 1) else entry["shape"]
        other["dtype"] = ch.pick(DTYPE_STRINGS[:17])
        text = _dumps(obj)
        text = text[:-1] + ", " + json.dumps(name) + ": " + json.dumps(other) + "}"
        _write(path, text, data)
        return f"duplicate key {name!r} (second: {other})"
    if kind == "deep":
        depth = ch.pick([10, 200, 1000, 5000, 100_000])
        key = ch.pick(["shape", "data_offsets", "dtype", "__metadata__"])
        token = "[" * depth + "]" * depth
        if key == "__metadata__":
            obj["__metadata__"] = "@@RAW0@@"
        else:
            entry[key] = "@@RAW0@@"
        _write(path, _dumps(obj, {"@@RAW0@@": token}), data)
        return f"{name!r}.{key} nested {depth} deep"
    if kind == "swap_offsets":
        other = ch.pick(names)
        entry["data_offsets"], obj[other]["data_offsets"] = obj[other]["data_offsets"], entry["data_offsets"]
        _write(path, _dumps(obj), data)
        return f"swap offsets of {name!r} and {other!r}"
    if kind == "drop_tensor":
        del obj[name]
        _write(path, _dumps(obj), data)
        return f"drop {name!r}"
    if kind == "add_tensor":
        begin = ch.pick([len(data), 0, len(data) - 4, entry["data_offsets"][0]])
        count = ch.pick([0, 1, 4, 8])
        obj[ch.pick(["zz.new", "blocks.2.w", "a"])] = {"dtype": "U8", "shape": [count], "data_offsets": [begin, begin + count]}
        extra = bytes(count) if begin == len(data) and ch.integer(0, 1) else b""
        _write(path, _dumps(obj), data + extra)
        return f"add tensor at {begin} of {count} bytes (+{len(extra)} data)"
    if kind == "shift_all":
        delta = ch.pick([-1, 1, 4, -4])
        for k in names:
            obj[k]["data_offsets"] = [o + delta for o in obj[k]["data_offsets"]]
        _write(path, _dumps(obj), data if delta < 0 else bytes(delta) + data)
        return f"all offsets {delta:+d}"
    if kind == "leading_space":
        _write(path, ch.pick([" ", "\n", "\t", "\ufeff"]) + _dumps(obj), data)
        return "whitespace or BOM before the header"
    # trailing: something after the JSON object, inside the header length
    tail = ch.pick([" ", "\x00", "\n", "x", "{}", "  \x00"])
    _write(path, _dumps(obj) + tail, data)
    return f"{tail!r} after the JSON object"


# --------------------------------------------------------------------------- mutating the index

def mutate_index(path: Path, ch: Chooser, kind: str | None = None) -> str:
    text = path.read_text()
    obj = json.loads(text)
    wm = obj["weight_map"]
    names = list(wm)
    kind = kind or ch.pick(INDEX_KINDS)
    name = ch.pick(names)
    if kind == "flip":
        raw = bytearray(path.read_bytes())
        pos = ch.integer(0, len(raw) - 1)
        c = ch.pick(CHARS)
        raw[pos:pos + 1] = c
        path.write_bytes(bytes(raw))
        return f"index byte {pos} = {c!r}"
    if kind == "value":
        value = ch.pick(SHARD_NAMES + WRONG_TYPES[:8])
        wm[name] = value
        what = f"weight_map[{name!r}] = {value!r}"
    elif kind == "key":
        new = ch.pick(NAMES)
        wm[new] = wm.pop(name)
        what = f"weight_map key {name!r} -> {new!r}"
    elif kind == "drop":
        del wm[name]
        what = f"weight_map without {name!r}"
    elif kind == "add":
        new = ch.pick(NAMES)
        wm[new] = ch.pick(SHARD_NAMES)
        what = f"weight_map[{new!r}] = {wm[new]!r} added"
    elif kind == "weight_map":
        obj["weight_map"] = ch.pick(WRONG_TYPES)
        what = f"weight_map = {obj['weight_map']!r}"
    elif kind == "top":
        obj = ch.pick([[], "x", 5, None, [obj], {"weight_map": wm, "weight_map2": 1}])
        what = f"index = {str(obj)[:40]}"
    elif kind == "metadata":
        obj["metadata"] = ch.pick(WRONG_TYPES + [{"total_size": -1}, {"total_size": 2**70}])
        what = f"metadata = {obj['metadata']!r}"
    elif kind == "duplicate":
        body = _dumps(obj)
        body = body.replace('"weight_map": {', '"weight_map": {' + json.dumps(name) + ": "
                            + json.dumps(ch.pick(SHARD_NAMES)) + ", ", 1)
        path.write_text(body, encoding="utf-8", errors="surrogatepass")
        return f"weight_map duplicate key {name!r}"
    elif kind == "deep":
        depth = ch.pick([200, 1000, 100_000])
        wm[name] = "@@RAW0@@"
        path.write_text(_dumps(obj, {"@@RAW0@@": "[" * depth + "]" * depth}))
        return f"weight_map[{name!r}] nested {depth} deep"
    elif kind == "not_utf8":
        path.write_bytes(text.encode()[:20] + b"\xff\xfe" + text.encode()[20:])
        return "index not UTF-8"
    else:
        wm[name] = "@@RAW0@@"
        token = ch.pick(RAW_TOKENS + ['"' + SHARDS[0] + '"'])
        path.write_text(_dumps(obj, {"@@RAW0@@": token}))
        return f"weight_map[{name!r}] = {token}"
    path.write_text(_dumps(obj), encoding="utf-8", errors="surrogatepass")
    return what


def make_mutant(base: Base, dest: Path, ch: Chooser, target: str | None = None, kind: str | None = None) -> Mutant:
    """Copy the base checkpoints into ``dest`` and mutate one file of them (the
    ``target``: the single-file teacher, a shard or the index of the sharded one, or
    the template; ``kind``: one of ST_KINDS or INDEX_KINDS; both chosen if not given)."""
    shutil.copytree(base.teacher_file.parent, dest / "teacher")
    shutil.copytree(base.teacher_sharded, dest / "teacher-sharded")
    shutil.copytree(base.template, dest / "template")
    target = target or ch.pick(["file", "file", "shard", "index", "index", "template"])
    teacher, template = dest / "teacher" / base.teacher_file.name, dest / "template"
    if target == "file":
        what = mutate_safetensors(teacher, ch, kind)
    elif target == "shard":
        shard = ch.pick(SHARDS)
        teacher = dest / "teacher-sharded"
        what = f"{shard}: " + mutate_safetensors(teacher / shard, ch, kind)
    elif target == "index":
        teacher = ch.pick([dest / "teacher-sharded", dest / "teacher-sharded" / INDEX])
        what = mutate_index(dest / "teacher-sharded" / INDEX, ch, kind)
    else:
        what = "template: " + mutate_safetensors(template / "model.safetensors", ch, kind)
    what = what if len(what) < 160 else what[:150] + f"... ({len(what)} chars)"
    return Mutant(teacher, template, f"{target}: {what}")


# --------------------------------------------------------------------------- running one mutant

@dataclass
class Outcome:
    kind: str  # "worked" | "refused" | "crash" | "hang" | "mismatch" | "unreadable-accepted" | "bad-message"
    detail: str = ""
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return self.kind in ("worked", "refused")


class _Timeout(BaseException):
    """Raised by the alarm: a BaseException so that no ``except Exception`` swallows it."""


@contextlib.contextmanager
def _alarm(seconds: float):
    def fire(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_api(m: Mutant, out: Path, timeout: float = 20.0) -> Outcome:
    """slicer.shrink on the mutant, in this process."""
    start = time.perf_counter()
    try:
        with _alarm(timeout):
            slicer.shrink(m.teacher, out, template=m.template, chunk_bytes=64)
    except _Timeout:
        return Outcome("hang", f"no answer after {timeout} s", time.perf_counter() - start)
    except slicer.SlicerError as e:
        msg = str(e)
        if "\n" in msg or not msg.strip():
            return Outcome("bad-message", repr(msg), time.perf_counter() - start)
        return Outcome("refused", msg, time.perf_counter() - start)
    except BaseException as e:  # noqa: BLE001 - this is what we are looking for
        return Outcome("crash", "".join(traceback.format_exception(e)).strip(), time.perf_counter() - start)
    seconds = time.perf_counter() - start
    problem = check_output(m, out)
    if problem is not None:
        return Outcome(*problem, seconds)
    return Outcome("worked", "", seconds)


def run_cli(m: Mutant, out: Path, timeout: float = 20.0) -> Outcome:
    """``slicer shrink`` through cli.main in this process: exit 0, or 2 with one error line."""
    start = time.perf_counter()
    err = io.StringIO()
    try:
        with _alarm(timeout), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = cli.main(["shrink", str(m.teacher), str(out), "--template", str(m.template), "--quiet"])
    except _Timeout:
        return Outcome("hang", f"no answer after {timeout} s", time.perf_counter() - start)
    except SystemExit as e:
        rc = e.code
    except BaseException as e:  # noqa: BLE001
        return Outcome("crash", "".join(traceback.format_exception(e)).strip(), time.perf_counter() - start)
    return _judge_cli(m, out, rc, err.getvalue(), time.perf_counter() - start)


def run_subprocess(m: Mutant, out: Path, timeout: float = 60.0, env: dict | None = None) -> Outcome:
    """``python -m slicer shrink`` in a subprocess."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "slicer", "shrink", str(m.teacher), str(out), "--template", str(m.template), "--quiet"]
    if env is None:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return Outcome("hang", f"no answer after {timeout} s", time.perf_counter() - start)
    return _judge_cli(m, out, r.returncode, r.stderr, time.perf_counter() - start)


def _judge_cli(m: Mutant, out: Path, rc, stderr: str, seconds: float) -> Outcome:
    if rc == 0:
        problem = check_output(m, out)
        return Outcome(*problem, seconds) if problem else Outcome("worked", "", seconds)
    lines = stderr.splitlines()
    if rc == 2 and len(lines) == 1 and lines[0].startswith("slicer: error: ") and "Traceback" not in stderr:
        return Outcome("refused", lines[0], seconds)
    return Outcome("crash", f"exit {rc}, stderr: {stderr.strip()[-2000:]}", seconds)


def check_output(m: Mutant, out: Path) -> tuple[str, str] | None:
    """None if the output is the selection of the mutant as safetensors loads it."""
    try:
        teacher = _load_teacher(m.teacher)
        with safe_open(str(m.template / "model.safetensors"), "pt") as f:
            template = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors' own verdict on the mutant
        return "unreadable-accepted", f"slicer accepted what safetensors refuses: {type(e).__name__}: {e}"
    manifest = json.loads((out / "slicer_manifest.json").read_text())
    got = {}
    for s in manifest["shards"]:
        got.update(load_file(str(out / s["name"])))
    if sorted(got) != sorted(manifest["tensors"]) or sorted(template) != sorted(got):
        return "mismatch", f"tensors {sorted(got)} vs manifest {sorted(manifest['tensors'])} vs template {sorted(template)}"
    sets = manifest["index_sets"]
    for name, rec in manifest["tensors"].items():
        src = teacher.get(rec["source"])
        if src is None:
            return "mismatch", f"{name}: source {rec['source']!r} is not in the teacher as safetensors loads it"
        if ST_DTYPE.get(src.dtype) != rec["source_dtype"] or list(src.shape) != rec["teacher_shape"]:
            return "mismatch", (f"{name}: safetensors loads {rec['source']!r} as {src.dtype} {list(src.shape)}, slicer "
                                f"as {rec['source_dtype']} {rec['teacher_shape']}")
        if tuple(got[name].shape) != template[name]:
            return "mismatch", f"{name}: shape {tuple(got[name].shape)}, template {template[name]}"
        want = src
        for d, key in enumerate(rec["index"]):
            want = want.view(INT_VIEW[src.element_size()]).index_select(d, torch.tensor(set_indices(sets[key]))).view(src.dtype)
        if rec["dtype"] != rec["source_dtype"]:
            want = want.to(got[name].dtype)
        a, b = got[name], want
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a.view(INT_VIEW[a.element_size()]),
                                                                       b.contiguous().view(INT_VIEW[b.element_size()])):
            return "mismatch", f"{name}: values differ from the selection of {rec['source']!r}"
    return None


def _load_teacher(path: Path) -> dict:
    if path.is_file() and path.suffix == ".safetensors":
        return load_file(str(path))
    index = path if path.is_file() else path / INDEX
    folder = index.parent
    wm = json.loads(index.read_text())["weight_map"]
    state = {}
    for shard in dict.fromkeys(wm.values()):
        state.update(load_file(str(folder / shard)))
    return state


# --------------------------------------------------------------------------- the script

@dataclass
class Tally:
    counts: Counter = field(default_factory=Counter)
    findings: list = field(default_factory=list)  # (what, outcome)
    seconds: list = field(default_factory=list)

    def add(self, m: Mutant, o: Outcome) -> None:
        self.counts[o.kind] += 1
        self.seconds.append(o.seconds)
        if not o.clean:
            self.findings.append((m.what, o))


def fuzz(n: int, seed: int, workdir: Path, runner: Callable[[Mutant, Path], Outcome] = run_api,
         progress: bool = False) -> Tally:
    base = build_base(workdir / "base", seed)
    rng = random.Random(seed)
    tally = Tally()
    for i in range(n):
        dest = workdir / f"m{i}"
        m = make_mutant(base, dest, RandomChooser(rng))
        o = runner(m, dest / "out")
        tally.add(m, o)
        shutil.rmtree(dest, ignore_errors=True)
        if progress and (i + 1) % 100 == 0:
            print(f"  {i + 1}/{n}: {dict(tally.counts)}", file=sys.stderr)
    return tally


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=500, help="mutants to run in-process (default 500)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cli", type=int, default=0, help="also run this many mutants through python -m slicer")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds before a mutant counts as a hang")
    ap.add_argument("--show", type=int, default=5, help="findings to print in full")
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("slicer").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="slicer-fuzz-") as tmp:
        start = time.perf_counter()
        tally = fuzz(args.n, args.seed, Path(tmp), lambda m, out: run_api(m, out, args.timeout), progress=True)
        wall = time.perf_counter() - start
        runs = [("in-process (slicer.shrink)", tally, wall)]
        if args.cli:
            start = time.perf_counter()
            sub = fuzz(args.cli, args.seed + 1, Path(tmp) / "cli", run_subprocess)
            runs.append(("subprocess (python -m slicer shrink)", sub, time.perf_counter() - start))
    bad = 0
    for label, t, secs in runs:
        total = sum(t.counts.values())
        print(f"{label}: {total} mutants in {secs:.1f} s (slowest {max(t.seconds, default=0):.2f} s)")
        for kind in ("worked", "refused", "crash", "hang", "mismatch", "unreadable-accepted", "bad-message"):
            print(f"  {kind:20s} {t.counts.get(kind, 0)}")
        bad += len(t.findings)
        for what, o in t.findings[:args.show]:
            print(f"  FINDING [{o.kind}] {what}\n    " + o.detail.replace("\n", "\n    ")[:3000])
    print("every mutant worked or was refused cleanly" if not bad else f"{bad} finding(s)")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
