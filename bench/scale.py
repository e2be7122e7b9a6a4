"""Scaling: slicer vs the naive way vs the I/O floor on teachers of 1, 2, 4 and 8 GB.

Side by side in one run, at a fixed student ratio (half width, half depth), on
Llama-shaped bf16 teachers generated with bench/teachers.py (hidden 2048,
intermediate 5504, 16/4 heads, vocab 32000, the layer count chosen to hit the size;
see slicer.cli.bench.llama_pair). For each size and each way, --repeats whole-process
runs (median wall time; peak anonymous memory = max over samples of RssAnon +
RssShmem of the process tree, bench/memsample.py):

  floor         `cat` of the teacher shards to /dev/null + `dd` of the student's byte
                count to a file; two commands, times summed (as bench/e2e.py)
  floor-direct  the same with `dd oflag=direct`: the write skips the page cache, as
                slicer's writer does (O_DIRECT) where the file system allows it; on
                this VM buffered writes of fresh pages are several times slower
  slicer-cpu    `python -m slicer shrink TEACHER OUT --template TEMPLATE --device cpu`
  slicer-gpu    the same with --device cuda, when torch sees a GPU
  naive         `python bench/e2e.py --naive TEACHER TEMPLATE OUT`: load every shard,
                index_select, one save_file (first-N layers, like slicer's default)

Then, per way: time per teacher GB at each size (linear when it stays put) and the
peak memory across sizes (flat when max/min stays near 1).

Warm by default: before every run the outputs are deleted, `sync`, the teacher is
read once with `cat` (untimed) and its page-cache residency recorded (fincore), then
a --settle pause (see bench/README.md on the VM's free page reporting). With --cold
the page cache is dropped instead (`echo 3 > /proc/sys/vm/drop_caches`, root only;
if that fails the run says so and stays warm). Each size's teacher is deleted after
its measurements unless --keep (disk is limited).

    python bench/scale.py [--sizes 1,2,4,8] [--repeats 3] [--workdir /tmp/slicer-scale] [--keep] [--cold]
                          [--ways floor,floor-direct,slicer-cpu,slicer-gpu,naive] [--json FILE] [--settle 5]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import e2e  # noqa: E402
import memsample  # noqa: E402
import teachers  # noqa: E402

WAYS = ("floor", "floor-direct", "slicer-cpu", "slicer-gpu", "naive")
LINEAR_TOLERANCE = 0.15  # "linear": every median within 15% of the least-squares line t = a + b * GB
FLAT_SPREAD = 1.25  # peak memory, max / min across sizes, for "flat" ...
FLAT_SLACK_BYTES = 64 << 20  # ... or within this many bytes


def drop_caches() -> str | None:
    """Drop the page cache (sync first). None when done, else why not."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        return f"cannot drop the page cache ({e.strerror or e})"
    return None


def env() -> dict:
    out = dict(os.environ)
    out["PYTHONPATH"] = str(ROOT) + (os.pathsep + out["PYTHONPATH"] if out.get("PYTHONPATH") else "")
    return out


def build(workdir: Path, size_gb: float, log) -> dict:
    from slicer.cli.bench import llama_pair

    teacher, student = llama_pair(size_gb)
    d = workdir / f"{size_gb:g}gb"
    t0 = time.perf_counter()
    info = teachers.build_teacher(d / "teacher", teacher, log=log)
    teachers.build_template(d / "template", student, log=log)
    return {
        "size_gb": size_gb,
        "dir": str(d),
        "teacher": str(d / "teacher"),
        "template": str(d / "template" / "model.safetensors"),
        "teacher_files": [str(p) for p in teachers.checkpoint_files(d / "teacher")],
        "teacher_bytes": teachers.total_bytes(teacher.tensors()),
        "student_bytes": teachers.total_bytes(student.tensors()),
        "teacher_shape": teacher.__dict__,
        "student_shape": student.__dict__,
        "build_s": round(time.perf_counter() - t0, 2),
        "reused": info["reused"],
    }


def measure(way: str, facts: dict, args) -> dict:
    files = [Path(p) for p in facts["teacher_files"]]
    template = Path(facts["template"])
    out = Path(facts["dir"]) / f"out-{way}"
    e2e.remove(out)
    if args.cold:
        why = drop_caches()
        if why:
            raise RuntimeError(why)
    else:
        os.sync()
        subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)  # warm, untimed
    e2e.read_header(template)
    cached = e2e.resident_fraction(files)
    time.sleep(args.settle)
    load = os.getloadavg()[0]
    if way.startswith("floor"):
        cat = memsample.run(["cat", *map(str, files)], stdout="/dev/null", interval=args.interval)
        direct = ["oflag=direct"] if way == "floor-direct" else []
        dd = memsample.run(["dd", "if=/dev/zero", f"of={out}", "bs=16M", f"count={template.stat().st_size}",
                            "iflag=count_bytes", *direct], interval=args.interval)
        runs = [cat, dd]
        res = {"wall_s": cat.wall_s + dd.wall_s, "cat_s": cat.wall_s, "write_s": dd.wall_s,
               "peak_anon_bytes": max(cat.peak_anon_bytes, dd.peak_anon_bytes)}
    else:
        if way.startswith("slicer"):
            argv = [sys.executable, "-m", "slicer", "shrink", facts["teacher"], str(out), "--template", str(template),
                    "--overwrite", "--quiet", "--device", way.split("-")[1]]
        else:
            argv = [sys.executable, str(HERE / "e2e.py"), "--naive", facts["teacher"], str(template), str(out)]
        r = memsample.run(argv, cwd=str(ROOT), env=env(), interval=args.interval)
        runs = [r]
        res = {"wall_s": r.wall_s, "peak_anon_bytes": r.peak_anon_bytes}
    res.update(maxrss_bytes=max(r.maxrss_bytes for r in runs), cpu_s=sum(r.user_s + r.sys_s for r in runs),
               teacher_cached_fraction=cached, loadavg_before=load, out_bytes=e2e.dir_bytes(out))
    failed = [r for r in runs if r.returncode != 0]
    e2e.remove(out)
    if failed:
        r = failed[0]
        raise RuntimeError(f"{way}: {' '.join(r.argv)} exited {r.returncode}:\n{r.stderr_tail[-2000:]}")
    return res


def summarize(runs: list[dict]) -> dict:
    walls = [r["wall_s"] for r in runs]
    s = {"median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
         "peak_anon_bytes": max(r["peak_anon_bytes"] for r in runs),
         "maxrss_bytes": max(r["maxrss_bytes"] for r in runs),
         "cpu_s_median": statistics.median(r["cpu_s"] for r in runs),
         "cached_min": min((r["teacher_cached_fraction"] or 0) for r in runs)}
    if "cat_s" in runs[0]:
        s["cat_s_median"] = statistics.median(r["cat_s"] for r in runs)
        s["write_s_median"] = statistics.median(r["write_s"] for r in runs)
    return s


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x: (a, b). A fixed cost (python + torch import, ~1.5 s here)
    makes time per GB fall with size even when the work grows linearly, hence a line."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def verdicts(results: list[dict], ways: list[str]) -> dict:
    out = {}
    for way in ways:
        rows = [(r["facts"]["teacher_bytes"] / 1e9, r["summary"][way]) for r in results if way in r["summary"]]
        if len(rows) < 2:
            continue
        gbs, times = [gb for gb, _ in rows], [s["median_s"] for _, s in rows]
        fixed, slope = fit_line(gbs, times)
        deviation = max(abs(t - (fixed + slope * gb)) / t for gb, t in zip(gbs, times))
        peaks = [s["peak_anon_bytes"] for _, s in rows]
        m_spread = max(peaks) / max(min(peaks), 1)
        out[way] = {
            "s_per_gb": [t / gb for gb, t in zip(gbs, times)],
            "fit_fixed_s": fixed,
            "fit_s_per_gb": slope,
            "fit_max_deviation": deviation,
            "linear": deviation <= LINEAR_TOLERANCE,
            "peak_anon_bytes": peaks,
            "memory_spread": m_spread,
            "flat": m_spread <= FLAT_SPREAD or max(peaks) - min(peaks) <= FLAT_SLACK_BYTES,
        }
    return out


def import_seconds(repeats: int = 3) -> float:
    """Median wall time of `python -c 'import slicer.cli, slicer.api'` (torch included): the
    fixed cost inside every slicer run (the naive way pays torch + safetensors alike)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import slicer.cli, slicer.api"], cwd=ROOT, env=env(), check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def table(results: list[dict], ways: list[str], cache_state: str, import_s: float | None = None) -> str:
    lines = [
        f"{cache_state}. Median of repeats; peak anon = max sampled RssAnon+RssShmem of the process tree.",
        *([f"Python start + import of slicer (torch included), in every slicer time: {import_s:.2f} s (median of 3, measured warm after the runs)."]
          if import_s is not None else []),
        "",
        f"{'teacher':>8} {'student':>8} {'way':<12} {'median s':>9} {'min..max s':>14} {'s/GB':>6} {'x floor':>8} "
        f"{'x naive':>8} {'peak anon MB':>13} {'maxrss MB':>10} {'cpu s':>7} {'cached':>7}",
    ]
    for r in results:
        s, f = r["summary"], r["facts"]
        floor = s.get("floor", {}).get("median_s")
        naive = s.get("naive", {}).get("median_s")
        for way in ways:
            if way not in s:
                continue
            w = s[way]
            lines.append(
                f"{f['teacher_bytes'] / 1e9:6.2f}GB {f['student_bytes'] / 1e9:6.2f}GB {way:<12} {w['median_s']:9.2f} "
                f"{w['min_s']:6.2f}..{w['max_s']:<6.2f} {w['median_s'] / (f['teacher_bytes'] / 1e9):6.2f} "
                f"{w['median_s'] / floor if floor else float('nan'):8.2f} "
                f"{w['median_s'] / naive if naive else float('nan'):8.2f} {w['peak_anon_bytes'] / 1e6:13.1f} "
                f"{w['maxrss_bytes'] / 1e6:10.1f} {w['cpu_s_median']:7.2f} {100 * w['cached_min']:6.0f}%")
        for fl in ("floor", "floor-direct"):
            if fl in s:
                lines.append(f"{'':>18} ({fl} = cat {s[fl]['cat_s_median']:.2f} s + write "
                             f"{s[fl]['write_s_median']:.2f} s)")
    lines.append("")
    v = verdicts(results, ways)
    for way, x in v.items():
        peaks = " ".join(f"{p / 1e6:.0f}" for p in x["peak_anon_bytes"])
        lines.append(
            f"{way:<12} time = {x['fit_fixed_s']:.2f} s + {x['fit_s_per_gb']:.3f} s/GB x teacher GB, every size within "
            f"{100 * x['fit_max_deviation']:.0f}% of that line: {'linear' if x['linear'] else 'NOT linear'};  "
            f"peak anon MB by size: {peaks} (max/min {x['memory_spread']:.2f}: {'flat' if x['flat'] else 'GROWS'})")
    for r in results:
        s, gb = r["summary"], r["facts"]["teacher_bytes"] / 1e9
        for way in ways:
            if not way.startswith("slicer") or way not in s:
                continue
            checks = []
            for fl in ("floor", "floor-direct"):
                if fl in s:
                    x = s[way]["median_s"] / s[fl]["median_s"]
                    checks.append(f"[{'PASS' if x <= e2e.TARGET_SLICER_OVER_FLOOR else 'MISS'}] x {fl} {x:.2f} <= "
                                  f"{e2e.TARGET_SLICER_OVER_FLOOR}")
            if "naive" in s:
                x = s[way]["median_s"] / s["naive"]["median_s"]
                checks.append(f"[{'PASS' if x <= e2e.TARGET_SLICER_OVER_NAIVE else 'MISS'}] x naive {x:.2f} <= "
                              f"{e2e.TARGET_SLICER_OVER_NAIVE}")
            if checks:
                lines.append(f"{gb:5.2f} GB {way:<12} " + "  ".join(checks))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,2,4,8", help="teacher sizes in GB, comma-separated (default 1,2,4,8)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/slicer-scale"))
    ap.add_argument("--ways", default=",".join(WAYS), help="comma-separated (default all; slicer-gpu only with a GPU)")
    ap.add_argument("--keep", action="store_true", help="keep each size's teacher after measuring it")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each timed run (root)")
    ap.add_argument("--json", type=Path, help="write every figure and raw run here")
    ap.add_argument("--settle", type=float, default=5.0, help="pause before each run, seconds (see bench/README.md)")
    ap.add_argument("--interval", type=float, default=0.02, help="memory sampling interval, seconds")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    from slicer.cli.bench import format_machine, machine_facts

    sizes = [float(x) for x in args.sizes.split(",") if x]
    ways = [w for w in args.ways.split(",") if w]
    for w in ways:
        if w not in WAYS:
            ap.error(f"--ways: unknown way {w!r}; choose from {', '.join(WAYS)}")
    if "slicer-gpu" in ways:
        import torch

        if not torch.cuda.is_available():
            ways.remove("slicer-gpu")
            log("no CUDA device: slicer-gpu skipped")
    if args.cold:
        why = drop_caches()
        if why:
            log(f"{why}: the figures are WARM")
            args.cold = False
    cache_state = ("COLD cache: page cache dropped before every run" if args.cold else
                   "WARM cache: teacher read with cat before every run (resident share in 'cached')")
    if os.getloadavg()[0] > 1.3:
        log(f"warning: load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores: timings will be noisy")
    args.workdir.mkdir(parents=True, exist_ok=True)
    machine = machine_facts(args.workdir)
    log(format_machine(machine))
    results: list[dict] = []
    t_start = time.perf_counter()
    for size in sizes:
        from slicer.cli.bench import llama_pair

        t, s = llama_pair(size)
        need = teachers.total_bytes(t.tensors()) + 2 * teachers.total_bytes(s.tensors()) + (1 << 30)
        free = shutil.disk_usage(args.workdir).free
        if free < need:
            log(f"[{size:g} GB] skipped: {free / 1e9:.1f} GB free in {args.workdir}, {need / 1e9:.1f} GB needed")
            continue
        facts = build(args.workdir, size, lambda m: log("  " + str(m).strip()))
        log(f"[{size:g} GB] teacher {facts['teacher_bytes'] / 1e9:.2f} GB ({facts['teacher_shape']['layers']} layers, "
            f"{len(facts['teacher_files'])} shards), student {facts['student_bytes'] / 1e9:.2f} GB; "
            f"{'reused' if facts['reused'] else 'built'} in {facts['build_s']:.1f} s")
        runs: dict[str, list[dict]] = {w: [] for w in ways}
        for rep in range(args.repeats):
            for way in ways:
                res = measure(way, facts, args)
                runs[way].append(res)
                log(f"  [{size:g} GB] {way:<12} run {rep + 1}/{args.repeats}: {res['wall_s']:7.2f} s  peak anon "
                    f"{res['peak_anon_bytes'] / 1e6:8.1f} MB  cpu {res['cpu_s']:6.2f} s  cached "
                    f"{e2e._pct(res['teacher_cached_fraction'])}  load {res['loadavg_before']:.2f}")
        results.append({"facts": facts, "runs": runs, "summary": {w: summarize(rs) for w, rs in runs.items()}})
        if not args.keep:
            e2e.remove(Path(facts["dir"]))
    import_s = import_seconds()
    print()
    print(table(results, ways, cache_state, import_s))
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "cache": cache_state, "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results, "verdicts": verdicts(results, ways),
                                         "import_s": import_s}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
