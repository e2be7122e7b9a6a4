"""``slicer bench``: how fast the selection runs, against a plain copy, and end to end.

Two parts, each returning :class:`Record` objects (the CLI prints them through
:func:`format_records`; nothing here prints):

* **gather**: the project's own gather (``slicer.run.torch_gather.gather_torch`` on the CPU; the
  Triton kernel on a GPU; the Triton interpreter on the CPU only when asked) for every
  backend x dtype x shape x selection, timed as the median of repeats
  (``time.perf_counter`` after a warmup call on the CPU, ``triton.testing.do_bench`` on
  a GPU). The baseline is a plain ``torch.Tensor.copy_`` of a contiguous block of the
  same number of output bytes on the same device.

  GB/s = (bytes read + bytes written by the selection) / median seconds, where bytes
  read are the *kept* elements only (out.numel() x itemsize, not the rows or pages
  skipped over) and bytes written are the output's bytes; the copy is counted the same
  way (its block read + written), so "x copy" = gather GB/s / copy GB/s = copy time /
  gather time. Elements move as same-width integers, as ``slicer shrink`` moves them
  when no cast is asked, so bf16 and fp16 time alike.

* **e2e**: ``slicer.shrink`` of a Llama-shaped bf16 teacher generated for the run
  (``--size-gb``, built with bench/teachers.py from the source checkout) to half
  width and half depth: time, GB/s (teacher bytes read + student bytes written, as
  :class:`slicer.Summary` counts them) and peak anonymous memory of this process.

Long on purpose: the bench command's cases, backends, timing and report in one place; nothing else in the package imports it.
"""
from __future__ import annotations

import datetime
import gc
import importlib.util
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import SlicerError
from ..run.torch_gather import gather_torch
from .report import format_bytes
from ..io.format import BITS_DTYPE
from ..axes import Chooser, flat_axis

log = logging.getLogger("slicer")

DTYPES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1}  # name -> itemsize (fp8 = float8_e4m3fn)
SHAPES = ("square", "vocab", "conv")
SELECTIONS = ("uniform", "consecutive", "random")
SQUARE_SIZES = (1024, 2048, 4096, 8192)
VOCAB = ((128000, 4096), (128000, 2048))  # a tall vocabulary matrix, half its width kept
CONV = ((768, 384, 7, 7), (384, 192, 7, 7))  # a conv kernel, half the channels kept
# The interpreter pays per program in Python: keep its cases small.
INTERPRETER_MAX_OUT_ELEMENTS = 1 << 22

FULL = dict(sizes=SQUARE_SIZES, dtypes=("bf16", "fp16", "fp32", "fp8"), shapes=SHAPES,
            selections=("uniform", "consecutive"), repeats=5, size_gb=1.0)
QUICK = dict(sizes=(1024, 2048, 4096), dtypes=("bf16", "fp32"), shapes=("square", "conv"),
             selections=("uniform", "consecutive"), repeats=3, size_gb=0.25)


@dataclass
class Record:
    kind: str  # "gather" or "e2e"
    backend: str  # "torch" or "triton"
    device: str  # "cpu", "cuda" (or "cpu (triton interpreter)")
    dtype: str
    shape: str  # "4096x4096->2048x2048", or the teacher and student of an e2e run
    selection: str
    seconds: float  # median
    bytes_moved: int  # bytes read + bytes written
    gb_per_s: float
    repeats: int
    copy_seconds: float | None = None  # the baseline: copy_ of as many output bytes
    copy_gb_per_s: float | None = None
    ratio: float | None = None  # gb_per_s / copy_gb_per_s
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class BenchResult:
    machine: dict
    records: list[Record]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"machine": self.machine, "notes": self.notes, "records": [r.as_dict() for r in self.records]}


# ----------------------------------------------------------------------------- options
def resolve(*, quick: bool = False, sizes=None, dtypes=None, shapes=None, selections=None, repeats=None,
            size_gb=None) -> dict:
    """The full or quick defaults, overridden by what was given; validated."""
    o = dict(QUICK if quick else FULL)
    given = dict(sizes=sizes, dtypes=dtypes, shapes=shapes, selections=selections, repeats=repeats, size_gb=size_gb)
    o.update({k: v for k, v in given.items() if v is not None})
    for key, allowed in (("dtypes", DTYPES), ("shapes", SHAPES), ("selections", SELECTIONS)):
        bad = [v for v in o[key] if v not in allowed]
        if bad or not o[key]:
            raise SlicerError(f"--{key}: unknown {', '.join(map(repr, bad)) or 'empty list'} "
                              f"(choose from {', '.join(allowed)})")
    if any(n < 2 or n % 2 for n in o["sizes"]):
        raise SlicerError(f"--sizes: square sizes must be even and >= 2, got {list(o['sizes'])}")
    if o["repeats"] < 1:
        raise SlicerError(f"--repeats must be >= 1, got {o['repeats']}")
    if o["size_gb"] <= 0:
        raise SlicerError(f"--size-gb must be > 0, got {o['size_gb']}")
    return o


def parse_list(text: str, kind: Callable = str) -> tuple:
    """'a,b,c' -> (a, b, c), converted by ``kind``; a clear error otherwise."""
    try:
        return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise SlicerError(f"cannot parse list {text!r}: {e}") from e


# ----------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    shape_kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    selection: str

    @property
    def label(self) -> str:
        return f"{'x'.join(map(str, self.in_shape))}->{'x'.join(map(str, self.out_shape))}"


def cases(sizes: Sequence[int], shapes: Sequence[str], selections: Sequence[str]) -> list[Case]:
    out = []
    pairs = []
    if "square" in shapes:
        pairs += [("square", (n, n), (n // 2, n // 2)) for n in sizes]
    if "vocab" in shapes:
        pairs.append(("vocab", *VOCAB))
    if "conv" in shapes:
        pairs.append(("conv", *CONV))
    for kind, t, s in pairs:
        out += [Case(kind, t, s, sel) for sel in selections]
    return out


def index_for(case: Case, device: str) -> list:
    """Per dimension, what the engine hands a gather: a range (strided view) or an int64 tensor."""
    chooser = Chooser(case.selection, seed=0)  # the run's own chooser: a dimension of nothing known is flat
    sets = [chooser.leaf(flat_axis(t, s), f"bench/{d}") for d, (t, s) in enumerate(zip(case.in_shape, case.out_shape))]
    return [ix.part(0, ix.s) if ix.is_strided else torch.tensor(ix.indices(), dtype=torch.int64, device=device)
            for ix in sets]


# ----------------------------------------------------------------------------- backends
@dataclass
class _Backend:
    name: str
    device: str  # where tensors live: "cpu" or "cuda"
    label: str  # the device column
    gather: Callable
    timer: Callable[..., float]  # (fn, repeats, samples=list) -> median seconds
    max_out_elements: int | None = None


MIN_SAMPLE_S = 0.005  # a timed sample runs a fast call this long at least (timeit-style batches)


def time_cpu(fn: Callable[[], object], repeats: int, warmup: int = 1, samples: list | None = None) -> float:
    """Median seconds per call over ``repeats`` samples, after ``warmup`` untimed calls.

    A call faster than MIN_SAMPLE_S is run in batches (the count set by one more call), so
    the timer's resolution and overhead do not dominate tiny cases."""
    for _ in range(warmup):
        fn()  # first touches: page faults, allocator, thread pool start
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    batch = 1 if once >= MIN_SAMPLE_S else min(1000, math.ceil(MIN_SAMPLE_S / max(once, 1e-7)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        times.append((time.perf_counter() - t0) / batch)
    if samples is not None:
        samples[:] = times
    return statistics.median(times)


def time_cuda(fn: Callable[[], object], repeats: int, samples: list | None = None) -> float:
    """Median seconds on the GPU: triton's do_bench (it flushes L2, syncs, repeats for ~100 ms)."""
    try:
        from ..kernels.timing import median_seconds

        return median_seconds(fn)
    except ImportError:
        def synced():
            fn()
            torch.cuda.synchronize()
        return time_cpu(synced, repeats, warmup=3, samples=samples)


def backends(interpreter: bool = False) -> list[_Backend]:
    """torch on the CPU; the Triton kernel on a GPU when there is one; the interpreter if asked."""
    from ..run import backends as bk

    found = [_Backend("torch", "cpu", "cpu", gather_torch, time_cpu)]
    if torch.cuda.is_available() and bk._has_triton():
        bk.choose("cuda", "triton")  # checks the kernel imports; its staged host path is not what we time
        # Device-resident tensors: the kernel alone, as the copy it is compared with (the
        # engine's host<->device staging is part of the end-to-end figure instead).
        found.append(_Backend("triton", "cuda", torch.cuda.get_device_name(), bk._triton_gather(), time_cuda))
    if interpreter:
        chosen = bk.choose("cpu", "triton")  # the engine's path: it clones src per call (counted)
        found.append(_Backend("triton", "cpu", "cpu (triton interpreter)", chosen.gather, time_cpu,
                              INTERPRETER_MAX_OUT_ELEMENTS))
    return found


def _filled(shape: Sequence[int], dtype: torch.dtype, device: str) -> torch.Tensor:
    """A tensor whose every page is written: untouched memory reads as the shared zero page."""
    t = torch.empty(tuple(shape), dtype=dtype, device=device)
    t.view(-1).view(torch.uint8).fill_(0x3C)
    return t


def gather_records(*, sizes, dtypes, shapes, selections, repeats, interpreter=False) -> tuple[list[Record], list[str]]:
    records: list[Record] = []
    notes: list[str] = []
    all_cases = cases(sizes, shapes, selections)
    for be in backends(interpreter):
        copy_cache: dict[tuple[int, int], float] = {}
        for dtype in dtypes:
            if dtype == "fp8" and not hasattr(torch, "float8_e4m3fn"):
                notes.append(f"fp8 skipped: torch {torch.__version__} has no float8_e4m3fn")
                continue
            bits = BITS_DTYPE[DTYPES[dtype]]
            for case in all_cases:
                n_out = math.prod(case.out_shape)
                if be.max_out_elements is not None and n_out > be.max_out_elements:
                    note = f"{be.label}: cases with more than {be.max_out_elements} output elements skipped"
                    if note not in notes:
                        notes.append(note)
                    continue
                log.info("bench: %s/%s %s %s %s", be.name, be.label, dtype, case.label, case.selection)
                records.append(_one(be, dtype, bits, case, repeats, copy_cache))
                gc.collect()
    return records, notes


def _time_gather(be: _Backend, case: Case, bits: torch.dtype, repeats: int, samples: list) -> float:
    src = _filled(case.in_shape, bits, be.device)
    out = torch.empty(case.out_shape, dtype=bits, device=be.device)
    index = index_for(case, be.device)
    return be.timer(lambda: be.gather(src, index, out), repeats, samples=samples)


def _time_copy(be: _Backend, bits: torch.dtype, n: int, repeats: int) -> float:
    block, dst = _filled((n,), bits, be.device), torch.empty(n, dtype=bits, device=be.device)
    return be.timer(lambda: dst.copy_(block), repeats)


def _one(be: _Backend, dtype: str, bits: torch.dtype, case: Case, repeats: int,
         copy_cache: dict[tuple[int, int], float]) -> Record:
    itemsize = torch.empty((), dtype=bits).element_size()
    moved = 2 * math.prod(case.out_shape) * itemsize  # the kept elements read + the output written
    samples: list[float] = []
    seconds = _time_gather(be, case, bits, repeats, samples)  # its tensors are freed on return
    key = (itemsize, moved)
    if key not in copy_cache:
        copy_cache[key] = _time_copy(be, bits, math.prod(case.out_shape), repeats)
    copy_s = copy_cache[key]
    gbps, copy_gbps = moved / seconds / 1e9, moved / copy_s / 1e9
    return Record("gather", be.name, be.label, dtype, case.label, case.selection, seconds, moved, gbps, repeats,
                  copy_s, copy_gbps, gbps / copy_gbps,
                  {"shape_kind": case.shape_kind, "in_shape": list(case.in_shape), "out_shape": list(case.out_shape),
                   "samples_s": samples})


# ----------------------------------------------------------------------------- end to end
def bench_module(name: str):
    """bench/<name>.py of the source checkout (the teacher builders live there, not in the package)."""
    path = Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
    if not path.is_file():
        raise SlicerError(f"{path}: not found; the end-to-end part of slicer bench builds its teacher with "
                          f"bench/{name}.py from a source checkout (pip install -e .), or skip it with --no-e2e")
    mod_name = f"_slicer_bench_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# (hidden, intermediate, heads, kv_heads, head_dim, vocab) by teacher size: a layer of the
# first is 88.6 MB in bf16, its embed + lm_head 262 MB.
_FAMILIES = ((0.5, (2048, 5504, 16, 4, 128, 32000)),
             (0.05, (1024, 2752, 8, 2, 128, 32000)),
             (0.0, (256, 688, 4, 2, 64, 8000)))


def llama_pair(size_gb: float):
    """A Llama-shaped bf16 teacher of about ``size_gb`` GB (an even layer count, >= 2) and
    its student at half width and half depth: (teacher, student) as teachers.LlamaShape."""
    teachers = bench_module("teachers")
    hidden, inter, heads, kv, hd, vocab = next(f for floor, f in _FAMILIES if size_gb >= floor)
    t0 = teachers.LlamaShape(hidden=hidden, intermediate=inter, heads=heads, kv_heads=kv, head_dim=hd, layers=0,
                             vocab=vocab)
    fixed = teachers.total_bytes(t0.tensors())
    per_layer = teachers.total_bytes(teachers.LlamaShape(**{**t0.__dict__, "layers": 1}).tensors()) - fixed
    layers = max(2, 2 * round((size_gb * 1e9 - fixed) / per_layer / 2))
    teacher = teachers.LlamaShape(**{**t0.__dict__, "layers": layers})
    student = teachers.LlamaShape(hidden=hidden // 2, intermediate=inter // 2, heads=heads // 2,
                                  kv_heads=max(1, kv // 2), head_dim=hd, layers=layers // 2, vocab=vocab)
    return teacher, student


def e2e_records(*, size_gb: float, workdir: str | Path | None, repeats: int, keep: bool = False) -> list[Record]:
    """Generate a teacher + template under a temporary folder in ``workdir``, shrink it
    with each available backend (median of ``repeats``), delete it all."""
    from ..api import shrink
    from ..run.memory import anon_bytes

    teachers = bench_module("teachers")
    teacher_shape, student_shape = llama_pair(size_gb)
    root = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="slicer-bench-", dir=root))
    records = []
    try:
        quiet = lambda msg: log.info("bench: %s", str(msg).strip())  # noqa: E731
        t0 = time.perf_counter()
        teachers.build_teacher(tmp / "teacher", teacher_shape, log=quiet)
        teachers.build_template(tmp / "template", student_shape, log=quiet)
        build_s = time.perf_counter() - t0
        gc.collect()
        teacher_bytes = teachers.total_bytes(teacher_shape.tensors())
        student_bytes = teachers.total_bytes(student_shape.tensors())
        targets = [("cpu", "torch")]
        if torch.cuda.is_available():
            targets.append(("cuda", "auto"))
        for device, backend in targets:
            runs = []
            for _ in range(repeats):
                before = anon_bytes()
                s = shrink(tmp / "teacher", tmp / "out", template=tmp / "template", device=device, backend=backend,
                           overwrite=True)
                runs.append((s, before))
                shutil.rmtree(tmp / "out", ignore_errors=True)
            runs.sort(key=lambda r: r[0].seconds)
            s, before = runs[len(runs) // 2]
            records.append(Record(
                "e2e", s.backend, s.device, "bf16",
                f"llama h{teacher_shape.hidden} L{teacher_shape.layers} -> h{student_shape.hidden} L{student_shape.layers}",
                "uniform", s.seconds, s.bytes_read + s.bytes_written, s.gb_per_s, repeats,
                extra={"teacher_bytes": teacher_bytes, "student_bytes": student_bytes, "bytes_read": s.bytes_read,
                       "bytes_written": s.bytes_written, "peak_memory_bytes": max(r[0].peak_memory_bytes for r in runs),
                       "anon_before_bytes": before, "all_seconds": [r[0].seconds for r in runs],
                       "build_seconds": round(build_s, 2), "workdir": str(tmp)},
            ))
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return records


# ----------------------------------------------------------------------------- whole run
def run_bench(*, quick: bool = False, sizes=None, dtypes=None, shapes=None, selections=None, repeats=None,
              size_gb=None, interpreter: bool = False, gather: bool = True, e2e: bool = True,
              workdir: str | Path | None = None) -> BenchResult:
    o = resolve(quick=quick, sizes=sizes, dtypes=dtypes, shapes=shapes, selections=selections, repeats=repeats,
                size_gb=size_gb)
    records: list[Record] = []
    notes: list[str] = []
    busy = _cpu_busy()
    if busy > 30:
        # With a core taken, torch's parallel regions wait for a time slice (~4-8 ms each here).
        notes.append(f"the CPUs were {busy:.0f}% busy just before the run: other processes compete for them, so the "
                     f"CPU figures are noisy")
    if e2e:  # first: its peak memory then starts from a clean process
        records += e2e_records(size_gb=o["size_gb"], workdir=workdir, repeats=1 if quick else min(o["repeats"], 3))
    if gather:
        found, more = gather_records(sizes=o["sizes"], dtypes=o["dtypes"], shapes=o["shapes"],
                                     selections=o["selections"], repeats=o["repeats"], interpreter=interpreter)
        records += found
        notes += more
    if not torch.cuda.is_available():
        notes.append("no CUDA device: no GPU figures")
    return BenchResult(machine_facts(workdir), records, notes)


def _cpu_busy(window: float = 0.5) -> float:
    """Percent of all CPUs busy over a short window (0 where psutil cannot tell)."""
    try:
        import psutil

        return psutil.cpu_percent(interval=window)
    except (ImportError, OSError):  # pragma: no cover
        return 0.0


def machine_facts(path: str | Path | None = None) -> dict:
    """What the figures came from: CPU, cores, memory, disk, versions, date."""
    facts: dict = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    try:
        import psutil

        facts["ram_bytes"] = psutil.virtual_memory().total
    except ImportError:  # pragma: no cover - psutil is a dependency
        pass
    facts["disk"] = disk_facts(path or tempfile.gettempdir())
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name()
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def disk_facts(path: str | Path) -> dict:
    """Filesystem and block device of ``path`` (best effort: /proc/mounts, /sys/block)."""
    path = Path(path)
    while not path.exists():
        path = path.parent
    usage = shutil.disk_usage(path)
    facts = {"path": str(path), "free_bytes": usage.free, "total_bytes": usage.total}
    try:
        real = os.path.realpath(path)
        best = ("", "", "")
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fs = line.split()[:3]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[1]):
                best = (dev, mnt, fs)
        facts.update(device=best[0], mount=best[1], fs=best[2])
        name = Path(best[0]).name
        rot = Path(f"/sys/block/{name}/queue/rotational")
        if rot.exists():
            facts["rotational"] = rot.read_text().strip() == "1"
            if name.startswith("vd"):
                facts["note"] = "virtio disk: the rotational flag says nothing about the host's storage"
    except (OSError, ValueError):
        pass
    return facts


# ----------------------------------------------------------------------------- output
GATHER_HEADER = (
    "gather throughput: GB/s = (bytes read + bytes written by the selection) / median time, bytes read counting\n"
    "the kept elements only (so 2 x output bytes); copy = torch copy_ of a contiguous block of the output's size\n"
    "on the same device, counted the same way; x copy = GB/s / copy GB/s. Elements move as same-width integers."
)


def format_machine(m: dict) -> str:
    ram = f"{m['ram_bytes'] / 2**30:.1f} GiB RAM" if "ram_bytes" in m else "RAM unknown"
    d = m.get("disk", {})
    disk = f"{d.get('fs', '?')} on {d.get('device', '?')} ({d.get('free_bytes', 0) / 1e9:.0f} GB free)"
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ", no GPU"
    return (f"machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}), {ram}{gpu}; "
            f"disk {disk}; python {m['python']}, torch {m['torch']}; {m['date']}")


def format_records(result: BenchResult) -> str:
    lines = [format_machine(result.machine)]
    e2e = [r for r in result.records if r.kind == "e2e"]
    gathers = [r for r in result.records if r.kind == "gather"]
    if e2e:
        lines += ["", "end to end: slicer.shrink of a generated Llama-shaped bf16 teacher to half width and depth,",
                  "warm page cache (the teacher was just written); GB/s = (teacher bytes read + student bytes written)",
                  "/ time; peak anon = max sampled RssAnon + RssShmem of this process (before the run in brackets).",
                  f"{'backend':<8} {'device':<6} {'teacher -> student':<30} {'teacher GB':>10} {'student GB':>10} "
                  f"{'seconds':>8} {'GB/s':>6} {'peak anon MB':>18}"]
        for r in e2e:
            x = r.extra
            lines.append(f"{r.backend:<8} {r.device:<6} {r.shape:<30} {x['teacher_bytes'] / 1e9:10.2f} "
                         f"{x['student_bytes'] / 1e9:10.2f} {r.seconds:8.2f} {r.gb_per_s:6.2f} "
                         f"{x['peak_memory_bytes'] / 1e6:8.0f} ({x['anon_before_bytes'] / 1e6:5.0f})")
    if gathers:
        dev = max(6, *(len(r.device) for r in gathers))
        lines += ["", GATHER_HEADER,
                  f"{'backend':<7} {'device':<{dev}} {'dtype':<5} {'shape':<28} {'selection':<11} {'output':>9} "
                  f"{'ms':>9} {'GB/s':>7} {'copy GB/s':>9} {'x copy':>6}"]
        for r in gathers:
            lines.append(f"{r.backend:<7} {r.device:<{dev}} {r.dtype:<5} {r.shape:<28} {r.selection:<11} "
                         f"{format_bytes(r.bytes_moved / 2):>9} {r.seconds * 1e3:9.3f} {_num(r.gb_per_s):>7} "
                         f"{_num(r.copy_gb_per_s):>9} {_num(r.ratio):>6}")
    if result.notes:
        lines += [""] + [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def require_matplotlib():
    """matplotlib.pyplot on the Agg backend, or a SlicerError saying how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SlicerError(f"--plot needs matplotlib: pip install 'weight-slicer[plot]' ({e})") from e
    return plt


def _num(x: float | None) -> str:
    """Two decimals, or three significant digits below 0.1 (interpreter figures)."""
    if x is None:
        return "-"
    return f"{x:.2f}" if abs(x) >= 0.1 or x == 0 else f"{x:.3g}"


def plot(result: BenchResult, path: str | Path) -> Path:
    """Gather GB/s against output size, one line per backend/device/dtype (uniform selection
    where run), the copy baseline per device dashed. Needs matplotlib (the [plot] extra)."""
    plt = require_matplotlib()
    gathers = [r for r in result.records if r.kind == "gather"]
    if not gathers:
        raise SlicerError("--plot: no gather figures to draw (was --no-gather given?)")
    chosen = "uniform" if any(r.selection == "uniform" for r in gathers) else gathers[0].selection
    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[tuple[str, str, str], list[Record]] = {}
    for r in gathers:
        if r.selection == chosen:
            series.setdefault((r.backend, r.device, r.dtype), []).append(r)
    baselines: dict[str, dict[int, float]] = {}
    for (backend, device, dtype), rs in sorted(series.items()):
        rs.sort(key=lambda r: r.bytes_moved)
        ax.plot([r.bytes_moved / 2e6 for r in rs], [r.gb_per_s for r in rs], marker="o",
                label=f"{backend} on {device}, {dtype}")
        for r in rs:
            baselines.setdefault(device, {})[r.bytes_moved] = r.copy_gb_per_s
    for device, pts in baselines.items():
        xs = sorted(pts)
        ax.plot([x / 2e6 for x in xs], [pts[x] for x in xs], linestyle="--", color="black", alpha=0.6,
                label=f"copy_ on {device}")
    ax.set_xscale("log")
    ax.set_xlabel("output size, MB")
    ax.set_ylabel("GB/s (bytes read + written)")
    ax.set_title(f"slicer gather throughput ({chosen} selection)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise SlicerError(f"{path}: cannot write the plot: {e.strerror or e}") from e
    finally:
        plt.close(fig)
    return path
