"""End-to-end benchmark: slicer vs the I/O floor vs "load everything, index, save".

For each generated teacher (see teachers.py; built once in WORKDIR, reused after),
each way runs --repeats times as a whole process and we report the median wall time
and the peak anonymous memory (RssAnon + RssShmem of the process tree, sampled every
20 ms, see memsample.py):

  floor   `cat` of every teacher shard to /dev/null, plus `dd` of the student's byte
          count from /dev/zero to a file: two commands, times summed.
  slicer  `python -m slicer shrink TEACHER OUT --template TEMPLATE --overwrite --quiet`
          (import time included). TEACHER and TEMPLATE are HF folders (config.json beside
          the weights, as users have them), so slicer takes the transformers route; its
          bindings cache (SLICER_CACHE=WORKDIR/slicer-cache) is filled by an untimed plan
          first. slicer-nocache: the same with --no-cache (the route paid every run);
          slicer-bare: TEMPLATE's model.safetensors alone in a folder without config.json
          (hard-linked; no structure: flat selection).
  plan    before the repeats: `python -m slicer plan TEACHER --template TEMPLATE` with
          the cache emptied (first), then three more (repeated; median).
  naive   `python bench/e2e.py --naive TEACHER TEMPLATE OUT`: safetensors.torch.load_file
          of every shard into one dict, index_select per dimension with the uniform
          index sets, first-N layers, one save_file (the reference code's way).

All figures are warm-cache: before every measurement the outputs of the previous one
are deleted, `sync` runs, and the teacher shards are read once with `cat` (untimed);
the teacher's page-cache residency (fincore) is recorded. Writes go to the page cache:
no way's time includes the disk write-back unless the way itself syncs.

    python bench/e2e.py [--workdir DIR] [--which llama,gemma] [--repeats 3] [--json FILE] [--keep]
    python bench/e2e.py --naive TEACHER TEMPLATE OUT      # the naive way alone
    python bench/e2e.py --compare OUT_A OUT_B             # are two outputs bit-identical?
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import memsample  # noqa: E402
import teachers  # noqa: E402

# floor: cat + a buffered write (dd), as the issue defines it. floor-direct: the same
# with the write bypassing the page cache (dd oflag=direct), as slicer writes large
# outputs: the fair floor for slicer's own I/O path.
WAYS = ("floor", "floor-direct", "slicer", "naive", "slicer-nocache", "slicer-bare")
DEFAULT_WAYS = ("floor", "floor-direct", "slicer", "naive")
# Issue 12's targets (the earlier ones were 1.5x floor, 0.5x naive, gemma <= 600 MB).
TARGET_SLICER_OVER_FLOOR = 1.1
TARGET_SLICER_OVER_NAIVE = 0.4
TARGET_PEAK_ANON_MB = {"gemma": 600, "llama": 300}
# Issue 23: with HF folders, whole processes (the transformers route paid once, then cached).
TARGET_PLAN_FIRST_S = 3.0
TARGET_PLAN_REPEATED_S = 0.5


# ----------------------------------------------------------------------------- helpers
def read_header(path: Path) -> dict:
    """The JSON header of a safetensors file (no tensor bytes read)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def shapes_of(path: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of a checkpoint file or directory."""
    out: dict[str, tuple[int, ...]] = {}
    for f in teachers.checkpoint_files(path):
        for name, info in read_header(f).items():
            out[name] = tuple(info["shape"])
    return out


def uniform_index(t: int, s: int):
    """The reference's uniform index set: step t//s when it divides, else round(linspace) in float32."""
    import torch

    if t % s == 0:
        return torch.arange(0, t, t // s)
    return torch.round(torch.linspace(0, t - 1, s, dtype=torch.float32)).long()


def naive(teacher: Path, template: Path, out: Path) -> None:
    """Load every teacher shard, index_select every dimension, save one file (first-N layers)."""
    import torch  # noqa: F401
    from safetensors.torch import load_file, save_file

    state: dict = {}
    for f in teachers.checkpoint_files(teacher):
        state.update(load_file(f))
    student = {}
    for name, shape in shapes_of(template).items():
        x = state[name]  # first-N: student layer j <- teacher layer j, so names match one to one
        if x.dim() != len(shape):
            raise SystemExit(f"naive: {name}: teacher rank {x.dim()} != student rank {len(shape)}")
        for d, (t, s) in enumerate(zip(x.shape, shape)):
            if t != s:
                x = x.index_select(d, uniform_index(t, s))
        student[name] = x.contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(student, str(out / "model.safetensors"), metadata={"format": "pt"})


def compare(a: Path, b: Path) -> dict:
    """Bit-compare two checkpoints tensor by tensor (bytes, so NaN payloads count too)."""
    import torch
    from safetensors import safe_open

    def locate(d: Path) -> dict[str, Path]:
        return {name: f for f in teachers.checkpoint_files(d) for name in read_header(f)}

    la, lb = locate(a), locate(b)
    report = {"tensors": len(la), "only_in_a": sorted(set(la) - set(lb)), "only_in_b": sorted(set(lb) - set(la))}
    bad = []
    for name in sorted(set(la) & set(lb)):
        with safe_open(str(la[name]), "pt") as fa, safe_open(str(lb[name]), "pt") as fb:
            ta, tb = fa.get_tensor(name), fb.get_tensor(name)
        same = ta.dtype == tb.dtype and ta.shape == tb.shape
        if not (same and torch.equal(ta.reshape(-1).view(torch.uint8), tb.reshape(-1).view(torch.uint8))):
            bad.append(name)
        del ta, tb
    report["mismatched"] = bad
    report["identical"] = not (bad or report["only_in_a"] or report["only_in_b"])
    return report


def resident_fraction(files: list[Path]) -> float | None:
    """Share of the files' bytes in the page cache (fincore), or None when fincore is missing."""
    if not shutil.which("fincore"):
        return None
    r = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES,SIZE", *map(str, files)],
        capture_output=True, text=True,
    )
    if r.returncode != 0:
        return None
    res = size = 0
    for line in r.stdout.split("\n"):
        if line.strip():
            a, b = line.split()
            res, size = res + int(a), size + int(b)
    return res / size if size else None


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def slicer_ready() -> tuple[bool, str]:
    r = subprocess.run(
        [sys.executable, "-m", "slicer", "shrink", "--help"], cwd=ROOT, capture_output=True, text=True,
        env=_env(), timeout=120,
    )
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def bare_template(template: Path) -> Path:
    """The template's weights alone in a folder of their own (a hard link: no copy): beside the HF
    folder's file slicer would find its config.json and take the transformers route."""
    bare = template.parent.parent / "template-bare" / template.name
    if not bare.exists():
        bare.parent.mkdir(exist_ok=True)
        os.link(template, bare)
    return bare


def _env(workdir: Path | None = None) -> dict:
    env = dict(os.environ)
    if workdir is not None:  # slicer's bindings cache: the benchmark's own, never the user's
        env["SLICER_CACHE"] = str(workdir / "slicer-cache")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# ----------------------------------------------------------------------------- one measurement
def measure(way: str, facts: dict, workdir: Path, name: str, interval: float, settle: float) -> dict:
    files = [Path(p) for p in facts["teacher_files"]]
    template = Path(facts["template"])
    out = workdir / name / f"out-{way}"
    remove(out)
    os.sync()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)  # warm, untimed
    read_header(template)
    cached = resident_fraction(files)
    time.sleep(settle)  # same free-memory state for every run (see --settle)
    load = os.getloadavg()[0]
    if way in ("floor", "floor-direct"):
        cat = memsample.run(["cat", *map(str, files)], stdout="/dev/null", interval=interval)
        out_bytes = template.stat().st_size  # the student's size, header included
        direct = way == "floor-direct"
        if direct:
            out_bytes += -out_bytes % 4096  # O_DIRECT writes whole blocks
        dd = memsample.run(
            ["dd", "if=/dev/zero", f"of={out}", "bs=16M", f"count={out_bytes}", "iflag=count_bytes",
             *(["oflag=direct"] if direct else [])],
            interval=interval,
        )
        runs = [cat, dd]
        res = {
            "wall_s": cat.wall_s + dd.wall_s,
            "cat_s": cat.wall_s,
            "write_s": dd.wall_s,
            "peak_anon_bytes": max(cat.peak_anon_bytes, dd.peak_anon_bytes),
            "maxrss_bytes": max(cat.maxrss_bytes, dd.maxrss_bytes),
            "cpu_s": sum(r.user_s + r.sys_s for r in runs),
        }
    else:
        if way.startswith("slicer"):
            hf = way != "slicer-bare"
            argv = [sys.executable, "-m", "slicer", "shrink", str(teachers.teacher_dir(workdir, name)), str(out),
                    "--template", str(facts["template_dir"] if hf else bare_template(template)), "--overwrite", "--quiet",
                    *(["--no-cache"] if way == "slicer-nocache" else [])]
        else:
            argv = [sys.executable, str(HERE / "e2e.py"), "--naive", str(teachers.teacher_dir(workdir, name)),
                    str(template), str(out)]
        r = memsample.run(argv, cwd=str(ROOT), env=_env(workdir), interval=interval)
        runs = [r]
        res = {
            "wall_s": r.wall_s,
            "peak_anon_bytes": r.peak_anon_bytes,
            "maxrss_bytes": r.maxrss_bytes,
            "cpu_s": r.user_s + r.sys_s,
        }
    res["out_bytes"] = dir_bytes(out)
    res["teacher_cached_fraction"] = cached
    res["loadavg_before"] = load
    res["commands"] = [r.to_dict() for r in runs]
    failed = [r for r in runs if r.returncode != 0]
    if failed:
        r = failed[0]
        raise RuntimeError(f"{name}/{way}: {' '.join(r.argv)} exited {r.returncode}:\n{r.stderr_tail[-2000:]}")
    return res


def plan_times(facts: dict, workdir: Path, name: str, repeats: int = 3) -> dict:
    """Whole-process `slicer plan` of the HF folders: the first with the bindings cache emptied, then repeated."""
    argv = [sys.executable, "-m", "slicer", "plan", str(teachers.teacher_dir(workdir, name)), "--template",
            str(facts["template_dir"])]
    remove(workdir / "slicer-cache")
    runs = []
    for _ in range(1 + repeats):
        r = memsample.run(argv, cwd=str(ROOT), env=_env(workdir), stdout="/dev/null", interval=0.02)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stderr_tail[-2000:]}")
        runs.append({"wall_s": r.wall_s, "peak_anon_bytes": r.peak_anon_bytes})
    return {"first": runs[0], "repeated_median_s": statistics.median(x["wall_s"] for x in runs[1:]),
            "repeated_peak_anon_bytes": max(x["peak_anon_bytes"] for x in runs[1:]), "runs": runs}


def bench_teacher(name: str, facts: dict, args, ways: list[str], log) -> dict:
    workdir = args.workdir
    runs: dict[str, list[dict]] = {w: [] for w in ways}
    plans = None
    if "slicer" in ways:  # also fills the bindings cache the timed slicer runs use
        plans = plan_times(facts, workdir, name)
        log(f"  [{name}] plan (HF folders): first {plans['first']['wall_s']:.2f} s "
            f"({plans['first']['peak_anon_bytes'] / 1e6:.0f} MB), repeated {plans['repeated_median_s']:.2f} s "
            f"({plans['repeated_peak_anon_bytes'] / 1e6:.0f} MB)")
    verify = None
    for rep in range(args.repeats):
        for way in ways:
            res = measure(way, facts, workdir, name, args.interval, args.settle)
            runs[way].append(res)
            log(
                f"  [{name}] {way:<14} run {rep + 1}/{args.repeats}: {res['wall_s']:7.2f} s  "
                f"peak anon {res['peak_anon_bytes'] / 1e6:8.1f} MB  cpu {res['cpu_s']:6.2f} s  "
                f"cached {_pct(res['teacher_cached_fraction'])}  load {res['loadavg_before']:.2f}"
            )
            last = rep == args.repeats - 1
            for_verify = args.verify and way in ("slicer", "naive") and {"slicer", "naive"} <= set(ways)
            if not (last and (args.keep or for_verify)):
                remove(workdir / name / f"out-{way}")
    if args.verify and "slicer" in ways and "naive" in ways:
        a, b = workdir / name / "out-slicer", workdir / name / "out-naive"
        r = subprocess.run([sys.executable, str(HERE / "e2e.py"), "--compare", str(a), str(b)],
                           capture_output=True, text=True)
        verify = json.loads(r.stdout) if r.returncode in (0, 1) and r.stdout.strip() else {"error": r.stderr[-2000:]}
        log(f"  [{name}] slicer output vs naive output: "
            + ("bit-identical" if verify.get("identical") else f"DIFFERENT: {json.dumps(verify)[:600]}"))
        if not args.keep:
            remove(a)
            remove(b)
    summary = {}
    for way, rs in runs.items():
        walls = [r["wall_s"] for r in rs]
        summary[way] = {
            "median_s": statistics.median(walls),
            "min_s": min(walls),
            "max_s": max(walls),
            "peak_anon_bytes": max(r["peak_anon_bytes"] for r in rs),
            "maxrss_bytes": max(r["maxrss_bytes"] for r in rs),
            "cpu_s_median": statistics.median(r["cpu_s"] for r in rs),
            "out_bytes": rs[-1]["out_bytes"],
        }
        if way in ("floor", "floor-direct"):
            summary[way]["cat_s_median"] = statistics.median(r["cat_s"] for r in rs)
            summary[way]["write_s_median"] = statistics.median(r["write_s"] for r in rs)
    ratios, targets = {}, {}
    if "slicer" in summary and "floor" in summary:
        ratios["slicer/floor"] = summary["slicer"]["median_s"] / summary["floor"]["median_s"]
        targets["slicer/floor <= %.1f" % TARGET_SLICER_OVER_FLOOR] = ratios["slicer/floor"] <= TARGET_SLICER_OVER_FLOOR
    if "slicer" in summary and "floor-direct" in summary:
        ratios["slicer/floor-direct"] = summary["slicer"]["median_s"] / summary["floor-direct"]["median_s"]
    if "slicer" in summary and "naive" in summary:
        ratios["slicer/naive"] = summary["slicer"]["median_s"] / summary["naive"]["median_s"]
        targets["slicer/naive <= %.1f" % TARGET_SLICER_OVER_NAIVE] = ratios["slicer/naive"] <= TARGET_SLICER_OVER_NAIVE
    if "slicer" in summary and name in TARGET_PEAK_ANON_MB:
        mb = summary["slicer"]["peak_anon_bytes"] / 1e6
        targets[f"slicer peak anon <= {TARGET_PEAK_ANON_MB[name]} MB"] = mb <= TARGET_PEAK_ANON_MB[name]
    if plans is not None:
        targets["plan first <= %.1f s" % TARGET_PLAN_FIRST_S] = plans["first"]["wall_s"] <= TARGET_PLAN_FIRST_S
        targets["plan repeated <= %.1f s" % TARGET_PLAN_REPEATED_S] = plans["repeated_median_s"] <= TARGET_PLAN_REPEATED_S
    return {"build": facts, "runs": runs, "summary": summary, "ratios": ratios, "targets": targets, "verify": verify,
            "plan": plans}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


# ----------------------------------------------------------------------------- report
def table(results: dict) -> str:
    lines = [
        "All times are warm-cache: teacher shards read with cat before every run (resident share in 'cached');",
        "outputs are written to the page cache, sync'd (untimed) between runs. Median of repeats.",
        "peak anon = max of RssAnon+RssShmem (20 ms samples); peak RSS = max of VmHWM (file-backed pages included).",
        "",
        f"{'teacher':<8} {'way':<14} {'median s':>9} {'min..max s':>14} {'x floor':>8} {'peak anon MB':>13} "
        f" {'peak RSS MB':>11} {'cpu s':>7} {'cached':>7}",
    ]
    for name, r in results.items():
        s = r["summary"]
        floor = s.get("floor", {}).get("median_s")
        for way, w in s.items():
            x = f"{w['median_s'] / floor:.2f}" if floor else "-"
            cached = min((run["teacher_cached_fraction"] or 0) for run in r["runs"][way])
            lines.append(
                f"{name:<8} {way:<14} {w['median_s']:9.2f} {w['min_s']:6.2f}..{w['max_s']:<6.2f} {x:>8} "
                f"{w['peak_anon_bytes'] / 1e6:13.1f} {w['maxrss_bytes'] / 1e6:12.1f} {w['cpu_s_median']:7.2f} "
                f"{_pct(cached):>7}"
            )
        for fl in ("floor", "floor-direct"):
            if fl in s:
                f = s[fl]
                lines.append(f"{'':<8} ({fl} = cat {f['cat_s_median']:.2f} s + write {f['write_s_median']:.2f} s "
                             f"of {f['out_bytes'] / 1e9:.2f} GB)")
        if r.get("plan"):
            p = r["plan"]
            lines.append(f"{'':<8} plan (HF folders): first {p['first']['wall_s']:.2f} s, "
                         f"{p['first']['peak_anon_bytes'] / 1e6:.0f} MB; repeated {p['repeated_median_s']:.2f} s, "
                         f"{p['repeated_peak_anon_bytes'] / 1e6:.0f} MB")
        b = r["build"]
        lines.append(f"{'':<8} teacher {b['teacher_bytes'] / 1e9:.2f} GB / {len(b['teacher_files'])} shards, "
                     f"student {b['student_bytes'] / 1e9:.2f} GB")
    lines.append("")
    for name, r in results.items():
        ratios = "  ".join(f"{k} = {v:.2f}" for k, v in r["ratios"].items())
        tg = "  ".join(f"[{'PASS' if ok else 'MISS'}] {k}" for k, ok in r["targets"].items())
        if ratios:
            lines.append(f"{name:<8} {ratios}")
        if tg:
            lines.append(f"{'':<8} targets: {tg}")
        if r["verify"] is not None:
            lines.append(f"{'':<8} slicer output == naive output: {r['verify'].get('identical')}")
    return "\n".join(lines)


def environment() -> dict:
    import psutil

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "mem_total_bytes": psutil.virtual_memory().total,
        "loadavg_start": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/slicer-bench"))
    ap.add_argument("--which", default="llama,gemma", help="teachers, comma-separated: " + ",".join(teachers.PAIRS))
    ap.add_argument("--ways", default=",".join(DEFAULT_WAYS),
                    help=f"ways to run, comma-separated, from {','.join(WAYS)} (default: {','.join(DEFAULT_WAYS)})")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write every figure and raw run here")
    ap.add_argument("--keep", action="store_true", help="keep the outputs of the last repeat")
    ap.add_argument("--clean", action="store_true", help="delete the teachers afterwards too")
    ap.add_argument("--no-verify", dest="verify", action="store_false",
                    help="skip the bit-comparison of the slicer's output with the naive one")
    ap.add_argument("--interval", type=float, default=0.02, help="memory sampling interval, seconds")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds to wait before each run (default 5): on a VM with free page reporting "
                         "(virtio-balloon) memory freed by the previous run goes back to the host after ~2 s and "
                         "costs a page fault in the host when touched again; waiting makes every run start alike")
    ap.add_argument("--naive", nargs=3, metavar=("TEACHER", "TEMPLATE", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.naive:
        naive(*map(Path, args.naive))
        return 0
    if args.compare:
        rep = compare(*map(Path, args.compare))
        print(json.dumps(rep))
        return 0 if rep["identical"] else 1

    def log(msg: str) -> None:
        print(msg, flush=True)

    names = [n for n in args.which.split(",") if n]
    ways = [w for w in args.ways.split(",") if w]
    for n in names:
        if n not in teachers.PAIRS:
            ap.error(f"--which: unknown teacher {n!r}; choose from {', '.join(teachers.PAIRS)}")
    for w in ways:
        if w not in WAYS:
            ap.error(f"--ways: unknown way {w!r}; choose from {', '.join(WAYS)}")
    if "slicer" in ways:
        ok, text = slicer_ready()
        if not ok:
            log(f"slicer is not runnable yet (`python -m slicer shrink --help` failed), skipping it:\n{text[-800:]}")
            ways.remove("slicer")
    load = os.getloadavg()[0]
    if load > 1.5:
        log(f"warning: load average {load:.2f} > 1.5 on {os.cpu_count()} cores: timings will be noisy")

    env = environment()
    results: dict[str, dict] = {}
    for name in names:
        t0 = time.perf_counter()
        facts = teachers.ensure_pair(args.workdir, name, log=log)
        facts["ensure_s"] = time.perf_counter() - t0
        results[name] = bench_teacher(name, facts, args, ways, log)
        if args.clean:
            remove(args.workdir / name)
    env["loadavg_end"] = os.getloadavg()
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
