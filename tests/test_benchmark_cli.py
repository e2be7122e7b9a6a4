"""`slicer bench` on tiny sizes: the table, the JSON records, the end-to-end row, --plot errors."""
from __future__ import annotations

import builtins
import json

import pytest

from slicer.cli import bench as benchmark
from slicer.cli import main

TINY = ["bench", "--quick", "--sizes", "16,32", "--dtypes", "bf16,fp8", "--shapes", "square", "--repeats", "1"]


def test_bench_json_records_have_the_documented_fields(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main([*TINY, "--no-e2e", "-o", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "GB/s = (bytes read + bytes written by the selection)" in printed and "x copy" in printed
    data = json.loads(out.read_text())
    assert {"cpu", "cores", "date"} <= set(data["machine"])
    records = data["records"]
    # 2 sizes x 2 dtypes x 2 selections (quick: uniform, consecutive), torch on the CPU
    assert len(records) == 8
    for r in records:
        assert {"backend", "device", "dtype", "shape", "seconds", "gb_per_s", "copy_gb_per_s", "ratio"} <= set(r)
        assert r["kind"] == "gather" and r["backend"] == "torch" and r["device"] == "cpu"
        assert r["seconds"] > 0 and r["gb_per_s"] > 0
        itemsize = 1 if r["dtype"] == "fp8" else 2
        n = r["extra"]["out_shape"][0] * r["extra"]["out_shape"][1]
        assert r["bytes_moved"] == 2 * n * itemsize
    assert {r["shape"] for r in records} == {"16x16->8x8", "32x32->16x16"}


def test_bench_json_is_a_flag_printing_the_records_on_stdout(capsys):
    """--json is a flag here as in every command (it used to take a FILE: now -o FILE)."""
    assert main([*TINY, "--no-e2e", "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["records"]) == 8 and {"cpu", "cores", "date"} <= set(data["machine"])


@pytest.mark.parametrize("where", ["under-a-file", "a-file", "read-only"])
def test_bench_refuses_an_unusable_workdir_before_any_timing(tmp_path, capsys, monkeypatch, where):
    workdir = tmp_path / "w"
    if where == "a-file":
        workdir.write_text("x")
    if where == "under-a-file":
        (tmp_path / "f").write_text("x")
        workdir = tmp_path / "f" / "w"
    if where == "read-only":  # as on a read-only mount (root passes a chmod): creating a file fails
        import tempfile
        workdir.mkdir()

        def refuse(*a, **k):
            raise OSError(30, "Read-only file system")
        monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    monkeypatch.setattr(benchmark, "run_bench", lambda **k: pytest.fail("timed before checking --workdir"))
    assert main(["bench", "--quick", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"slicer: error: --workdir {workdir}: "), err


def test_bench_end_to_end_row_on_a_tiny_teacher(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--no-gather", "--size-gb", "0.005", "--workdir", str(tmp_path / "w"),
                 "-o", str(out), "--quiet"]) == 0
    assert "slicer.shrink of a generated Llama-shaped bf16 teacher" in capsys.readouterr().out
    (r,) = json.loads(out.read_text())["records"]
    assert r["kind"] == "e2e" and r["backend"] == "torch" and r["device"] == "cpu" and r["dtype"] == "bf16"
    assert r["seconds"] > 0 and r["gb_per_s"] > 0 and r["extra"]["peak_memory_bytes"] > 0
    assert r["bytes_moved"] == r["extra"]["bytes_read"] + r["extra"]["bytes_written"]
    assert list((tmp_path / "w").iterdir()) == []  # the generated teacher is gone


def test_plot_without_matplotlib_is_a_clean_error(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main([*TINY, "--no-e2e", "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slicer: error: --plot needs matplotlib") and "[plot]" in err
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("flag,value", [("--dtypes", "bf17"), ("--shapes", "round"), ("--sizes", "15")])
def test_bad_bench_options_are_one_line_errors(flag, value, capsys):
    assert main(["bench", "--no-e2e", flag, value]) == 2
    assert capsys.readouterr().err.startswith(f"slicer: error: {flag}")


def test_llama_pair_hits_the_size_at_half_width_and_depth():
    teachers = benchmark.bench_module("teachers")
    for gb in (0.25, 1, 8):
        t, s = benchmark.llama_pair(gb)
        size = teachers.total_bytes(t.tensors()) / 1e9
        assert abs(size - gb) / gb < 0.15
        assert (s.hidden, s.layers, s.intermediate) == (t.hidden // 2, t.layers // 2, t.intermediate // 2)
