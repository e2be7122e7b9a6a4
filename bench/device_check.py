"""One-shot GPU check: kernel correctness and speed, and the GPU path end to end.

Run on a machine with a CUDA GPU (finishes in a few minutes):

    python bench/device_check.py [--out DIR] [--size-gb 4]

1. bit-equality of the Triton kernel with torch on the device, every dtype, casts;
2. kernel GB/s (bytes it must read and write) against a chain of ``index_select``
   and against a device-to-device copy of the same bytes (the bandwidth ceiling);
3. ``slicer shrink --device cuda`` against ``--device cpu`` (each with its default
   backend: Triton on the GPU, numpy on the CPU) on a generated Llama-shaped teacher in
   /dev/shm (warm), with and without a dtype cast; whole processes, interleaved,
   median of ``--repeats``; the students must be byte-identical;
4. the GPU-marked tests (the real device layer: streams, events, out-of-memory halving).
Prints a table and writes ``device_check.json`` into ``--out`` (default $OUT or .).
``--smoke`` runs every step tiny on the CPU (kernel in Triton's interpreter), to check
the script itself on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _importable() -> str:
    """Lay out the checkout as installed (kernels/ becomes slicer/kernels) without pip:
    the device machine has no network and nothing of ours installed. Returns the
    folder to put on PYTHONPATH."""
    pkg = Path(tempfile.mkdtemp(prefix="slicer-pkg-"))
    shutil.copytree(ROOT / "slicer", pkg / "slicer")
    shutil.copytree(ROOT / "kernels", pkg / "slicer" / "kernels", dirs_exist_ok=True)
    sys.path.insert(0, str(pkg))
    os.environ["PYTHONPATH"] = str(pkg) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return str(pkg)


def bench_ms(fn, smoke: bool) -> float:
    if smoke:
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    from slicer.kernels.timing import median_seconds

    return median_seconds(fn) * 1e3


def check_kernel(device: str, smoke: bool) -> list[dict]:
    import torch
    from slicer.kernels.gather import gather

    rows = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    dtypes = [torch.bool, torch.uint8, torch.int8, torch.float8_e4m3fn, torch.float8_e5m2, torch.int16,
              torch.float16, torch.bfloat16, torch.int32, torch.float32, torch.int64, torch.float64]
    shape = (183, 71) if smoke else (1823, 781)
    for dt in dtypes:
        bits = torch.randint(0, 256, (shape[0] * shape[1] * torch.empty(0, dtype=dt).element_size(),),
                             generator=gen, dtype=torch.uint8)
        src = bits.view(dt).view(shape).to(device)
        i0 = torch.randperm(shape[0], generator=gen)[: shape[0] // 3].sort().values.to(device)
        i1 = range(1, shape[1], 3)
        out = torch.empty((len(i0), len(i1)), dtype=dt, device=device)
        gather(src, [i0, i1], out)
        iv = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[out.element_size()]
        want = src.view(iv)[i0][:, torch.tensor(list(i1), device=device)]
        rows.append({"check": "bits", "dtype": str(dt), "equal": bool(torch.equal(out.view(iv), want))})
    for a, b in [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16), (torch.float16, torch.bfloat16),
                 (torch.float8_e4m3fn, torch.bfloat16), (torch.float8_e5m2, torch.float32)]:
        src = (torch.randn(shape, generator=gen) * 4).to(a).to(device)
        out = torch.empty((shape[0], shape[1] // 2), dtype=b, device=device)
        gather(src, [range(0, shape[0]), range(0, shape[1] - shape[1] % 2, 2)], out)
        want = src[:, 0: shape[1] - shape[1] % 2: 2].to(b)
        rows.append({"check": "cast", "dtype": f"{a}->{b}", "equal": bool(torch.equal(out, want))})
    return rows


def kernel_speed(device: str, smoke: bool) -> list[dict]:
    import torch
    from slicer.kernels.gather import gather

    n = 256 if smoke else 8192
    rows = []
    src = torch.randn(n, n, device=device).to(torch.bfloat16)
    s = n // 2
    cases = {
        "uniform (strided)": [range(0, n, 2), range(0, n, 2)],
        "random (indexed)": [torch.randperm(n, device=device)[:s].sort().values,
                             torch.randperm(n, device=device)[:s].sort().values],
    }
    for label, index in cases.items():
        out = torch.empty(s, s, dtype=torch.bfloat16, device=device)
        moved = 2 * s * s * 2  # read the kept elements, write them
        t_kernel = bench_ms(lambda: gather(src, index, out), smoke)
        ix = [torch.tensor(list(i), device=device) if isinstance(i, range) else i for i in index]
        t_torch = bench_ms(lambda: src.index_select(0, ix[0]).index_select(1, ix[1]), smoke)
        flat = torch.empty(s * s, dtype=torch.bfloat16, device=device)
        part = src.view(-1)[: s * s]
        t_copy = bench_ms(lambda: flat.copy_(part), smoke)
        rows.append({"case": f"bf16 [{n},{n}]->[{s},{s}] {label}", "kernel_gb_s": moved / t_kernel / 1e6,
                     "index_select_gb_s": moved / t_torch / 1e6, "copy_gb_s": moved / t_copy / 1e6,
                     "kernel_vs_copy": t_copy / t_kernel, "kernel_vs_index_select": t_torch / t_kernel})
    cast_out = torch.empty(s, s, dtype=torch.float32, device=device)
    t_cast = bench_ms(lambda: gather(src, [range(0, n, 2), range(0, n, 2)], cast_out), smoke)
    t_torch_cast = bench_ms(lambda: src[::2, ::2].to(torch.float32), smoke)
    rows.append({"case": f"bf16->fp32 [{n},{n}]->[{s},{s}] uniform + cast", "kernel_gb_s": s * s * 6 / t_cast / 1e6,
                 "index_select_gb_s": s * s * 6 / t_torch_cast / 1e6, "copy_gb_s": float("nan"),
                 "kernel_vs_copy": float("nan"), "kernel_vs_index_select": t_torch_cast / t_cast})
    return rows


def build_llama_like(workdir: Path, size_gb: float, smoke: bool) -> tuple[Path, Path]:
    """A Llama-shaped bf16 teacher of about ``size_gb`` and a half-width, half-depth template."""
    sys.path.insert(0, str(ROOT / "bench"))
    from teachers import LlamaShape, build_template, build_teacher, total_bytes

    if smoke:
        t = LlamaShape(hidden=256, intermediate=688, heads=4, kv_heads=2, head_dim=64, layers=2, vocab=1000)
    else:
        one_layer = LlamaShape(hidden=4096, intermediate=11008, heads=32, kv_heads=8, head_dim=128, layers=1, vocab=128000)
        per_layer = total_bytes(one_layer.tensors()) - 2 * 128000 * 4096 * 2
        layers = max(2, round((size_gb * 1e9 - 2 * 128000 * 4096 * 2) / per_layer))
        t = LlamaShape(hidden=4096, intermediate=11008, heads=32, kv_heads=8, head_dim=128, layers=layers, vocab=128000)
    s = LlamaShape(hidden=t.hidden // 2, intermediate=t.intermediate // 2, heads=t.heads // 2, kv_heads=t.kv_heads // 2,
                   head_dim=t.head_dim, layers=max(1, t.layers // 2), vocab=t.vocab)
    build_teacher(workdir / "teacher", t, log=lambda *a: None)
    build_template(workdir / "template", s, log=lambda *a: None)
    return workdir / "teacher", workdir / "template"


def end_to_end(workdir: Path, size_gb: float, smoke: bool, repeats: int) -> list[dict]:
    import statistics

    teacher, template = build_llama_like(workdir, size_gb, smoke)
    env = dict(os.environ)
    if smoke:
        env["TRITON_INTERPRET"] = "1"
    # (label, --device, --backend): each device with its default backend. In --smoke the
    # Triton interpreter on the CPU stands in for the GPU.
    ways = [("cpu", "cpu", "auto"), ("cuda", "cpu" if smoke else "cuda", "triton" if smoke else "auto")]
    runs: dict[tuple[str, str], list[dict]] = {}
    rows = []
    for _ in range(repeats):
        for dtype in ("keep", "fp32"):
            for label, device, backend in ways:  # interleaved: a disturbance hits both alike
                out = workdir / f"out-{label}-{dtype}"
                cmd = [sys.executable, "-m", "slicer", "shrink", str(teacher), str(out), "--template", str(template),
                       "--device", device, "--backend", backend, "--dtype", dtype, "--overwrite", "--json"]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    rows.append({"run": " ".join(cmd[3:]), "error": proc.stderr.strip()[-500:]})
                    continue
                summary = json.loads(proc.stdout.strip().splitlines()[-1])
                runs.setdefault((label, dtype), []).append(
                    {"wall_s": wall, "slicer_s": summary["seconds"], "gb_per_s": summary["gb_per_s"],
                     "peak_mb": summary["peak_memory_bytes"] / 1e6, "backend": summary["backend"]})
    for (label, dtype), rs in runs.items():
        walls = [r["wall_s"] for r in rs]
        rows.append({"device": label, "backend": rs[0]["backend"], "dtype": dtype, "wall_s": statistics.median(walls),
                     "wall_min_s": min(walls), "wall_max_s": max(walls),
                     "slicer_s": statistics.median(r["slicer_s"] for r in rs),
                     "gb_per_s": statistics.median(r["gb_per_s"] for r in rs), "peak_mb": max(r["peak_mb"] for r in rs)})
    for dtype in ("keep", "fp32"):
        cpu, gpu = runs.get(("cpu", dtype)), runs.get(("cuda", dtype))
        if cpu and gpu:
            ratio = statistics.median(r["wall_s"] for r in gpu) / statistics.median(r["wall_s"] for r in cpu)
            rows.append({"check": f"--device cuda / --device cpu whole process ({dtype})", "ratio": round(ratio, 3)})
        # the GPU and CPU students must be byte-identical
        outs = [workdir / f"out-{label}-{dtype}" for label in ("cpu", "cuda")]
        if all(o.exists() for o in outs):
            same = all((outs[0] / f.name).read_bytes() == f.read_bytes() for f in sorted(outs[1].glob("*.safetensors")))
            rows.append({"check": f"cpu vs gpu student bytes ({dtype})", "equal": same})
    return rows


def gpu_tests(smoke: bool) -> dict:
    """The GPU-marked tests (skipped without CUDA, so in --smoke they only check the call)."""
    tests = [str(ROOT / "tests" / t) for t in ("test_cuda_staging.py", "test_kernel_gather.py", "test_stream.py")]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *tests]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"equal": False, "summary": "timed out after 120 s"}
    tail = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return {"equal": proc.returncode in (0, 5), "summary": tail}  # 5: nothing collected


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="where device_check.json goes")
    ap.add_argument("--size-gb", type=float, default=4.0, help="generated teacher size for the end-to-end runs")
    ap.add_argument("--repeats", type=int, default=3, help="whole-process runs per end-to-end case (median)")
    ap.add_argument("--smoke", action="store_true", help="tiny, on the CPU (interpreter): checks the script")
    args = ap.parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    _importable()
    import torch

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; use --smoke to check the script on the CPU", file=sys.stderr)
        return 2
    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"}
    t0 = time.perf_counter()
    report["kernel_checks"] = check_kernel(device, args.smoke)
    report["kernel_speed"] = kernel_speed(device, args.smoke)
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() and not args.smoke else Path(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(dir=shm, prefix="slicer-device-") as tmp:
        report["end_to_end"] = end_to_end(Path(tmp), 0.05 if args.smoke else args.size_gb, args.smoke,
                                          1 if args.smoke else args.repeats)
    report["gpu_tests"] = gpu_tests(args.smoke)
    report["seconds"] = time.perf_counter() - t0

    print(f"device: {report['device']}  torch {report['torch']}")
    bad = [r for r in report["kernel_checks"] if not r["equal"]]
    print(f"kernel bit-equality: {len(report['kernel_checks']) - len(bad)}/{len(report['kernel_checks'])} equal"
          + "".join(f"\n  DIFFERS: {r['check']} {r['dtype']}" for r in bad))
    print(f"{'kernel case':<48} {'kernel GB/s':>11} {'index_select':>12} {'copy GB/s':>10} {'vs copy':>8} {'vs index_select':>15}")
    for r in report["kernel_speed"]:
        print(f"{r['case']:<48} {r['kernel_gb_s']:>11.1f} {r['index_select_gb_s']:>12.1f} {r['copy_gb_s']:>10.1f} "
              f"{r['kernel_vs_copy']:>8.2f} {r['kernel_vs_index_select']:>15.2f}")
    print(f"{'end to end (median)':<30} {'wall s':>8} {'min..max':>12} {'slicer s':>9} {'GB/s':>7} {'peak MB':>8}")
    for r in report["end_to_end"]:
        if "wall_s" in r:
            print(f"{r['device'] + ' ' + r['backend'] + ' ' + r['dtype']:<30} {r['wall_s']:>8.2f} "
                  f"{r['wall_min_s']:>5.2f}..{r['wall_max_s']:<5.2f} {r['slicer_s']:>9.2f} "
                  f"{r['gb_per_s']:>7.2f} {r['peak_mb']:>8.0f}")
        else:
            print(f"  {r}")
    print(f"gpu tests: {report['gpu_tests']['summary']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "device_check.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'device_check.json'} in {report['seconds']:.0f} s")
    ok = not bad and all(r.get("equal", True) for r in report["end_to_end"]) and report["gpu_tests"]["equal"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
