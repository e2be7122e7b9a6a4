"""The plan: every student tensor's source, index sets, dtype, shard and offset.

Built from headers alone (no tensor bytes), so ``slicer plan`` is instant and the
shard headers are known before any data moves: each shard is then written front to
back in one pass. Pure: no file I/O here.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..axes import AxisTable, Binder, Chooser, Layout, Ranking, complete
from ..io.checkpoint import Checkpoint
from ..errors import SlicerError
from .layers import LayerMapper
from . import quantized
from .quantized import Dequant, Scheme
from ..io.format import CAST_TARGETS, DTYPES, TensorInfo, build_header
from ..selection import LAYER_SELECTIONS, IndexSet

SHARD_METADATA = {"format": "pt"}
DTYPE_CHOICES = ("keep", *CAST_TARGETS)


@dataclass(frozen=True)
class Options:
    method: str = "uniform"
    seed: int = 0
    layer_selection: str = "first"
    exclude: tuple[str, ...] = ()
    dtype: str = "keep"
    max_shard_size: int = 5_000_000_000
    attention: str = "flat"  # "heads": keep whole attention heads (needs head counts: config route)
    quantized: str | None = None  # FP8 teachers: "blocks" (whole blocks, bits exact) or "dequantize"
    route_cache: bool = True  # reuse the transformers route's bindings kept by an earlier run (slicer.hf.route_cache)

    def as_dict(self) -> dict:
        out = {
            "attention": self.attention,
            "method": self.method,
            "seed": self.seed,
            "layer_selection": self.layer_selection,
            "exclude": list(self.exclude),
            "dtype": self.dtype,
            "max_shard_size": self.max_shard_size,
        }
        if self.quantized is not None:  # only where asked: manifests of other runs stay as they were
            out["quantized"] = self.quantized
        return out


@dataclass(frozen=True)
class StudentTensor:
    """What the student needs: a name and a shape (from a template or a config)."""

    name: str
    shape: tuple[int, ...]
    source: str | None = None  # teacher tensor to select from, when not the (layer-mapped) same name


@dataclass
class TensorJob:
    name: str  # student tensor name
    source: TensorInfo  # teacher tensor it is selected from
    shape: tuple[int, ...]
    dtype: str  # output dtype (safetensors name)
    index: tuple[IndexSet, ...]  # one per dimension
    layouts: tuple[Layout, ...] = ()  # one per dimension: the axes it is bound to (plan.axes)
    shard: int = 0
    offset: int = 0  # relative to the shard's data section
    dequant: Dequant | None = None  # values dequantized from the teacher's stored tensors (slicer.plan.quantized)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype].itemsize

    @property
    def is_copy(self) -> bool:
        """Every dimension kept whole and no cast: the bytes are copied as they are."""
        return self.dequant is None and self.dtype == self.source.dtype and all(ix.is_identity for ix in self.index)

    @property
    def bytes_to_read(self) -> int:
        """Teacher bytes in the rows the first dimension keeps (what we touch)."""
        if not self.shape or self.source.shape[0] == 0:
            return self.source.nbytes
        return self.source.nbytes // self.source.shape[0] * self.shape[0]


@dataclass
class ShardPlan:
    filename: str
    jobs: list[TensorJob]
    header: bytes

    @property
    def size(self) -> int:
        return len(self.header) + sum(j.nbytes for j in self.jobs)


@dataclass
class Plan:
    teacher: Checkpoint
    options: Options
    jobs: list[TensorJob]
    shards: list[ShardPlan]
    layer_maps: dict[str, list[int]]  # student prefix -> teacher layer of each student layer
    index_sets: dict[str, IndexSet]
    skipped: list[str] = field(default_factory=list)  # teacher tensors the student does not use
    excluded: list[str] = field(default_factory=list)  # student tensors dropped by --exclude
    teacher_depths: dict[str, int] = field(default_factory=dict)  # per layer-map prefix
    student: dict = field(default_factory=dict)  # where the student spec came from (StudentSpec.origin)
    axes: AxisTable = field(default_factory=AxisTable)  # every axis instance the layouts name
    component_maps: dict[str, list[int]] = field(default_factory=dict)  # student prefix -> teacher member (experts.N)
    component_axes: dict[str, str] = field(default_factory=dict)  # student prefix -> the axis it indexes
    binding: str = "flat"  # which binder bound the dimensions
    leaf_keys: dict[str, str] = field(default_factory=dict)  # leaf axis -> its index set's key
    scores: dict = field(default_factory=dict)  # importance: where the scores came from (file, sha256, calibration)
    quantization: dict = field(default_factory=dict)  # a quantized teacher: how its weights were handled

    @property
    def bytes_to_write(self) -> int:
        return sum(s.size for s in self.shards)

    @property
    def bytes_to_read(self) -> int:
        return sum(j.bytes_to_read for j in self.jobs)

    @property
    def is_sharded(self) -> bool:
        return len(self.shards) > 1


def format_bytes(n: float) -> str:
    """Bytes in decimal units, as parse_size reads them (and Hugging Face writes them)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError


def parse_size(value: int | str) -> int:
    """'5GB' -> 5_000_000_000 (decimal units, as Hugging Face uses them); ints pass."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(value), re.IGNORECASE)
        if not m:
            raise SlicerError(f"max shard size {value!r} is not a size like 5GB, 500MB or 1000000")
        units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
                 "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
        size = int(float(m.group(1)) * units[(m.group(2) or "").upper()])
    if size <= 0:
        raise SlicerError(f"max shard size must be positive, got {value!r}")
    return size


def build_plan(teacher: Checkpoint, student: list[StudentTensor], options: Options, binder: Binder | None = None,
               *, origin: dict | None = None, ranking: Ranking | None = None,
               quantization: Scheme | None = None) -> Plan:
    """Match every student tensor to its teacher source and lay out the output.

    ``binder`` says which axes every dimension is bound to (the flat binder: none, the
    reference's per-size rule); ``ranking`` holds the scores of importance selection;
    ``origin`` says where the student spec came from (kept for the manifest); ``quantization`` is the
    teacher's declared quantization (FP8 block scales, MXFP4: slicer.plan.quantized)."""
    if options.layer_selection not in LAYER_SELECTIONS:
        raise SlicerError(f"unknown layer selection {options.layer_selection!r} (choose from {', '.join(LAYER_SELECTIONS)})")
    if options.dtype not in DTYPE_CHOICES:
        raise SlicerError(f"unknown dtype {options.dtype!r} (choose from {', '.join(DTYPE_CHOICES)})")
    binder = binder or Binder()
    chooser = Chooser(options.method, options.seed, ranking)
    table = AxisTable()
    excludes = _compile(options.exclude)
    try:
        quant = quantized.prepare(teacher.tensors, quantization, options, list(student), flat=binder.name == "flat")
    except SlicerError as e:
        raise SlicerError(f"{teacher.path}: {e}") from e
    tensors = teacher.tensors if quant is None else quant.teacher  # scales folded into their weights
    student = student if quant is None else quant.student
    kinds = binder.layer_kinds() if quant is None else quant.kinds(binder.layer_kinds())

    component_axes: dict[str, str] = {}

    def component(student_prefix: str, teacher_prefix: str, t: int, s: int) -> list[int] | None:
        name = binder.component(student_prefix, teacher_prefix, t, s, table)
        if name is None:
            return None
        component_axes[student_prefix] = name
        return chooser.dim(table, ((name,),), student_prefix).indices()

    layer_scores = ranking.layers() if hasattr(ranking, "layers") else None
    mapper = LayerMapper(tensors, (t.name for t in student), options.layer_selection,
                         kinds=kinds, component=component, layer_scores=layer_scores)

    bound, excluded, problems = [], [], []
    for tensor in student:
        if any(rx.search(tensor.name) for rx in excludes):
            excluded.append(tensor.name)
            continue
        source_name = mapper.teacher_name(tensor.source or tensor.name)
        source = tensors.get(source_name)
        problem = _mismatch(tensor, source_name, source)
        if problem:
            problems.append(problem)
            continue
        try:
            bound.append((tensor, source, binder.bind(tensor.name, source_name, source.shape, tensor.shape, table)))
        except SlicerError as e:
            raise SlicerError(f"{teacher.path}: {e}") from e
    completed = []
    for tensor, source, layouts in bound:  # a second pass: open dimensions may match any axis named above
        try:
            completed.append((tensor, source, complete(binder, table, tensor.name, layouts, source.shape, tensor.shape)))
        except SlicerError as e:
            raise SlicerError(f"{teacher.path}: {e}") from e
    if quant is not None and not problems:
        try:
            quant.block_axes(table, completed)  # before any index set is composed
        except SlicerError as e:
            raise SlicerError(f"{teacher.path}: {e}") from e
    jobs = []
    for tensor, source, layouts in completed:
        index = tuple(chooser.dim(table, layout, f"{tensor.name}/{d}") for d, layout in enumerate(layouts))
        jobs.append(TensorJob(tensor.name, source, tensor.shape, _out_dtype(source.dtype, options.dtype), index, layouts))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SlicerError(f"{teacher.path}: {problems[0]}{more}")
    if not jobs:
        raise SlicerError(f"{teacher.path}: nothing to write: every student tensor was excluded")
    try:
        if quant is not None:
            jobs = quant.finish(jobs, table, chooser)
        binder.finish(jobs, dict(mapper.maps))
    except SlicerError as e:
        raise SlicerError(f"{teacher.path}: {e}") from e

    # Visit teacher tensors in file order: reads stay sequential, even on a cold cache.
    files = {p: i for i, p in enumerate(teacher.files)}
    jobs.sort(key=lambda j: (files[j.source.path], j.source.offset))
    used = {j.source.name for j in jobs} | (quant.used(jobs) if quant is not None else set())
    skipped = [n for n in teacher.tensors if n not in used]
    shards = _lay_out_shards(jobs, options.max_shard_size)
    return Plan(teacher, options, jobs, shards, dict(mapper.maps), dict(chooser.sets), skipped, excluded,
                teacher_depths=dict(mapper.mapped_depths), student=dict(origin or {}), axes=table,
                component_maps=dict(mapper.component_maps), component_axes=component_axes, binding=binder.name,
                leaf_keys=dict(chooser.leaf_keys), quantization=quant.describe(jobs) if quant is not None else {},
                scores=_scores_record(ranking, options))


def _scores_record(ranking: Ranking | None, options: Options) -> dict:
    uses = options.method == "importance" or options.layer_selection == "importance"
    return ranking.describe() if uses and hasattr(ranking, "describe") else {}


def _compile(patterns: tuple[str, ...]) -> list[re.Pattern]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise SlicerError(f"--exclude {p!r} is not a valid regular expression: {e}") from e
    return out


def _mismatch(tensor: StudentTensor, source_name: str, source: TensorInfo | None) -> str | None:
    if source is None:
        via = f" (layer-mapped to {source_name!r})" if source_name != tensor.name else ""
        return f"student tensor {tensor.name!r} has no source in the teacher{via}"
    if len(tensor.shape) != len(source.shape):
        return f"student tensor {tensor.name!r} has shape {list(tensor.shape)} but teacher tensor {source.name!r} has rank {len(source.shape)} {list(source.shape)}"
    for d, (s, t) in enumerate(zip(tensor.shape, source.shape)):
        if s > t:
            return f"student tensor {tensor.name!r} {list(tensor.shape)} is larger than teacher tensor {source.name!r} {list(source.shape)} in dimension {d}"
        if s == 0 < t:
            return f"student tensor {tensor.name!r} {list(tensor.shape)} is empty in dimension {d} where teacher tensor {source.name!r} is not"
    return None


def _out_dtype(teacher_dtype: str, choice: str) -> str:
    if choice == "keep" or not DTYPES[teacher_dtype].floating:
        return teacher_dtype  # as torch_dtype in HF: casts apply to floating tensors only
    return CAST_TARGETS[choice]


def _lay_out_shards(jobs: list[TensorJob], max_size: int) -> list[ShardPlan]:
    """Greedy split in visiting order; a tensor larger than the limit gets its own shard."""
    groups: list[list[TensorJob]] = [[]]
    size = 0
    for job in jobs:
        if groups[-1] and size + job.nbytes > max_size:
            groups.append([])
            size = 0
        groups[-1].append(job)
        size += job.nbytes
    n = len(groups)
    shards = []
    for i, group in enumerate(groups):
        filename = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        header, offsets = build_header([(j.name, j.dtype, j.shape, j.nbytes) for j in group], SHARD_METADATA)
        for job, offset in zip(group, offsets):
            job.shard, job.offset = i, offset
        shards.append(ShardPlan(filename, group, header))
    return shards
