"""Fuzzed headers and indexes: every mutant works or is refused cleanly.

The mutations live in bench/fuzz_headers.py (also a standalone script: many more
mutants, with counts); here hypothesis makes the choices, so a failure shrinks to a
small example. "Works" means the output reads back with safetensors and equals the
selection of the mutant as safetensors itself loads it; "refused" means a one-line
``SlicerError`` (through the CLI: exit 2 and one ``slicer: error:`` line). Anything
else is a bug: another exception, a hang, output that differs, output from a file
that safetensors refuses. Lying headers must fail fast without allocating.

Examples are derandomized (the same every run); set SLICER_FUZZ_RANDOM=1 to explore.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import helpers

import slicer
from slicer.run.memory import PeakSampler

sys.path.insert(0, str(helpers.REPO_ROOT / "bench"))
import fuzz_headers as fz  # noqa: E402

SETTINGS = dict(deadline=None, database=None, derandomize=not os.environ.get("SLICER_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> fz.Base:
    return fz.build_base(tmp_path_factory.mktemp("fuzz_base"))


def _assert_clean(m: fz.Mutant, o: fz.Outcome) -> None:
    assert o.clean, f"{m.what}\n[{o.kind}] {o.detail}"


# Every kind of mutation gets its own examples (a kind drawn among all would be rare).
KINDS = ([("file", k) for k in fz.ST_KINDS] + [("index", k) for k in fz.INDEX_KINDS]
         + [("shard", None), ("template", None)])


@pytest.mark.parametrize("target,kind", KINDS, ids=[f"{t}-{k or 'any'}" for t, k in KINDS])
@settings(max_examples=20, **SETTINGS)
@given(data=st.data())
def test_every_mutant_works_or_is_refused_with_one_line(base, target, kind, data):
    with tempfile.TemporaryDirectory() as tmp:
        m = fz.make_mutant(base, Path(tmp), fz.HypothesisChooser(data), target, kind)
        _assert_clean(m, fz.run_api(m, Path(tmp) / "out", timeout=20))


@settings(max_examples=150, **SETTINGS)
@given(data=st.data())
def test_mutants_of_shards_and_templates_work_or_are_refused(base, data):
    target = data.draw(st.sampled_from(["shard", "template"]))
    with tempfile.TemporaryDirectory() as tmp:
        m = fz.make_mutant(base, Path(tmp), fz.HypothesisChooser(data), target)
        _assert_clean(m, fz.run_api(m, Path(tmp) / "out", timeout=20))


@settings(max_examples=120, **SETTINGS)
@given(data=st.data())
def test_every_mutant_through_the_cli_exits_0_or_2_with_one_error_line(base, data):
    with tempfile.TemporaryDirectory() as tmp:
        m = fz.make_mutant(base, Path(tmp), fz.HypothesisChooser(data))
        o = fz.run_cli(m, Path(tmp) / "out", timeout=20)
        _assert_clean(m, o)
        if o.kind == "refused":
            assert not (Path(tmp) / "out").exists()  # nothing written for a refused input


# --------------------------------------------------------------------------- the crashes found, pinned

def _header_of(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _put_header(path: Path, text: str, data: bytes) -> None:
    hb = text.encode()
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + data)


def _edit_header(path: Path, edit) -> None:
    obj, data = _header_of(path)
    _put_header(path, edit(obj), data)


PINNED = {
    # json.loads raised RecursionError: a traceback instead of exit 2
    "header nested 100000 deep": lambda o: json.dumps(o).replace('"F32"', "[" * 100_000 + "]" * 100_000, 1),
    # int() refuses > 4300 digits with a ValueError that json does not wrap
    "5000-digit dimension": lambda o: json.dumps(o).replace("[12, 8]", "[" + "7" * 5000 + ", 8]", 1),
    # dtype ["F32"] is unhashable: TypeError from `dtype not in DTYPES`
    "dtype is a list": lambda o: json.dumps(o).replace('"F32"', '["F32"]', 1),
    "dtype is an object": lambda o: json.dumps(o).replace('"F32"', '{"F32": 1}', 1),
    # accepted, though safetensors refuses: [] is not a map; "\ud800" is no Unicode text
    "__metadata__ is []": lambda o: json.dumps(dict(o, __metadata__=[])),
    "lone surrogate in metadata": lambda o: json.dumps(dict(o, __metadata__={"format": "\ud800"})),
    "lone surrogate in a name": lambda o: json.dumps(o).replace('"unused.extra"', '"\\ud800"'),
    "-0 offset": lambda o: json.dumps(o).replace('"data_offsets": [0,', '"data_offsets": [-0,', 1),
}


@pytest.mark.parametrize("case", list(PINNED))
def test_pinned_header_crashes_are_refused_cleanly(base, tmp_path, case):
    m = fz.Mutant(tmp_path / "teacher.safetensors", base.template, case)
    m.teacher.write_bytes(base.teacher_file.read_bytes())
    _edit_header(m.teacher, PINNED[case])
    o = fz.run_api(m, tmp_path / "out")
    assert o.kind == "refused", f"[{o.kind}] {o.detail}"
    assert str(m.teacher) in o.detail


@pytest.mark.parametrize("value", ["[" * 100_000 + "]" * 100_000, "9" * 5000], ids=["nested", "5000 digits"])
def test_pinned_index_crashes_are_refused_cleanly(base, tmp_path, value):
    folder = tmp_path / "teacher"
    shutil.copytree(base.teacher_sharded, folder)
    index = folder / fz.INDEX
    obj = json.loads(index.read_text())
    obj["weight_map"]["ids"] = "@@V@@"
    index.write_text(json.dumps(obj).replace('"@@V@@"', value))
    o = fz.run_api(fz.Mutant(folder, base.template, "index"), tmp_path / "out")
    assert o.kind == "refused" and str(index) in o.detail, f"[{o.kind}] {o.detail}"


# --------------------------------------------------------------------------- lying headers: fail fast, no allocation

@pytest.mark.parametrize("who", ["teacher", "template", "shard"])
@pytest.mark.parametrize("big", [2**40, 2**62])
def test_a_header_claiming_a_huge_tensor_fails_fast_without_allocating(base, tmp_path, who, big):
    """[big, big] F32 with data_offsets that match the shape: only the file size can tell."""
    shutil.copytree(base.root, tmp_path / "b")
    teacher, template = tmp_path / "b" / "teacher" / "ckpt.safetensors", tmp_path / "b" / "template"
    target = {"teacher": teacher, "template": template / "model.safetensors",
              "shard": tmp_path / "b" / "teacher-sharded" / fz.SHARDS[0]}[who]

    def lie(obj):
        name = next(k for k in obj if k != "__metadata__")
        begin = obj[name]["data_offsets"][0]
        obj[name] = {"dtype": "F32", "shape": [big, big], "data_offsets": [begin, begin + big * big * 4]}
        return json.dumps(obj)

    _edit_header(target, lie)
    if who == "shard":
        teacher = target.parent
    start = time.perf_counter()
    with PeakSampler(interval=0.002) as mem:
        before = mem.peak
        with pytest.raises(slicer.SlicerError) as e:
            slicer.shrink(teacher, tmp_path / "out", template=template)
    seconds = time.perf_counter() - start
    assert str(target) in str(e.value) and "run past the data section" in str(e.value), str(e.value)
    assert seconds < 1.0, f"took {seconds:.2f} s"
    assert mem.peak - before < 32 << 20, f"memory grew by {(mem.peak - before) / 1e6:.0f} MB"
    assert not (tmp_path / "out").exists()


def test_huge_header_length_is_refused_before_reading(base, tmp_path):
    """A length prefix just under the 100 MB limit with a small file: refused, not read."""
    p = tmp_path / "t.safetensors"
    raw = bytearray(base.teacher_file.read_bytes())
    raw[:8] = struct.pack("<Q", 99_999_999)
    p.write_bytes(bytes(raw))
    with PeakSampler(interval=0.002) as mem:
        before = mem.peak
        with pytest.raises(slicer.SlicerError, match="runs past the end of the file"):
            slicer.plan(p, template=base.template)
    assert mem.peak - before < 32 << 20


# --------------------------------------------------------------------------- real processes, and the script

def test_mutants_through_python_m_slicer(base, tmp_path, subprocess_env):
    """Two nasty mutants as real processes: exit 2 with one line, no traceback."""
    mutants = []
    for i, case in enumerate(["header nested 100000 deep", "dtype is a list"]):
        d = tmp_path / f"m{i}"
        d.mkdir()
        m = fz.Mutant(d / "teacher.safetensors", base.template, case)
        m.teacher.write_bytes(base.teacher_file.read_bytes())
        _edit_header(m.teacher, PINNED[case])
        mutants.append(m)
    procs = [subprocess.Popen([sys.executable, "-m", "slicer", "shrink", str(m.teacher), str(m.teacher.parent / "out"),
                               "--template", str(m.template), "--quiet"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=subprocess_env) for m in mutants]
    for m, p in zip(mutants, procs):
        _, err = p.communicate(timeout=120)
        o = fz._judge_cli(m, m.teacher.parent / "out", p.returncode, err, 0.0)
        assert o.kind == "refused" and str(m.teacher) in o.detail, f"{m.what}: [{o.kind}] {o.detail}"


def test_fuzz_script_runs_and_reports_counts(subprocess_env):
    r = subprocess.run([sys.executable, str(helpers.REPO_ROOT / "bench" / "fuzz_headers.py"), "-n", "150", "--seed", "5"],
                       capture_output=True, text=True, env=subprocess_env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "in-process (slicer.shrink): 150 mutants" in r.stdout
    assert "every mutant worked or was refused cleanly" in r.stdout
    counts = {line.split()[0]: int(line.split()[1]) for line in r.stdout.splitlines()[1:8]}
    assert counts["worked"] > 0 and counts["refused"] > 0 and counts["worked"] + counts["refused"] == 150, counts


# --------------------------------------------------------------------------- --set values: bounded memory

SET_FUZZ = r"""
import json, resource, sys, traceback
import slicer
from slicer.errors import SlicerError

teacher = sys.argv[1]
cfg = json.load(open(teacher + "/config.json"))

def ints(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from ints(v, prefix + k + ".")
        elif isinstance(v, int) and not isinstance(v, bool):
            yield prefix + k

tried = refused = 0
for key in ints(cfg):
    for value in (0, -1, 3, 10**6, 10**12, 2**63):
        tried += 1
        try:
            slicer.plan(teacher, config_set={key: value})
        except SlicerError:
            refused += 1
        except Exception:
            print(f"--set {key}={value}: not a SlicerError", file=sys.stderr)
            traceback.print_exc()
            sys.exit(1)
print(json.dumps({"tried": tried, "refused": refused,
                  "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


@pytest.mark.parametrize("fam", ["llama", "qwen3_moe"])
def test_no_set_value_costs_a_gigabyte_or_a_traceback(tmp_path, subprocess_env, fam):
    """Every integer key of the teacher's config set to 0, -1, 3, 10**6, 10**12 and 2**63: a plan
    or a SlicerError, and the process never above 1 GB (num_hidden_layers=10**12 grew past 6 GB)."""
    pytest.importorskip("transformers")
    if fam == "llama":
        from slicer.cli.demo import llama_config, llama_shapes, write_checkpoint

        dims = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=128)
        teacher = tmp_path / "teacher"
        write_checkpoint(teacher, llama_shapes(**dims), llama_config(**dims))
    else:
        from families import FAMILIES, build

        teacher = build(tmp_path / "teacher", FAMILIES[fam], coded=False)
    r = subprocess.run([sys.executable, "-c", SET_FUZZ, str(teacher)], capture_output=True, text=True,
                       env=subprocess_env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["tried"] >= 30 and got["refused"] > 0, got
    assert got["max_rss_kb"] < 1 << 20, got  # KB: 1 GB
