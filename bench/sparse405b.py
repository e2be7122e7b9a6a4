"""Scale beyond this machine, simulated: Llama-3.1-405B's shapes shrunk to Llama-3.1-8B's.

The teacher has the tensor shapes of Llama-3.1-405B (hidden 16384, 126 layers,
128 heads / 8 kv heads of 128, intermediate 53248, vocab 128256, untied lm_head;
bf16, ~811 GB on paper), written as SPARSE files: each shard is a hand-written
safetensors header and ``os.truncate`` to its full size, so nothing is on disk; shards
of at most 5 GB as Hugging Face cuts them, with model.safetensors.index.json. The
template has Llama-3.1-8B's shapes (hidden 4096, 32 layers, 32/8 heads, intermediate
14336, vocab 128256), one sparse file too. Then

    python -m slicer shrink TEACHER OUT --template TEMPLATE --layer-selection uniform

runs as a whole process, its peak anonymous memory sampled (bench/memsample.py).
Reading a sparse hole reads zeros without touching the disk (the pages still go
through the page cache), so the run shows what the plan, the chunking and the
writer do at 405B scale. The student (~16 GB of zeros) is really written to OUT
(under --workdir, on disk) and deleted afterwards; the run is skipped when less than
25 GB are free there.

    python bench/sparse405b.py [--workdir /tmp/slicer-405b] [--keep] [--json FILE] [--interval 0.05]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import memsample  # noqa: E402
import teachers  # noqa: E402
from teachers import LlamaShape  # noqa: E402

LLAMA_405B = LlamaShape(hidden=16384, intermediate=53248, heads=128, kv_heads=8, head_dim=128, layers=126, vocab=128256)
LLAMA_8B = LlamaShape(hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128, layers=32, vocab=128256)
SHARD_BYTES = 5_000_000_000
MIN_FREE_BYTES = 25_000_000_000


def sparse_teacher(d: Path, shape: LlamaShape, max_bytes: int = SHARD_BYTES) -> dict:
    """HF-sharded checkpoint whose data are holes: header + truncate per shard, then the index."""
    d.mkdir(parents=True, exist_ok=True)
    tensors = shape.tensors()
    shards = teachers.plan_shards(tensors, max_bytes)
    for name, ts in shards:
        header = teachers.build_header(ts)
        with open(d / name, "wb") as f:
            f.write(header)
            f.truncate(len(header) + teachers.total_bytes(ts))
    index = {"metadata": {"total_size": teachers.total_bytes(tensors)},
             "weight_map": {t: name for name, ts in shards for t, _ in ts}}
    (d / teachers.INDEX_NAME).write_text(json.dumps(index, indent=2))
    return {"tensors": len(tensors), "shards": len(shards), "bytes": teachers.total_bytes(tensors)}


def disk_blocks(d: Path) -> int:
    """Bytes really allocated on disk under d (st_blocks), to show the teacher is sparse."""
    return sum(p.stat().st_blocks * 512 for p in d.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/slicer-405b"))
    ap.add_argument("--keep", action="store_true", help="keep the sparse teacher and template (the student is always deleted)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--interval", type=float, default=0.05, help="memory sampling interval, seconds")
    ap.add_argument("--layer-selection", default="uniform", choices=("first", "uniform"))
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    from slicer.cli.bench import format_machine, machine_facts

    args.workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.workdir).free
    student_bytes = teachers.total_bytes(LLAMA_8B.tensors())
    if free < MIN_FREE_BYTES:
        log(f"skipped: {free / 1e9:.1f} GB free in {args.workdir}; the {student_bytes / 1e9:.1f} GB student needs "
            f"{MIN_FREE_BYTES / 1e9:.0f} GB free")
        return 0
    machine = machine_facts(args.workdir)
    log(format_machine(machine))
    teacher, template, out = args.workdir / "teacher-405b", args.workdir / "template-8b", args.workdir / "out-8b"
    for p in (teacher, out):
        shutil.rmtree(p, ignore_errors=True)
    t0 = time.perf_counter()
    tfacts = sparse_teacher(teacher, LLAMA_405B)
    teachers.build_template(template, LLAMA_8B, log=lambda m: None)
    build_s = time.perf_counter() - t0
    log(f"teacher: Llama-3.1-405B shapes, {tfacts['tensors']} tensors, {tfacts['bytes'] / 1e9:.1f} GB in "
        f"{tfacts['shards']} sparse shards ({disk_blocks(teacher) / 1e6:.1f} MB on disk); template: Llama-3.1-8B "
        f"shapes, {len(LLAMA_8B.tensors())} tensors, {student_bytes / 1e9:.2f} GB sparse; built in {build_s:.1f} s")

    argv_ = [sys.executable, "-m", "slicer", "shrink", str(teacher), str(out), "--template",
             str(template / "model.safetensors"), "--layer-selection", args.layer_selection, "--json"]
    log("running: " + " ".join(argv_))
    r = memsample.run(argv_, cwd=str(ROOT), interval=args.interval)
    try:
        summary = json.loads(r.stdout_tail.strip().splitlines()[-1]) if r.returncode == 0 else None
    except (ValueError, IndexError):
        summary = None
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.exists() else 0
    shutil.rmtree(out, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(teacher, ignore_errors=True)
        shutil.rmtree(template, ignore_errors=True)
    if r.returncode != 0:
        log(f"FAILED: exit {r.returncode}\n{r.stderr_tail[-3000:]}")
        return 1
    lines = [
        "",
        f"405B -> 8B (sparse teacher, {args.layer_selection} layers): wall {r.wall_s:.1f} s "
        f"({r.wall_s / 60:.1f} min), peak anon {r.peak_anon_bytes / 1e6:.0f} MB (sampled every "
        f"{args.interval * 1000:.0f} ms), maxrss {r.maxrss_bytes / 1e6:.0f} MB (file pages included), "
        f"cpu user {r.user_s:.1f} s + sys {r.sys_s:.1f} s",
    ]
    if summary:
        lines.append(
            f"slicer summary: {summary['tensors_written']} tensors in {summary['shards']} shards, read "
            f"{summary['bytes_read'] / 1e9:.1f} GB of teacher rows (holes: zeros from the page cache), wrote "
            f"{summary['bytes_written'] / 1e9:.2f} GB ({written / 1e9:.2f} GB in OUT, deleted), "
            f"{summary['seconds']:.1f} s in slicer.shrink, {summary['gb_per_s']:.2f} GB/s, "
            f"slicer's own peak {summary['peak_memory_bytes'] / 1e6:.0f} MB")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "teacher": tfacts, "student_bytes": student_bytes,
                                         "build_s": build_s, "run": r.to_dict(), "summary": summary,
                                         "written_bytes": written}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
