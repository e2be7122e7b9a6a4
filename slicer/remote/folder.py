"""A remote teacher's folder: its files, their headers, small files, and readers of its tensors.

This is ``Checkpoint.source`` for a remote checkpoint: what the rest of slicer asks of
a teacher that is not on the local disk (the engine's reader, the manifest's record,
the config and tokenizer files, verify's reads, the bytes fetched so far).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING


from ..errors import SlicerError
from ..io.format import Header, TensorInfo, header_length, parse_header
from .adaptive import Profile
from .fetch import Fetcher
from .source import Pieces
from .options import RemoteOptions
from .ranges import Span, coalesce, plan_spans, row_runs
from .reader import RemoteReader
from .source import Changed, RemoteFile, RemotePath, Source, join

if TYPE_CHECKING:
    import torch
    from ..plan.build import Plan

log = logging.getLogger("slicer")


class RemoteFolder:
    """A teacher's folder reached through the network (``io.checkpoint.TeacherFiles``)."""

    fetches = True  # every byte read is a request

    def __init__(self, source: Source, options: RemoteOptions):
        self.source = source
        self.options = options
        self.fetcher = Fetcher(source, options)
        self.url = source.url
        self._listing: dict[str, RemoteFile] | None = self.fetcher.call(source.url, source.list)
        self._files: dict[str, RemoteFile] = dict(self._listing or {})
        self._pool: ThreadPoolExecutor | None = None

    # -- files ---------------------------------------------------------------------------

    @property
    def listable(self) -> bool:
        return self._listing is not None

    def names(self) -> list[str]:
        """Files directly in the folder (listable sources only)."""
        return sorted(n for n in self._files if "/" not in n) if self._listing is not None else []

    def find(self, name: str) -> RemoteFile | None:
        f = self._files.get(name)
        if f is None and (self._listing is None or "/" in name):  # not listed (HTTP), or in a sub-folder
            f = self.fetcher.call(join(self.url, name), lambda: self.source.stat(name))
            if f is not None:
                self._files[name] = f
        return f

    def file(self, name: str) -> RemoteFile:
        f = self.find(name)
        if f is None:
            raise SlicerError(f"{join(self.url, name)}: not found")
        return f

    def path(self, name: str) -> RemotePath:
        return RemotePath(join(self.url, name), name, self)

    def remote_file(self, path: RemotePath) -> RemoteFile:
        return self._files[path.name]

    def read_file(self, name: str) -> bytes:
        f = self.file(name)
        return self.fetcher.read(f, 0, f.size) if f.size else b""

    def header(self, name: str) -> Header:
        """A shard's header, by two range reads: its length, then exactly its JSON.

        Exact rather than a speculative first read (huggingface_hub's
        get_safetensors_metadata reads 100 kB): a plan then fetches the headers' bytes
        and nothing else, and the shards' headers are read side by side anyway."""
        f = self.file(name)
        where = self.path(name)
        n = header_length(where, self.fetcher.read(f, 0, 8) if f.size >= 8 else b"", f.size)
        return parse_header(where, self.fetcher.read(f, 8, 8 + n) if n else b"", f.size)

    def headers(self, names: list[str]) -> dict[str, Header | SlicerError | None]:
        """Several shards' headers, fetched side by side (a sharded teacher has hundreds);
        None for a shard that does not exist, the error for one that cannot be read."""
        def one(name: str) -> Header | SlicerError | None:
            try:
                return self.header(name) if self.find(name) is not None else None
            except SlicerError as e:
                return e

        return dict(zip(names, self.pool().map(one, names)))

    def folders(self, files: Iterable[RemotePath]) -> list:
        """No folder on this machine holds a remote teacher's files."""
        return []

    def config_path(self) -> RemotePath | None:
        return self.path("config.json") if self.find("config.json") is not None else None

    def side_files(self, eager: dict[str, bytes], keep: Callable[[str], bool], max_bytes: int) -> Mapping[str, bytes]:
        """``eager`` plus the folder's small files that ``keep`` accepts, fetched only when read.

        A listable folder offers its own files; a plain HTTP one those of the source's
        ``side_files`` that exist (HEAD requests, no bodies)."""
        if self._listing is not None:
            names = [n for n in self.names() if keep(n)]
        else:
            candidates = list(self.source.side_files)
            names = [n for n, f in zip(candidates, self.pool().map(self.find, candidates)) if f is not None and keep(n)]
        chosen = []
        for name in names:
            size = self._files[name].size
            if size > max_bytes:
                log.warning("%s: not copied to the student (%d bytes: too large for a tokenizer or config file)",
                            join(self.url, name), size)
            elif name not in eager:
                chosen.append(name)
        return LazyFiles(eager, chosen, self)

    # -- reading tensors ------------------------------------------------------------------

    def plan_reader(self, plan: "Plan", skip_shards: Iterable[str], chunk_bytes: int,
                    whole_copies: bool = True) -> RemoteReader:
        """The engine's reader for ``plan`` (the shards in ``skip_shards`` are not read)."""
        skip = frozenset(skip_shards)
        profile = None
        if self.options.adaptive:  # every kept run and gap, for the adaptive rule's choice (adaptive.py)
            profile = Profile.of(plan_spans(plan, chunk_bytes, skip, whole_copies),
                                 lambda path: self.remote_file(path).size, self.options.max_request_bytes)
        return RemoteReader(self, plan_spans(plan, chunk_bytes, skip, whole_copies), chunk_bytes, profile)

    def read_rows(self, info: TensorInfo, first: int, count: int, shape: tuple[int, ...],
                  rows: list[int] | None) -> "torch.Tensor":
        """Elements first..first+count-1 of a tensor viewed as ``shape``, as same-width integers;
        with ``rows``, only those rows of dimension 0 are fetched (verify's reads)."""
        import torch  # verify compares values with torch

        from ..io.format import BITS_DTYPE

        nbytes = count * info.itemsize
        out = torch.empty(nbytes, dtype=torch.uint8)
        if nbytes:
            row_bytes = math.prod(shape[1:]) * info.itemsize if shape else nbytes
            runs = row_runs(sorted(set(rows)), row_bytes) if rows is not None and shape else [(0, nbytes)]
            span = Span(info.path, info.offset + first * info.itemsize, nbytes, runs)
            view = memoryview(out.numpy())
            f = self.remote_file(info.path)

            def fetch(req) -> None:
                targets = [(None if s is None else view[off:off + n], n) for s, off, n in req.pieces]
                self.fetcher.fill(f, req.start, req.end, Pieces(targets))

            requests = list(coalesce([span], self.options.gap_bytes, self.options.max_request_bytes))
            list(self.pool().map(fetch, requests))
        return out.view(BITS_DTYPE[info.itemsize])

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.options.requests, thread_name_prefix="slicer-remote")
        return self._pool

    # -- bookkeeping ----------------------------------------------------------------------

    @property
    def bytes_fetched(self) -> int:
        return self.fetcher.bytes_fetched

    def stats(self) -> dict:
        """Requests, resolves, retries and rate-limit waits so far (the summary's ``network``)."""
        return self.fetcher.stats()

    def record(self, files: Iterable[RemotePath]) -> dict:
        """The manifest's ``teacher`` entry: where, which revision, each file's size and ETag."""
        return {"path": self.url, "source": self.source.kind, **self.source.identity(),
                "files": [self._files[p.name].describe() for p in files]}

    def check_unchanged(self, paths: Iterable[RemotePath]) -> None:
        """Every file read is still the one the plan read (size and ETag)."""
        for p in sorted(paths, key=lambda p: p.name):
            planned = self._files[p.name]
            now = self.fetcher.call(planned.url, lambda: self.source.restat(planned))
            if now is None:
                raise Changed(f"{planned.url}: the remote file disappeared during the run; plan again")
            if now.size != planned.size or (now.etag and planned.etag and now.etag != planned.etag):
                raise Changed(f"{planned.url}: the remote file changed during the run (size {planned.size} -> "
                              f"{now.size}, ETag {planned.etag} -> {now.etag}); plan again")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        self.source.close()


class LazyFiles(Mapping):
    """Small files for OUT: names known now, bytes fetched when first read (after the shards)."""

    def __init__(self, eager: dict[str, bytes], names: list[str], folder: RemoteFolder):
        self._eager = dict(eager)
        self._names = [n for n in names if n not in self._eager]
        self._folder = folder

    def __getitem__(self, name: str) -> bytes:
        if name not in self._eager:
            if name not in self._names:
                raise KeyError(name)
            self._eager[name] = self._folder.read_file(name)
        return self._eager[name]

    def __iter__(self) -> Iterator[str]:
        yield from dict.fromkeys([*self._eager, *self._names])

    def __len__(self) -> int:
        return len(set(self._eager) | set(self._names))
