"""Client CPU per HTTP range request: what decides whether fetching only the kept rows can win.

The loopback server of bench/remote.py (tests/remote_server.py, its own process, unthrottled)
serves one 16 MB file; the client reads 3,000 4 kB ranges of it at random offsets, with 1 and
with 16 threads (one keep-alive connection each), and reports its own CPU time (process_time,
all threads) per request. Engines:

  slicer       slicer/remote/http11.py (its Pool, as http_source.py uses it)
  http.client  the standard library's HTTPConnection, one per thread
  FILE.py      another implementation of http11's Pool interface, loaded from a file (a before/after)

    python bench/http_client.py [--engines slicer,http.client] [--requests 3000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import http.client
import importlib.util
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

FILE_BYTES = 16 << 20
RANGE_BYTES = 4 << 10


def pool_engine(module):
    def make():
        pool = module.Pool(30)

        def get(url: str, start: int) -> bytes:
            r = pool.request("GET", url, {"Range": f"bytes={start}-{start + RANGE_BYTES - 1}",
                                          "Accept-Encoding": "identity", "User-Agent": "weight-slicer"})
            body = b"".join(r.stream(1 << 20))
            pool.release(r)
            assert r.status == 206 and len(body) == RANGE_BYTES, r.status
            return body
        return get, pool.close
    return make


def stdlib_engine():
    local = threading.local()
    conns = []

    def get(url: str, start: int) -> bytes:
        conn = getattr(local, "conn", None)
        if conn is None:
            host, port = url.split("/")[2].split(":")
            conn = local.conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conns.append(conn)
        conn.request("GET", "/" + url.split("/", 3)[3],
                     headers={"Range": f"bytes={start}-{start + RANGE_BYTES - 1}",
                              "Accept-Encoding": "identity", "User-Agent": "weight-slicer"})
        r = conn.getresponse()
        body = r.read()
        assert r.status == 206 and len(body) == RANGE_BYTES, r.status
        return body
    return get, lambda: [c.close() for c in conns]


def measure(make, url: str, n: int, threads: int) -> float:
    """Client CPU seconds per request (all threads), over ``n`` requests."""
    get, close = make()
    rng = random.Random(0)
    starts = [rng.randrange(0, FILE_BYTES - RANGE_BYTES) for _ in range(n)]
    for s in starts[:threads * 4]:  # open the connections outside the measurement
        get(url, s)
    chunks = [starts[i::threads] for i in range(threads)]

    def work(part):
        for s in part:
            get(url, s)

    t0 = time.process_time()
    ts = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    cpu = time.process_time() - t0
    close()
    return cpu / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="slicer,http.client")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--threads", default="1,16")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    engines = {}
    for name in args.engines.split(","):
        if name == "slicer":
            from slicer.remote import http11
            engines[name] = pool_engine(http11)
        elif name == "http.client":
            engines[name] = stdlib_engine
        else:
            spec = importlib.util.spec_from_file_location(Path(name).stem, name)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            engines[name] = pool_engine(mod)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "f.bin").write_bytes(os.urandom(FILE_BYTES))
        server = subprocess.Popen([sys.executable, str(HERE / "remote.py"), "serve", d],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            url = server.stdout.readline().strip() + "/f.bin"
            print(f"load average {os.getloadavg()[0]:.1f}; {args.requests} x {RANGE_BYTES >> 10} kB ranges; "
                  f"client CPU per request, median of {args.repeats} (each run's in brackets)")
            for threads in (int(t) for t in args.threads.split(",")):
                runs: dict[str, list[float]] = {name: [] for name in engines}
                for rep in range(args.repeats):  # the engines interleaved, in a rotated order
                    names = list(engines)
                    for name in names[rep % len(names):] + names[:rep % len(names)]:
                        runs[name].append(measure(engines[name], url, args.requests, threads) * 1e6)
                for name, us in runs.items():
                    print(f"  {threads:2d} thread(s)  {name:40s} {statistics.median(us):6.1f} us  "
                          f"[{', '.join(f'{u:.0f}' for u in us)}]")
            print(f"load average {os.getloadavg()[0]:.1f}")
        finally:
            server.stdin.close()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
