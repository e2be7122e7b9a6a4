"""Find a checkpoint's files and the tensors in them (headers only).

Accepted paths, as Hugging Face lays checkpoints out:
- a ``.safetensors`` file;
- a ``model.safetensors.index.json`` file (its shards sit beside it);
- a folder holding ``model.safetensors.index.json``, ``model.safetensors``, or exactly
  one ``*.safetensors`` file.

An index may only name files inside its own folder: a checkpoint never makes us
read anything else.

A teacher may also be a URL (``hf://``, ``s3://`` or any fsspec URL, ``http(s)://``): the
same layouts are found there by :mod:`slicer.remote` (opened through
:func:`slicer.teacher.open_checkpoint`). Either way a checkpoint's ``source`` answers
:class:`TeacherFiles`: :class:`LocalFiles` for a folder on this machine, slicer.remote's
``RemoteFolder`` for the network, so the stages above never ask which one they have.
"""
from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

from ..errors import SlicerError
from .format import FileStamp, Header, TensorInfo, file_kind, json_int, read_header

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
log = logging.getLogger("slicer")


def is_url(path: str | Path) -> bool:
    """A remote location (``hf://``, ``s3://``, ``https://``...) rather than a local path."""
    return isinstance(path, str) and _URL.match(path) is not None


class TeacherFiles(Protocol):
    """Where a checkpoint's bytes live and how the stages above reach them (``Checkpoint.source``):
    :class:`LocalFiles` here, slicer.remote's ``RemoteFolder`` through the network."""

    fetches: bool  # reading a byte costs a request (a remote teacher); decides what may be cached by content

    @property
    def bytes_fetched(self) -> int | None: ...  # over the network so far; None where nothing is fetched
    def stats(self) -> dict | None: ...  # requests, resolves, waits (the summary's ``network``); None: local
    def config_path(self) -> Any: ...  # a path-like whose read_text / read_bytes give config.json, or None
    def side_files(self, eager: dict[str, bytes], keep: Callable[[str], bool], max_bytes: int) -> Mapping[str, bytes]: ...
    def plan_reader(self, plan: Any, skip_shards: Iterable[str], chunk_bytes: int, whole_copies: bool) -> Any: ...
    def record(self, files: Iterable[Any]) -> dict: ...  # the manifest's ``teacher`` entry
    def folders(self, files: Iterable[Any]) -> list[Path]: ...  # local folders holding the files (OUT stays out)


class LocalFiles:
    """A checkpoint on this machine's file systems: memory maps of its shards, checked against the
    fstat taken when each header was read."""

    fetches = False
    bytes_fetched = None

    def __init__(self, path: Path, folder: Path, stamps: dict[Path, FileStamp]):
        self.path, self.folder, self.stamps = path, folder, stamps

    def stats(self) -> None:
        return None

    def config_path(self) -> Path | None:
        p = self.folder / "config.json"
        return p if p.is_file() else None

    def side_files(self, eager: dict[str, bytes], keep: Callable[[str], bool], max_bytes: int) -> dict[str, bytes]:
        """``eager`` plus the folder's small files that ``keep`` accepts (tokenizer, generation config...)."""
        files = dict(eager)
        for p in sorted(self.folder.iterdir()):
            if p.name in files or not keep(p.name) or not p.is_file():
                continue
            size = p.stat().st_size
            if size > max_bytes:
                log.warning("%s: not copied to the student (%d bytes: too large for a tokenizer or config file)", p, size)
                continue
            files[p.name] = p.read_bytes()
        return files

    def plan_reader(self, plan: Any, skip_shards: Iterable[str], chunk_bytes: int, whole_copies: bool = True):
        """Short-lived maps of the shards, each refused if it changed since its header was read (a local
        read costs no request, so the plan's order and chunking need no prefetch)."""
        from .reader import TeacherReader

        return TeacherReader(self.stamps)

    def record(self, files: Iterable[Path]) -> dict:
        """Where, and each file's size and mtime as its header was read (``--resume`` compares them)."""
        out = []
        for p in files:
            stamp = self.stamps.get(p) or FileStamp.of(os.stat(p))  # as the header was read: later changes are refused
            out.append({"name": os.path.relpath(p, self.folder), "size": stamp.size, "mtime_ns": stamp.mtime_ns})
        return {"path": str(Path(self.path).resolve()), "files": out}

    def folders(self, files: Iterable[Path]) -> list[Path]:
        """The folder named and where the shards really are (symlinks resolved: a Hub cache snapshot)."""
        return [self.folder] + [Path(f).resolve().parent for f in files]


@dataclass(frozen=True)
class Checkpoint:
    """The tensors of a (possibly sharded) safetensors checkpoint."""

    path: Path  # what the user named
    folder: Path  # where config.json and friends would be
    files: tuple[Path, ...]
    tensors: dict[str, TensorInfo]  # in file order, then offset order
    # Where the files are and how they are read: LocalFiles (the default, built from folder and
    # stamps), or a remote folder (folder is then None and the paths are RemotePaths).
    source: TeacherFiles = field(default=None, compare=False, repr=False)
    # fstat of each local file when its header was read: the reader refuses a file changed since
    stamps: dict[Path, FileStamp] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.source is None:
            object.__setattr__(self, "source", LocalFiles(self.path, self.folder, self.stamps))

    @classmethod
    def open(cls, path: str | Path, role: str = "checkpoint") -> "Checkpoint":
        """A local checkpoint (a URL is opened by :func:`slicer.teacher.open_checkpoint`)."""
        if is_url(path):
            raise SlicerError(f"{path}: a URL; open it with slicer.teacher.open_checkpoint (internal error)")
        path = Path(path)
        if not path.exists():
            raise SlicerError(f"{path}: {role} not found")
        if path.is_dir():
            return cls._open_folder(path, role)
        require_regular_file(path, role)
        if path.name.endswith(".index.json"):
            return cls._open_index(path, path, role)
        if path.suffix == ".safetensors":
            return cls.from_headers(path, path.parent, [read_header(path)])
        raise SlicerError(f"{path}: {role} is not a checkpoint (expected a .safetensors file, an index .json or a folder)")

    @classmethod
    def _open_folder(cls, folder: Path, role: str) -> "Checkpoint":
        if (folder / INDEX_NAME).is_file():
            return cls._open_index(folder, folder / INDEX_NAME, role)
        if (folder / SINGLE_NAME).is_file():
            return cls.from_headers(folder, folder, [read_header(folder / SINGLE_NAME)])
        candidates = sorted(folder.glob("*.safetensors"))
        if len(candidates) == 1:
            return cls.from_headers(folder, folder, [read_header(candidates[0])])
        if not candidates:
            raise SlicerError(f"{folder}: {role} folder has no {INDEX_NAME}, {SINGLE_NAME} or other .safetensors file")
        names = ", ".join(c.name for c in candidates[:4])
        raise SlicerError(f"{folder}: {role} folder has several .safetensors files ({names}) but no {INDEX_NAME}; name the file or add the index")

    @classmethod
    def _open_index(cls, named: Path, index_path: Path, role: str) -> "Checkpoint":
        folder = index_path.parent
        require_regular_file(index_path, f"{role} index")

        def shard_header(shard: str) -> Header:
            shard_path = folder / shard
            if not shard_path.is_file():
                if shard_path.exists():
                    raise SlicerError(f"{index_path}: shard {shard!r} named by the index is not a regular file "
                                      f"({file_kind(shard_path.stat().st_mode)})")
                raise SlicerError(f"{index_path}: shard {shard!r} named by the index is missing")
            return read_header(shard_path)

        try:
            raw = index_path.read_bytes()
        except OSError as e:
            raise SlicerError(f"{index_path}: cannot read: {e.strerror or e}") from e
        return cls.from_index(named, folder, index_path, raw, shard_header, role)

    @classmethod
    def from_index(cls, named, folder, index_path, raw: bytes, shard_header: Callable[[str], Header],
                   role: str) -> "Checkpoint":
        """A sharded checkpoint from its index's bytes. ``shard_header(name)`` reads the
        header of the shard the index names (a local file, or range reads of a remote one)."""
        try:
            obj = json.loads(raw.decode("utf-8"), parse_int=json_int)
        except ValueError as e:  # not UTF-8, not JSON, or an absurd integer
            raise SlicerError(f"{index_path}: {role} index is not valid JSON ({e})") from e
        except RecursionError:  # json's C scanner recurses per nesting level
            raise SlicerError(f"{index_path}: {role} index is not valid JSON (nested too deeply)") from None
        weight_map = obj.get("weight_map") if isinstance(obj, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise SlicerError(f"{index_path}: index has no \"weight_map\" object of tensor name -> shard file")
        shard_names = list(dict.fromkeys(weight_map.values()))  # unique, first-seen order
        headers = []
        for shard in shard_names:
            # Refuse before opening: an index must never make us read outside its folder.
            # The check is on the name, not the resolved path, so the symlinks of a
            # Hugging Face cache snapshot (which point into ../../blobs) still work.
            if os.path.isabs(shard) or os.path.normpath(shard).split(os.sep)[0] in ("..", ""):
                raise SlicerError(f"{index_path}: shard {shard!r} is outside the checkpoint's folder; refusing to read it")
            headers.append(shard_header(shard))
        ckpt = cls.from_headers(named, folder, headers)
        for name, shard in weight_map.items():
            info = ckpt.tensors.get(name)
            if info is None or info.path.name != Path(shard).name:
                raise SlicerError(f"{index_path}: index puts tensor {name!r} in {shard!r}, but that shard does not hold it")
        return ckpt

    @classmethod
    def from_headers(cls, named: Path, folder: Path, headers: list[Header]) -> "Checkpoint":
        tensors: dict[str, TensorInfo] = {}
        for header in headers:
            for info in sorted(header.tensors.values(), key=lambda i: i.offset):
                if info.name in tensors:
                    raise SlicerError(f"{header.path}: tensor {info.name!r} also appears in {tensors[info.name].path.name}")
                tensors[info.name] = info
        stamps = {h.path: h.stamp for h in headers if h.stamp is not None}
        return cls(named, folder, tuple(h.path for h in headers), tensors, stamps=stamps)

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.tensors.values())

    def config_path(self) -> Path | None:
        return self.source.config_path()


def require_regular_file(path: Path, role: str) -> None:
    """A FIFO, socket or device named as an input is refused at once (reading one could hang)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise SlicerError(f"{path}: cannot read: {e.strerror or e}") from e
    if not stat.S_ISREG(mode):
        raise SlicerError(f"{path}: {role} is {file_kind(mode)}, not a file or folder")
