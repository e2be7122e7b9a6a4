"""The safetensors file format: parse and validate a header, build one.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON,
then the data section. The JSON maps tensor names to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data
section) plus an optional ``"__metadata__"`` of string pairs. The data section must be
covered exactly, without holes or overlaps. Everything here is validated before a
single tensor byte is touched, so a lying header can never size an allocation.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import SlicerError

# The official implementation refuses headers above 100 MB; so do we.
MAX_HEADER_BYTES = 100_000_000
HEADER_ALIGNMENT = 8


@dataclass(frozen=True)
class DType:
    name: str  # as written in safetensors headers, e.g. "BF16"
    itemsize: int
    torch_name: str  # e.g. "bfloat16"
    floating: bool

    @property
    def torch_dtype(self):
        """The torch dtype, or None when this torch build lacks it. Imports torch on first
        use: planning, --help and verify without a teacher never need it."""
        import torch

        return getattr(torch, self.torch_name, None)


def _dtype(name: str, itemsize: int, torch_name: str, floating: bool) -> DType:
    return DType(name, itemsize, torch_name, floating)


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        _dtype("BOOL", 1, "bool", False),
        _dtype("U8", 1, "uint8", False),
        _dtype("I8", 1, "int8", False),
        _dtype("F8_E4M3", 1, "float8_e4m3fn", True),
        _dtype("F8_E5M2", 1, "float8_e5m2", True),
        _dtype("F8_E8M0", 1, "float8_e8m0fnu", True),
        _dtype("I16", 2, "int16", False),
        _dtype("U16", 2, "uint16", False),
        _dtype("F16", 2, "float16", True),
        _dtype("BF16", 2, "bfloat16", True),
        _dtype("I32", 4, "int32", False),
        _dtype("U32", 4, "uint32", False),
        _dtype("F32", 4, "float32", True),
        _dtype("I64", 8, "int64", False),
        _dtype("U64", 8, "uint64", False),
        _dtype("F64", 8, "float64", True),
        _dtype("C64", 8, "complex64", False),
    )
}

# Same-width integer types: selection moves elements as these, so bits never change.
# BITS_DTYPE (torch dtypes) is built on first access (see __getattr__ below), so that
# importing this module does not import torch.
_BITS_TORCH_NAMES = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}


def __getattr__(name: str):
    if name == "BITS_DTYPE":
        import torch

        bits = {n: getattr(torch, t) for n, t in _BITS_TORCH_NAMES.items()}
        globals()["BITS_DTYPE"] = bits
        return bits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# --dtype choices (casts apply to floating tensors only, as torch_dtype does in HF).
CAST_TARGETS = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a header describes it, with absolute file offsets."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    offset: int  # absolute byte offset of the first element in `path`
    nbytes: int

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize


class FileStamp(NamedTuple):
    """What fstat said of a file when its header was read: a later change shows here."""

    size: int
    mtime_ns: int
    ino: int
    dev: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileStamp":
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int
    file_size: int
    stamp: FileStamp | None = None


def read_header(path: Path) -> Header:
    """Read and validate the header of one safetensors file. Reads no tensor data."""
    path = Path(path)
    try:
        # O_NONBLOCK: a FIFO named like a checkpoint is refused below instead of hanging the open
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise SlicerError(f"{path}: not a regular file ({file_kind(st.st_mode)}); name a .safetensors file")
            file_size = st.st_size
            n = header_length(path, f.read(8), file_size)
            raw = f.read(n)
    except OSError as e:
        raise SlicerError(f"{path}: cannot read: {e.strerror or e}") from e
    return dataclasses.replace(parse_header(path, raw, file_size), stamp=FileStamp.of(st))


def header_length(path, prefix: bytes, file_size: int) -> int:
    """The header's JSON length from a file's first 8 bytes, checked against the file's size.

    ``path`` names the file in messages (a local path, or a remote file's URL)."""
    if file_size < 8:
        raise SlicerError(f"{path}: not a safetensors file ({file_size} bytes, too short for a header)")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES:
        raise SlicerError(f"{path}: header length {n} is absurd (limit {MAX_HEADER_BYTES}); file is corrupt or not safetensors")
    if 8 + n > file_size:
        raise SlicerError(f"{path}: header length {n} runs past the end of the file ({file_size} bytes); file is truncated or not safetensors")
    return n


def parse_header(path, raw: bytes, file_size: int) -> Header:
    """Validate the header JSON ``raw`` (the bytes after the length prefix) of a file of ``file_size`` bytes."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SlicerError(f"{path}: header is not UTF-8 (byte {e.start}); not a safetensors file") from e
    try:
        obj = json.loads(text, parse_int=json_int)
    except json.JSONDecodeError as e:
        raise SlicerError(f"{path}: header is not valid JSON ({e.msg} at char {e.pos})") from e
    except ValueError as e:  # from json_int
        raise SlicerError(f"{path}: header is not valid: {e}") from e
    except RecursionError:  # json's C scanner recurses per nesting level
        raise SlicerError(f"{path}: header JSON is nested too deeply; file is corrupt or not safetensors") from None
    if not isinstance(obj, dict):
        raise SlicerError(f"{path}: header is a JSON {type(obj).__name__}, expected an object")
    return _validate(path, obj, data_start=8 + len(raw), file_size=file_size)


def file_kind(mode: int) -> str:
    """'a FIFO', 'a socket', ... for a message about a path that is not a regular file."""
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a regular file"


def _validate(path: Path, obj: dict, data_start: int, file_size: int, stamp: FileStamp | None = None) -> Header:
    metadata = obj.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata  # [] or "" are not an empty map
    if not isinstance(metadata, dict) or not all(isinstance(v, str) and _is_text(v) and _is_text(k) for k, v in metadata.items()):
        raise SlicerError(f"{path}: __metadata__ must map strings to strings")
    data_size = file_size - data_start
    tensors: dict[str, TensorInfo] = {}
    spans = []
    for name, entry in obj.items():
        where = f"{path}: tensor {name!r}"
        if not _is_text(name):
            raise SlicerError(f"{where}: name is not valid Unicode (a lone surrogate escape)")
        if not isinstance(entry, dict):
            raise SlicerError(f"{where}: entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPES:  # a list or an object is unhashable
            known = ", ".join(DTYPES)
            raise SlicerError(f"{where}: unknown or unsupported dtype {dtype!r} (supported: {known})")
        if not isinstance(shape, list) or not all(is_json_int(d) for d in shape):
            raise SlicerError(f"{where}: shape {shape!r} is not a list of integers")
        if any(d < 0 for d in shape):
            raise SlicerError(f"{where}: shape {shape} has a negative dimension")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_json_int(o) for o in offsets)):
            raise SlicerError(f"{where}: missing or malformed data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end:
            raise SlicerError(f"{where}: data_offsets {offsets} are not an increasing pair")
        if end > data_size:
            raise SlicerError(f"{where}: data_offsets {offsets} run past the data section ({data_size} bytes); file is truncated or corrupt")
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        if nbytes != end - begin:
            raise SlicerError(f"{where}: shape {shape} of {dtype} needs {nbytes} bytes but data_offsets span {end - begin}")
        tensors[name] = TensorInfo(name, dtype, tuple(shape), path, data_start + begin, nbytes)
        spans.append((begin, end, name))
    # The format requires the data section to be covered exactly: no overlap, no hole.
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin < cursor:
            raise SlicerError(f"{path}: tensor {name!r} overlaps the previous tensor's bytes (data_offsets start {begin} < {cursor})")
        if begin > cursor:
            raise SlicerError(f"{path}: hole in the data section before tensor {name!r} (bytes {cursor}..{begin} belong to no tensor)")
        cursor = end
    if cursor != data_size:
        raise SlicerError(f"{path}: data section is {data_size} bytes but tensors cover {cursor}; file is corrupt")
    return Header(path, tensors, dict(metadata), data_start, file_size, stamp)


def json_int(token: str) -> int:
    """``parse_int`` for headers and indexes. Past 4300 digits Python refuses to convert
    (a ValueError json does not wrap); no offset or dimension has more than 20, and the
    checks after parsing say better what is wrong with merely huge ones. ``-0`` is
    refused as the reference (Rust) reader refuses it: it takes it for a float."""
    if len(token.lstrip("-")) > 1000:
        raise ValueError(f"integer {token[:12]}... has {len(token.lstrip('-'))} digits")
    if token == "-0":
        raise ValueError("-0 is not an integer")
    return int(token)


def is_json_int(x: object) -> bool:
    """An integer as JSON means one (json gives bools as ints)."""
    return isinstance(x, int) and not isinstance(x, bool)


def _is_text(s: str) -> bool:
    """JSON escapes can spell lone surrogates, which no UTF-8 file (and no Rust reader) can hold."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def build_header(entries: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str]) -> tuple[bytes, list[int]]:
    """Header bytes (length prefix included) for tensors stored in the given order.

    ``entries`` are (name, dtype, shape, nbytes). Returns the bytes and each tensor's
    offset relative to the data section. The JSON is padded with spaces to a multiple
    of 8 bytes, as the reference writer does, so the data section stays aligned.
    """
    obj: dict[str, object] = {"__metadata__": metadata}
    offsets = []
    cursor = 0
    for name, dtype, shape, nbytes in entries:
        obj[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [cursor, cursor + nbytes]}
        offsets.append(cursor)
        cursor += nbytes
    text = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % HEADER_ALIGNMENT)
    return struct.pack("<Q", len(text)) + text, offsets
