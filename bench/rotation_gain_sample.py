"""The rotation's per-site gains over a sample of each site's tokens (one forward) against the
gains over every token (a second forward once ``Qk`` is known), on SmolLM2-135M-Instruct.

The gain is a mean over tokens of one scalar (``sqrt(d/k) |Qk^T x| / |x|``), so a bounded
reservoir of each site's rows, held from the pass that sums the covariance, should give nearly
the same value; this prints the relative difference per sample size, over every norm site.
The perplexity that follows from the sampled gains: bench/rotation_quality.py.

    HF_HUB_OFFLINE=1 python bench/rotation_gain_sample.py [--workdir DIR] [--keep 288] [--sizes 128,256,512,1024]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/slicer-bench-rotation", type=Path)
    p.add_argument("--keep", type=int, default=288, help="the student's hidden size k")
    p.add_argument("--sizes", default="128,256,512,1024", help="tokens per site held for the gains")
    p.add_argument("--samples", type=int, default=32, help="calibration rows of 128 tokens (default 32)")
    args = p.parse_args()
    from rotation_quality import teacher_folder

    from slicer.io.checkpoint import Checkpoint
    from slicer.rotation.observe import observe
    from slicer.rotation.statistics import collect, collect_two_passes

    teacher = teacher_folder(args.workdir)
    ckpt = Checkpoint.open(teacher, role="teacher")
    d = json.loads(ckpt.config_path().read_text())["hidden_size"]
    sites = observe(ckpt, d).sites
    calib = dict(samples=args.samples, seq_len=128, device="cpu", keep=args.keep)
    start = time.perf_counter()
    ref = collect_two_passes(ckpt, sites, **calib)
    print(json.dumps({"gains": "every token (two forwards)", "tokens_per_site": ref.tokens, "sites": len(sites),
                      "seconds": round(time.perf_counter() - start, 1)}), flush=True)
    for size in (int(s) for s in args.sizes.split(",")):
        start = time.perf_counter()
        got = collect(ckpt, sites, sample=size, **calib)
        seconds = time.perf_counter() - start
        assert got.covariance.equal(ref.covariance)  # the same sum, the same pass
        rel = [abs(got.gains[s] / ref.gains[s] - 1) for s in sites]
        print(json.dumps({"gains": f"sample of {got.sampled} tokens per site (one forward)",
                          "max_rel_diff": f"{max(rel):.2e}", "mean_rel_diff": f"{sum(rel) / len(rel):.2e}",
                          "memory_mb": round(got.sampled * d * len(sites) * 4 / 1e6, 1),
                          "seconds": round(seconds, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
