"""Beyond one machine: K Ray workers against a throttled loopback server; the 405B arithmetic.

  ray       A Llama-shaped bf16 teacher (hidden 2048, 9 layers, vocab 32000: 1.06 GB, shards
            of 256 MB) behind tests/remote_server.py in its own process, throttled to
            --bandwidth MB/s PER CLIENT PROCESS (each worker its own link: the server finds
            the process at the other end of each new connection). The student (half width,
            4 layers) is cut into --shards output shards. Runs, interleaved per repeat:
              single   slicer.shrink(URL, ...) in this process (one client: one link);
              ray K    slicer.shrink(URL, ..., executor="ray") on a local Ray cluster of
                       K CPUs (ray.init(num_cpus=K): at most K tasks at once), K = 1, 2, 4.
            Ray's start-up is measured apart: ray.init, then K tasks that import slicer's
            worker path (what the first shrink on a fresh cluster pays); the timed runs
            are on the warm cluster. Target: ray K <= 1.25 x single / K + start-up. Bytes:
            the server's count; target: ray K <= 1.02 x single. Outputs compared byte for byte.

  requests  Llama-3.1-405B's shapes (sparse files: nothing on disk) shrunk to Llama-3.1-8B's,
            split into output shards: per worker, the bytes and requests its shards fetch
            (headers included: every task plans again), for K = 1, 8, 17, 64 workers; tasks
            go to the first free worker, largest first (the driver's order; Ray hands them out so). Shards of 1 GB
            (17 shards) and, where K exceeds that, shards of student bytes / K. Expected wall
            time: the busiest worker's bytes at --link MB/s (default 100) each.

    python bench/distributed.py [--which ray,requests] [--workdir DIR] [--bandwidth 50] [--workers 1,2,4]
                                [--shards 4] [--repeats 2] [--json FILE]
"""
from __future__ import annotations

import argparse
import heapq
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
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import teachers  # noqa: E402

PAIR = teachers.Pair(
    "distributed-llama",
    # 9 layers x 88.1 MB + 2 x 131 MB (embed, lm_head) = 1.06 GB, in shards of at most 256 MB
    teachers.LlamaShape(hidden=2048, intermediate=5632, heads=16, kv_heads=4, head_dim=128, layers=9, vocab=32000),
    teachers.LlamaShape(hidden=1024, intermediate=2816, heads=8, kv_heads=2, head_dim=128, layers=4, vocab=32000),
    "Llama-shaped, hidden 2048 -> 1024, 9 -> 4 layers, intermediate 5632 -> 2816, vocab 32000",
)


# ----------------------------------------------------------------------------- the server
def Server(root: Path, bandwidth_mb: float):  # noqa: N802 - bench/remote.py's server, each client its own bucket
    from remote import Server as RemoteServer

    return RemoteServer(root, bandwidth_mb, per_client=True)


# ----------------------------------------------------------------------------- ray
def _warm(_: int) -> float:
    t0 = time.perf_counter()
    import slicer.api  # noqa: F401  what a shard task imports before its first byte
    import slicer.distributed.task  # noqa: F401
    import slicer.run.engine  # noqa: F401
    import slicer.remote.reader  # noqa: F401

    return time.perf_counter() - t0


def _same(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        subprocess.run(["cmp", "-s", a / n, b / n]).returncode == 0 for n in names)


def run_ray(workdir: Path, bandwidth: float, workers: list[int], shards: int, repeats: int, log) -> dict:
    import ray

    import slicer

    served = workdir / "served"
    tdir = served / "teacher"
    saved = teachers.plan_shards.__defaults__
    teachers.plan_shards.__defaults__ = (256_000_000,)
    try:
        teachers.build_teacher(tdir, PAIR.teacher, log=log)
    finally:
        teachers.plan_shards.__defaults__ = saved
    template = workdir / "template"
    teachers.build_template(template, PAIR.student, log=log)
    teacher_bytes = sum(p.stat().st_size for p in tdir.glob("*.safetensors"))
    server = Server(served, bandwidth)
    url = server.url + "/teacher/"
    student_bytes = slicer.plan(url, template=template).bytes_to_write
    size = -(-student_bytes // shards) + (8 << 20)
    plan = slicer.plan(url, template=template, max_shard_size=size)
    log(f"teacher {teacher_bytes / 1e9:.2f} GB; student {student_bytes / 1e9:.3f} GB in {len(plan.shards)} shards "
        f"of <= {size / 1e6:.0f} MB; kept rows {plan.bytes_to_read / 1e9:.3f} GB; {bandwidth:g} MB/s per client")
    result = {"teacher_bytes": teacher_bytes, "student_bytes": student_bytes, "shards": len(plan.shards),
              "bytes_to_read": plan.bytes_to_read, "bandwidth_mb_s": bandwidth, "runs": []}

    import psutil

    server_proc = psutil.Process(server.proc.pid)
    cpu: dict = {}

    def shrink(out: Path, **kw) -> tuple[float, int]:
        shutil.rmtree(out, ignore_errors=True)
        before = server.stats()["bytes_sent"]
        c0, s0 = time.process_time(), sum(server_proc.cpu_times()[:2])
        t0 = time.perf_counter()
        slicer.shrink(url, out, template=template, max_shard_size=size, **kw)
        wall = time.perf_counter() - t0
        # CPU seconds of this process (the client, or Ray's driver) and of the server, over the run
        cpu.update(client_cpu_s=time.process_time() - c0, server_cpu_s=sum(server_proc.cpu_times()[:2]) - s0)
        return wall, server.stats()["bytes_sent"] - before

    try:
        single = []
        for k in workers:
            t0 = time.perf_counter()
            ray.init(num_cpus=k, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     _node_ip_address="127.0.0.1")
            init_s = time.perf_counter() - t0
            warm = ray.remote(_warm)
            ray.get([warm.remote(i) for i in range(k)])
            startup = time.perf_counter() - t0
            log(f"  ray K={k}: start-up {startup:.1f} s (ray.init {init_s:.1f} s, then K tasks importing the worker path)")
            try:
                for rep in range(repeats):
                    s_single, b_single = shrink(workdir / "out-single")
                    single_cpu = dict(cpu)
                    single.append((s_single, b_single))
                    s_ray, b_ray = shrink(workdir / f"out-ray{k}", executor="ray")
                    same = _same(workdir / "out-single", workdir / f"out-ray{k}")
                    log(f"    rep {rep + 1}: single {s_single:.2f} s {b_single / 1e6:.1f} MB (CPU: client "
                        f"{single_cpu['client_cpu_s']:.1f} s, server {single_cpu['server_cpu_s']:.1f} s); ray K={k} "
                        f"{s_ray:.2f} s {b_ray / 1e6:.1f} MB (server CPU {cpu['server_cpu_s']:.1f} s); identical: {same}")
                    result["runs"].append({"workers": k, "rep": rep, "single_s": s_single, "single_bytes": b_single,
                                           "ray_s": s_ray, "ray_bytes": b_ray, "identical": same,
                                           "startup_s": startup, "ray_init_s": init_s,
                                           "single_cpu": single_cpu, "ray_server_cpu_s": cpu["server_cpu_s"],
                                           "load": os.getloadavg()})
            finally:
                ray.shutdown()
    finally:
        server.close()
    med_single = statistics.median(s for s, _ in single)
    rows = []
    for k in workers:
        runs = [r for r in result["runs"] if r["workers"] == k]
        ray_s = statistics.median(r["ray_s"] for r in runs)
        startup = runs[0]["startup_s"]
        bound = 1.25 * med_single / k + startup
        rows.append({"workers": k, "ray_s": ray_s, "single_s": med_single, "startup_s": startup,
                     "target_s": bound, "cold_s": ray_s + startup, "meets_time": ray_s + startup <= bound,
                     "bytes_ratio": statistics.median(r["ray_bytes"] / r["single_bytes"] for r in runs),
                     "identical": all(r["identical"] for r in runs)})
    result["rows"] = rows
    return result


def format_ray(result: dict) -> str:
    lines = [f"teacher {result['teacher_bytes'] / 1e9:.2f} GB, student {result['student_bytes'] / 1e9:.3f} GB in "
             f"{result['shards']} shards, {result['bandwidth_mb_s']:g} MB/s per client process",
             "| workers K | single (s) | ray, warm (s) | start-up (s) | ray + start-up | target 1.25 x single/K + start-up "
             "| bytes / single | identical |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for r in result["rows"]:
        lines.append(f"| {r['workers']} | {r['single_s']:.2f} | {r['ray_s']:.2f} | {r['startup_s']:.1f} | "
                     f"{r['cold_s']:.2f} | {r['target_s']:.2f} ({'met' if r['meets_time'] else 'missed'}) | "
                     f"{r['bytes_ratio']:.4f} | {r['identical']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- 405B arithmetic
def run_requests(workdir: Path, workers: list[int], link_mb: float, log) -> list[dict]:
    import sparse405b

    import slicer
    from slicer.distributed import shard_read_bytes
    from slicer.run.engine import DEFAULT_CHUNK_BYTES
    from slicer.remote.options import DEFAULT_GAP_BYTES, RemoteOptions
    from slicer.remote.ranges import coalesce, plan_spans

    tdir, sdir = workdir / "405b" / "teacher", workdir / "405b" / "template"
    if not (tdir / teachers.INDEX_NAME).exists():
        sparse405b.sparse_teacher(tdir, sparse405b.LLAMA_405B)
    teachers.build_template(sdir, sparse405b.LLAMA_8B, log=log)
    headers = sum(8 + int.from_bytes(_head(p), "little") for p in tdir.glob("*.safetensors"))
    header_files = len(list(tdir.glob("*.safetensors")))
    opts = RemoteOptions()
    base = slicer.plan(tdir, template=sdir, layer_selection="uniform", max_shard_size="1GB")
    student = base.bytes_to_write
    sizes = {"1GB": 1_000_000_000}
    for k in workers:
        if k > len(base.shards):  # the smallest shards that still make at most K of them
            size = -(-student // k)
            while len(slicer.plan(tdir, template=sdir, layer_selection="uniform", max_shard_size=size).shards) > k:
                size = size * 21 // 20
            sizes[f"{k}"] = size
    per_size: dict[str, list[tuple[int, int]]] = {}
    for label, size in sizes.items():
        t0 = time.perf_counter()
        plan = base if label == "1GB" else slicer.plan(tdir, template=sdir, layer_selection="uniform",
                                                      max_shard_size=size)
        tasks = []
        for shard in sorted(plan.shards, key=shard_read_bytes, reverse=True):  # the driver's order
            others = [s.filename for s in plan.shards if s is not shard]
            n = b = 0
            for req in coalesce(plan_spans(plan, DEFAULT_CHUNK_BYTES, others), DEFAULT_GAP_BYTES,
                                opts.max_request_bytes, opts.overfetch):
                n += 1
                b += req.nbytes
            tasks.append((b, n))
        per_size[label] = tasks
        log(f"  405B -> 8B, shards of {size / 1e9:.3f} GB: {len(tasks)} shards, {sum(b for b, _ in tasks) / 1e9:.1f} GB "
            f"in {sum(n for _, n in tasks):,} requests ({time.perf_counter() - t0:.0f} s)")
    rows = []
    for k in workers:
        label = "1GB" if k <= len(base.shards) else f"{k}"
        tasks = per_size[label]
        load = [(0.0, i, 0, 0, 0) for i in range(k)]  # (seconds, worker, bytes, requests, shards)
        heapq.heapify(load)
        for b, n in tasks:  # largest first, each to the first free worker (the driver's order, Ray's FIFO hand-out)
            s, i, wb, wn, ws = heapq.heappop(load)
            wb2 = wb + b + headers  # every task plans again: the teacher's headers (length, then JSON, per file)
            heapq.heappush(load, (wb2 / (link_mb * 1e6), i, wb2, wn + n + 2 * header_files, ws + 1))
        busiest = max(load)
        used = [w for w in load if w[4] > 0]
        rows.append({"workers": k, "shard_bytes": sizes[label], "shards": len(tasks), "busy_workers": len(used),
                     "max_worker_bytes": busiest[2], "max_worker_requests": max(w[3] for w in used),
                     "mean_worker_bytes": sum(w[2] for w in used) / len(used),
                     "total_bytes": sum(w[2] for w in used), "expected_s": busiest[0], "link_mb_s": link_mb,
                     "headers_bytes": headers, "largest_task_bytes": max(b for b, _ in tasks) + headers})
        log(f"  K={k}: {len(tasks)} shards on {len(used)} busy workers; busiest {busiest[2] / 1e9:.2f} GB, "
            f"{busiest[3]:,} requests: {busiest[0]:.0f} s at {link_mb:g} MB/s")
    return rows


def _head(p: Path) -> bytes:
    with open(p, "rb") as f:
        return f.read(8)


def format_requests(rows: list[dict]) -> str:
    lines = ["| workers K | shard size | shards | busiest worker: GB | requests | mean GB / worker | total GB "
             "| largest one shard: GB | expected wall at 100 MB/s each |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['shard_bytes'] / 1e9:.2f} GB | {r['shards']} | {r['max_worker_bytes'] / 1e9:.2f} "
                     f"| {r['max_worker_requests']:,} | {r['mean_worker_bytes'] / 1e9:.2f} | {r['total_bytes'] / 1e9:.1f} "
                     f"| {r['largest_task_bytes'] / 1e9:.2f} | {r['expected_s']:.0f} s ({r['expected_s'] / 60:.1f} min) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--which", default="ray,requests")
    p.add_argument("--workdir", default="/tmp/slicer-bench-distributed")
    p.add_argument("--bandwidth", type=float, default=50.0, help="MB/s per client process (default 50)")
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--shards", type=int, default=4, help="output shards of the ray run's student (default 4)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--arith-workers", default="1,8,17,64")
    p.add_argument("--link", type=float, default=100.0, help="MB/s per worker in the 405B arithmetic (default 100)")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    which = set(args.which.split(","))
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    out: dict = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg()}}
    if "ray" in which:
        out["ray"] = run_ray(workdir, args.bandwidth, [int(k) for k in args.workers.split(",")], args.shards,
                             args.repeats, log)
        print(format_ray(out["ray"]))
    if "requests" in which:
        out["requests"] = run_requests(workdir, [int(k) for k in args.arith_workers.split(",")], args.link, log)
        print(format_requests(out["requests"]))
    out["machine"]["load_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
