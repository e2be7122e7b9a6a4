"""Calibration data: the batch the teacher is run on to score its axes.

- a text file (paragraphs) or a JSONL file (one text per line: a JSON string, or an object
  with a "text" key), tokenized with the tokenizer in the teacher's folder; every text is
  tokenized on its own (with the tokenizer's special tokens), the ids are concatenated and
  cut into ``samples`` rows of ``seq_len`` tokens (no padding, so no attention mask);
- a ``.safetensors`` file holding ``input_ids`` [N, L] (any text model, no tokenizer
  needed) or ``pixel_values`` [N, C, H, W] (vision teachers);
- a folder of images (vision teachers), preprocessed by the image processor in the
  teacher's folder;
- nothing: ``calibration.txt`` shipped in this package (a few KB of varied English prose
  written for slicer), for a quick run.

The calibration is named by the sha256 of its file, recorded in the scores file.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from ..errors import SlicerError

DEFAULT_NAME = "calibration.txt"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json", "spiece.model")


@dataclass
class Calibration:
    inputs: dict[str, torch.Tensor]  # forward kwargs: input_ids or pixel_values
    sha256: str
    source: str  # the file, or "default"
    tokens: int  # tokens (or images) in the batch

    def describe(self) -> dict:
        shape = {k: list(v.shape) for k, v in self.inputs.items()}
        return {"source": self.source, "sha256": self.sha256, "shape": shape}


def load(path: str | Path | None, teacher_folder: Path, *, samples: int, seq_len: int) -> Calibration:
    if samples < 1 or seq_len < 1:
        raise SlicerError(f"--samples and --seq-len must be positive (got {samples}, {seq_len})")
    if path is None:
        raw = resources.files(__package__).joinpath(DEFAULT_NAME).read_bytes()
        texts = _paragraphs(raw.decode("utf-8"))
        return _tokenized(texts, raw, "default", teacher_folder, samples, seq_len)
    path = Path(path)
    if not path.exists():
        raise SlicerError(f"{path}: calibration file not found")
    if path.is_dir():
        return _images(path, teacher_folder, samples)
    raw = _read(path)
    if path.suffix == ".safetensors":
        return _tensors(path, raw, samples, seq_len)
    text = _text(path, raw)
    texts = _jsonl(path, text) if path.suffix == ".jsonl" else _paragraphs(text)
    if not texts:
        raise SlicerError(f"{path}: calibration file holds no text")
    return _tokenized(texts, raw, str(path), teacher_folder, samples, seq_len)


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


def _jsonl(path: Path, text: str) -> list[str]:
    texts = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise SlicerError(f"{path}: line {n} is not JSON ({e})") from e
        if isinstance(obj, dict):
            obj = obj.get("text")
        if not isinstance(obj, str):
            raise SlicerError(f"{path}: line {n} is neither a JSON string nor an object with a \"text\" string")
        if obj.strip():
            texts.append(obj)
    return texts


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


def _tokenized(texts: list[str], raw: bytes, source: str, teacher_folder: Path, samples: int,
               seq_len: int) -> Calibration:
    tok = tokenizer(teacher_folder)
    ids: list[int] = []
    want = samples * seq_len
    for text in texts:
        ids += tok(text)["input_ids"]
        if len(ids) >= want:
            break
    if not ids:
        raise SlicerError(f"{source}: the tokenizer gives no tokens for the calibration text")
    rows = min(samples, max(1, len(ids) // seq_len))
    length = min(seq_len, len(ids))
    batch = torch.tensor(ids[:rows * length], dtype=torch.int64).view(rows, length)
    return Calibration({"input_ids": batch}, hashlib.sha256(raw).hexdigest(), source, batch.numel())


def _tensors(path: Path, raw: bytes, samples: int, seq_len: int) -> Calibration:
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
        return Calibration({"input_ids": batch}, hashlib.sha256(raw).hexdigest(), str(path), batch.numel())
    if "pixel_values" in state:
        px = state["pixel_values"]
        if px.dim() != 4 or not px.dtype.is_floating_point:
            raise SlicerError(f"{path}: pixel_values must be a 4-D floating tensor [N, C, H, W], got {px.dtype} {list(px.shape)}")
        px = px[:samples].float()
        return Calibration({"pixel_values": px}, hashlib.sha256(raw).hexdigest(), str(path), px.shape[0])
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
    return Calibration({"pixel_values": px}, digest.hexdigest(), str(folder), px.shape[0])
