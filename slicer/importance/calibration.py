"""Calibration data: the batch the teacher is run on to score its axes and to measure the
statistics of ``--hidden rotate``.

- a text file (paragraphs);
- a JSONL file (one record per line: a JSON string, an object whose ``text`` field holds the
  text, or another field named by ``Source.field`` / ``--calibration-field``; a field may hold a
  string, a list of token ids, or chat messages ``[{"role", "content"}, ...]``, whose contents
  are joined);
- a parquet file, or a folder of them (a dataset as the Hugging Face Hub lays it out: the
  ``.parquet`` files under it, in name order), its ``text`` column (or ``input_ids``, or the
  named field); needs pyarrow (the ``[parquet]`` extra);
- a ``.safetensors`` file holding ``input_ids`` [N, L] (any text model, no tokenizer
  needed) or ``pixel_values`` [N, C, H, W] (vision teachers);
- a folder of images (vision teachers), preprocessed by the image processor in the
  teacher's folder;
- nothing: ``calibration.txt`` shipped in this package (about 6,000 tokens of varied English
  prose written for slicer: the default 32 rows x 128 tokens, with room to spare).

Texts are tokenized one at a time with the tokenizer in the teacher's folder (with its special
tokens), token ids are taken as they are; the ids are concatenated and cut into ``samples`` rows
of ``seq_len`` tokens (no padding, so no attention mask). Records are read only until the batch
is full, so a large dataset costs what the batch needs (and one pass to hash the file).

The calibration is named by the sha256 of its file (of its files' names and digests for a
folder), and ``Calibration.describe()`` (recorded in the scores file and in the manifest) says
what was used: source, format, field, sha256, tokens and sequences.

A d x d statistic (the rotation's covariance) estimated from fewer than
``TOKENS_PER_DIMENSION * d`` tokens is underdetermined: ``underdetermined`` says so in one line
(measured by bench/calibration_tokens.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SlicerError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("slicer")
DEFAULT_NAME = "calibration.txt"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json", "spiece.model")
TEXT_FIELD, IDS_FIELD = "text", "input_ids"  # what a JSONL record or a parquet table is read for, unless told
# Tokens per dimension a d x d covariance needs: SmolLM2-135M's rotated student (d = 576) improves
# from 0.9 x d to 2.7 x d calibration tokens and no further at 10 x d (bench/calibration_tokens.py,
# bench/RESULTS.md); 4 keeps a margin over that knee, and the default 4,096 tokens cover d <= 1,024.
TOKENS_PER_DIMENSION = 4


@dataclass(frozen=True)
class Source:
    """A calibration file (or folder) and, for JSONL and parquet, the field of its records to read."""
    path: str | Path
    field: str | None = None

    def __str__(self) -> str:
        return str(self.path) if self.field is None else f"{self.path} (field {self.field})"


@dataclass
class Calibration:
    inputs: dict[str, torch.Tensor]  # forward kwargs: input_ids or pixel_values
    sha256: str
    source: str  # the file, or "default"
    tokens: int  # tokens (or images) in the batch
    format: str = "text"  # text, jsonl, parquet, safetensors, images
    field: str | None = None  # the JSONL field / parquet column read

    def describe(self) -> dict:
        """What was used, as the scores file and the manifest record it."""
        shape = {k: list(v.shape) for k, v in self.inputs.items()}
        sequences = next(iter(self.inputs.values())).shape[0]
        out = {"source": self.source, "format": self.format, "sha256": self.sha256, "shape": shape,
               "tokens": self.tokens, "sequences": sequences}
        if self.field is not None:
            out["field"] = self.field
        return out


def underdetermined(tokens: int, dim: int, statistic: str) -> str | None:
    """One line when ``tokens`` are too few for a ``dim`` x ``dim`` second-moment statistic, else None."""
    need = TOKENS_PER_DIMENSION * dim
    if tokens >= need:
        return None
    singular = f"; below {dim:,} it is singular" if tokens < dim else ""
    return (f"{statistic}: {tokens:,} calibration tokens for a {dim:,} x {dim:,} covariance, {need:,} needed "
            f"({TOKENS_PER_DIMENSION} per dimension){singular}; the estimate is underdetermined: pass more text "
            f"(--calibration FILE, --samples N)")


def warn_underdetermined(tokens: int, dim: int, statistic: str) -> bool:
    """Log ``underdetermined``'s line as a warning; True if there was one."""
    line = underdetermined(tokens, dim, statistic)
    if line:
        log.warning("warning: %s", line)
    return line is not None


def load(path: str | Path | Source | None, teacher_folder: Path, *, samples: int, seq_len: int) -> Calibration:
    if samples < 1 or seq_len < 1:
        raise SlicerError(f"--samples and --seq-len must be positive (got {samples}, {seq_len})")
    field = None
    if isinstance(path, Source):
        path, field = path.path, path.field
    if path is None:
        raw = resources.files(__package__).joinpath(DEFAULT_NAME).read_bytes()
        texts = _paragraphs(raw.decode("utf-8"))
        return _batch(texts, hashlib.sha256(raw).hexdigest(), "default", "text", None, teacher_folder, samples,
                      seq_len)
    path = Path(path)
    if not path.exists():
        raise SlicerError(f"{path}: calibration file not found")
    parquets = _parquet_files(path)
    if field is not None and not parquets and path.suffix not in JSONL_SUFFIXES:
        raise SlicerError(f"{path}: --calibration-field names a field of JSONL records or a parquet column; "
                          "this is neither (.jsonl, .ndjson, .parquet, or a folder of .parquet files)")
    if parquets:
        sha = _folder_sha256(path, parquets) if path.is_dir() else _file_sha256(path)
        used: set[str] = set()
        return _batch(_parquet_records(parquets, field, used), sha, str(path), "parquet", used, teacher_folder,
                      samples, seq_len)
    if path.is_dir():
        return _images(path, teacher_folder, samples)
    if path.suffix in JSONL_SUFFIXES:
        used = set()
        return _batch(_jsonl(path, field, used), _file_sha256(path), str(path), "jsonl", used, teacher_folder,
                      samples, seq_len)
    raw = _read(path)
    if path.suffix == ".safetensors":
        return _tensors(path, raw, samples, seq_len)
    texts = _paragraphs(_text(path, raw))
    if not texts:
        raise SlicerError(f"{path}: calibration file holds no text")
    return _batch(texts, hashlib.sha256(raw).hexdigest(), str(path), "text", None, teacher_folder, samples, seq_len)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SlicerError(f"{path}: cannot read: {e.strerror or e}") from e


def _text(path: Path, raw: bytes) -> str:
    if not raw.strip():
        raise SlicerError(f"{path}: calibration file is empty")
    if b"\0" in raw:
        raise SlicerError(f"{path}: calibration file is not text (it holds NUL bytes); pass a text or JSONL file, "
                          "or a .safetensors file of input_ids")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SlicerError(f"{path}: calibration file is not UTF-8 text (byte {e.start})") from e


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        raise SlicerError(f"{path}: cannot read: {e.strerror or e}") from e
    return digest.hexdigest()


def _folder_sha256(folder: Path, files: list[Path]) -> str:
    """A folder's digest: each file's name (relative to the folder) and sha256, in order."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(folder).as_posix().encode() + b"\0" + bytes.fromhex(_file_sha256(f)))
    return digest.hexdigest()


def _record(value, where: str, field: str | None):
    """A record's text (str) or token ids (list[int]); None for an empty one."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, list) and value and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value):
        return "\n".join(m["content"] for m in value)  # chat messages: their contents, in order
    if value is None or value == []:
        return None
    kind = type(value).__name__
    raise SlicerError(f"{where}: {'field ' + repr(field) if field else 'the record'} holds a {kind}, not text, token ids "
                      "or chat messages")


def _jsonl(path: Path, field: str | None, used: set[str]) -> Iterator[str | list[int]]:
    """The records of a JSONL file, one line at a time (read only as far as the batch needs);
    the fields read go into ``used``."""
    seen = False
    try:
        f = open(path, "rb")
    except OSError as e:
        raise SlicerError(f"{path}: cannot read: {e.strerror or e}") from e
    with f:
        for n, raw in enumerate(f, 1):
            if b"\0" in raw:
                raise SlicerError(f"{path}: line {n} is not text (it holds NUL bytes)")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SlicerError(f"{path}: line {n} is not UTF-8 text (byte {e.start})") from e
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise SlicerError(f"{path}: line {n} is not JSON ({e})") from e
            where = f"{path}: line {n}"
            if isinstance(obj, dict):
                name = field or (TEXT_FIELD if TEXT_FIELD in obj or IDS_FIELD not in obj else IDS_FIELD)
                if name not in obj:
                    keys = ", ".join(list(obj)[:6]) or "none"
                    hint = "" if field else "; name the field with --calibration-field"
                    raise SlicerError(f"{where}: no {name!r} field (fields: {keys}){hint}")
                used.add(name)
                obj = obj[name]
            elif field is not None:
                raise SlicerError(f"{where}: --calibration-field {field} names a field, but the line is a JSON "
                                  f"{type(obj).__name__}, not an object")
            record = _record(obj, where, field)
            if record is not None:
                seen = True
                yield record
    if not seen:
        raise SlicerError(f"{path}: calibration file holds no text")


def _parquet_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*.parquet") if p.is_file())
    return [path] if path.suffix == ".parquet" else []


def _pyarrow_parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SlicerError(f"{path}: reading parquet needs pyarrow: pip install 'weight-slicer[parquet]'") from None
    return pq


def _parquet_records(files: list[Path], field: str | None, used: set[str]) -> Iterator[str | list[int]]:
    """The rows of one column of parquet files, one record batch at a time; the columns read go
    into ``used``."""
    pq = _pyarrow_parquet(files[0])
    seen = False
    for f in files:
        try:
            table = pq.ParquetFile(f)
            names = table.schema_arrow.names
        except Exception as e:  # noqa: BLE001 - pyarrow's own errors (ArrowInvalid, OSError)
            raise SlicerError(f"{f}: not a parquet file Arrow can read ({str(e).splitlines()[0] if str(e) else e})") from e
        column = field or (TEXT_FIELD if TEXT_FIELD in names or IDS_FIELD not in names else IDS_FIELD)
        if column not in names:
            hint = "" if field else "; name one with --calibration-field"
            raise SlicerError(f"{f}: no column {column!r} (columns: {', '.join(names[:8]) or 'none'}){hint}")
        used.add(column)
        row = 0
        for batch in table.iter_batches(columns=[column], batch_size=256):
            for value in batch.column(0).to_pylist():
                record = _record(value, f"{f}: row {row}", column)
                row += 1
                if record is not None:
                    seen = True
                    yield record
    if not seen:
        raise SlicerError(f"{files[0] if len(files) == 1 else files[0].parent}: calibration parquet holds no text")


def tokenizer(teacher_folder: Path):
    """The teacher folder's own tokenizer (never downloaded)."""
    if not any((teacher_folder / f).is_file() for f in TOKENIZER_FILES):
        raise SlicerError(f"{teacher_folder}: no tokenizer in the teacher's folder ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                          "add it, or pass --calibration a .safetensors file of input_ids (an integer tensor [N, L]: "
                          "safetensors.torch.save_file({'input_ids': ids}, 'ids.safetensors'))")
    from ..hf import common as hf

    transformers = hf.import_transformers()
    try:
        with hf.quiet():
            return transformers.AutoTokenizer.from_pretrained(str(teacher_folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - tokenizers fail in many ways
        raise SlicerError(f"{teacher_folder}: cannot load the teacher's tokenizer: {hf.first_line(e)}") from e


def _batch(records, sha256: str, source: str, fmt: str, fields: set[str] | None, teacher_folder: Path,
           samples: int, seq_len: int) -> Calibration:
    """Texts (tokenized, the tokenizer loaded only if one comes) and token-id lists, concatenated and
    cut into at most ``samples`` rows of ``seq_len``."""
    import torch

    tok = None
    ids: list[int] = []
    want = samples * seq_len
    for record in records:
        if isinstance(record, str):
            if tok is None:
                tok = tokenizer(teacher_folder)
            record = tok(record)["input_ids"]
        ids += record
        if len(ids) >= want:
            break
    if hasattr(records, "close"):  # a generator left early: its file closes now, not at garbage collection
        records.close()
    if not ids:
        raise SlicerError(f"{source}: the tokenizer gives no tokens for the calibration text")
    rows = min(samples, max(1, len(ids) // seq_len))
    length = min(seq_len, len(ids))
    if rows * length < want:
        log.warning("warning: calibration %s holds %s tokens, fewer than --samples %d x --seq-len %d = %s: using %d "
                    "rows of %d", source, f"{len(ids):,}", samples, seq_len, f"{want:,}", rows, length)
    batch = torch.tensor(ids[:rows * length], dtype=torch.int64).view(rows, length)
    field = ",".join(sorted(fields)) if fields else None  # read after the loop: the records name it as they come
    return Calibration({"input_ids": batch}, sha256, source, batch.numel(), fmt, field)


def _tensors(path: Path, raw: bytes, samples: int, seq_len: int) -> Calibration:
    import torch

    from safetensors.torch import load as load_bytes

    try:
        state = load_bytes(raw)
    except Exception as e:  # noqa: BLE001 - safetensors' own parse errors
        raise SlicerError(f"{path}: not a safetensors file ({e})") from e
    if "input_ids" in state:
        ids = state["input_ids"]
        if ids.dim() != 2 or ids.dtype.is_floating_point or ids.numel() == 0:
            raise SlicerError(f"{path}: input_ids must be a non-empty 2-D integer tensor, got {ids.dtype} {list(ids.shape)}")
        batch = ids[:samples, :seq_len].to(torch.int64)
        return Calibration({"input_ids": batch}, hashlib.sha256(raw).hexdigest(), str(path), batch.numel(),
                           "safetensors")
    if "pixel_values" in state:
        px = state["pixel_values"]
        if px.dim() != 4 or not px.dtype.is_floating_point:
            raise SlicerError(f"{path}: pixel_values must be a 4-D floating tensor [N, C, H, W], got {px.dtype} {list(px.shape)}")
        px = px[:samples].float()
        return Calibration({"pixel_values": px}, hashlib.sha256(raw).hexdigest(), str(path), px.shape[0],
                           "safetensors")
    raise SlicerError(f"{path}: a calibration .safetensors file holds input_ids or pixel_values, not {sorted(state)[:4]}")


def _images(folder: Path, teacher_folder: Path, samples: int) -> Calibration:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:samples]
    if not files:
        raise SlicerError(f"{folder}: calibration folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    try:
        from PIL import Image
    except ImportError as e:
        raise SlicerError(f"{folder}: images need Pillow ({e}); pip install pillow, or pass a .safetensors file of "
                          "pixel_values") from e
    from ..hf import common as hf

    transformers = hf.import_transformers()
    try:
        with hf.quiet():
            processor = transformers.AutoImageProcessor.from_pretrained(str(teacher_folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise SlicerError(f"{teacher_folder}: no image processor in the teacher's folder (preprocessor_config.json): "
                          f"{hf.first_line(e)}") from e
    digest = hashlib.sha256()
    images = []
    for p in files:
        raw = _read(p)
        digest.update(p.name.encode() + b"\0" + hashlib.sha256(raw).digest())
        try:
            images.append(Image.open(p).convert("RGB"))
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds
            raise SlicerError(f"{p}: not an image Pillow can read ({e})") from e
    px = processor(images=images, return_tensors="pt")["pixel_values"].float()
    return Calibration({"pixel_values": px}, digest.hexdigest(), str(folder), px.shape[0], "images")
