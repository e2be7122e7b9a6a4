"""Read spans of teacher tensors through short-lived memory maps.

A chunk maps only the byte span it needs and unmaps it when the chunk's tensors are
dropped, so pages touched through the map are file-backed and never pile up in the
process (even when the teacher lives on tmpfs, where mapped pages count as shared
memory). Only the pages of the rows a gather actually touches are faulted in.
"""
from __future__ import annotations

import mmap
import os
import warnings
from pathlib import Path

import numpy as np

from .errors import SlicerError
from .safetensors_format import TensorInfo

_PAGE = mmap.ALLOCATIONGRANULARITY


class TeacherReader:
    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise SlicerError(f"{path}: cannot open: {e.strerror or e}") from e
        return fd

    def map(self, info: TensorInfo, first: int, count: int, prefetch: bool = False) -> np.ndarray:
        """The bytes of elements first..first+count-1 of a tensor: a read-only uint8 array
        over a private map, unmapped when the last view of it is dropped."""
        itemsize = info.itemsize
        begin = info.offset + first * itemsize
        nbytes = count * itemsize
        if count == 0:
            return np.empty(0, dtype=np.uint8)
        aligned = begin - begin % _PAGE
        try:
            mm = mmap.mmap(self.fd(info.path), begin + nbytes - aligned, flags=mmap.MAP_SHARED,
                           prot=mmap.PROT_READ, offset=aligned)
        except (OSError, ValueError) as e:
            raise SlicerError(f"{info.path}: cannot map tensor {info.name!r}: {e}") from e
        if prefetch:
            mm.madvise(mmap.MADV_WILLNEED)  # start readahead now: helps a cold cache
        # The array keeps `mm` alive; the map closes when the last view is dropped.
        return np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=begin - aligned)

    def span(self, info: TensorInfo, first: int, count: int, dtype, prefetch: bool = False):
        """The same elements as a 1-D torch tensor of ``dtype`` (imports torch)."""
        import torch

        # torch warns that the buffer is read-only: we only ever read through it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(self.map(info, first, count, prefetch)).view(dtype)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> "TeacherReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
