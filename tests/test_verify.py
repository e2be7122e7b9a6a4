"""slicer verify: a fresh student passes; every kind of damage is reported, one line each.

Students are written once per module (in-process) and copied before being damaged.
The CLI runs in-process through ``slicer.cli.main`` (stdout/stderr captured at the
file-descriptor level); one case also runs as a real ``python -m slicer`` subprocess.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import helpers
from helpers import read_output

import slicer
from slicer import cli
from slicer.run.memory import PeakSampler


def _shrink(teacher, out, **kw):
    kw.setdefault("progress", False)
    slicer.shrink(str(teacher), str(out), **kw)
    return Path(out)


@pytest.fixture(scope="module")
def students(ckpts, tmp_path_factory) -> dict:
    """name -> (OUT, teacher path). Fresh outputs; tests copy them before damaging."""
    root = tmp_path_factory.mktemp("verify_students")
    made = {}
    for name, fam, kw in [
        ("llama_sharded", "llama", dict(max_shard_size="20KB", layer_selection="uniform")),
        ("zoo_random", "zoo", dict(method="random", seed=3)),  # every dtype, random bits, explicit index sets
        ("zoo_cast", "zoo_values", dict(dtype="bf16", method="random-inconsistent")),  # casts through .to()
        ("convnext", "convnext_timm", dict(max_shard_size="30KB")),  # 4-D tensors
    ]:
        teacher, _ = ckpts.teacher(fam, "sharded" if fam == "llama" else "folder")
        template, _ = ckpts.template(fam)
        made[name] = (_shrink(teacher, root / name, template=str(template), **kw), teacher)
    return made


def _copy(students, name, tmp_path) -> tuple[Path, Path]:
    out, teacher = students[name]
    dst = tmp_path / name
    shutil.copytree(out, dst)
    return dst, teacher


def _cli(argv, capfd) -> tuple[int, list[str], list[str]]:
    capfd.readouterr()
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capfd.readouterr()
    return rc, out.splitlines(), err.splitlines()


def _manifest(out: Path) -> dict:
    return json.loads((out / "slicer_manifest.json").read_text())


def _rewrite_manifest(out: Path, edit) -> None:
    m = _manifest(out)
    edit(m)
    (out / "slicer_manifest.json").write_text(json.dumps(m, indent=1))


def _flip_element(out: Path, tensor: str, flat_index: int, *, fix_sha: bool) -> tuple[Path, int]:
    """Flip one bit of one element of a student tensor. fix_sha: update the manifest's
    sha256 so that only a comparison of values can notice. -> (shard, element index)."""
    m = _manifest(out)
    rec = m["tensors"][tensor]
    shard = out / rec["shard"]
    header = helpers.read_header(shard)
    n = struct.unpack("<Q", shard.read_bytes()[:8])[0]
    item = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8}.get(rec["dtype"], 1)
    pos = 8 + n + header[tensor]["data_offsets"][0] + flat_index * item
    raw = bytearray(shard.read_bytes())
    raw[pos] ^= 0x01
    shard.write_bytes(bytes(raw))
    if fix_sha:
        def edit(mm):
            for s in mm["shards"]:
                if s["name"] == shard.name:
                    s["sha256"] = hashlib.sha256(bytes(raw)).hexdigest()
        _rewrite_manifest(out, edit)
    return shard, flat_index


# --------------------------------------------------------------------------- a fresh student passes

@pytest.mark.parametrize("name", ["llama_sharded", "zoo_random", "zoo_cast", "convnext"])
@pytest.mark.parametrize("full", [False, True])
def test_fresh_student_verifies_against_manifest_and_teacher(students, name, full):
    out, teacher = students[name]
    report = slicer.verify(out, teacher=teacher, full=full)
    assert report.ok, report.problems
    m = _manifest(out)
    assert report.shards == len(m["shards"]) and report.tensors == len(m["tensors"])
    assert report.tensors_compared == len(m["tensors"])
    total = sum(torch.Size(r["shape"]).numel() for r in m["tensors"].values())
    if full:
        assert report.elements_compared == total
    else:
        assert 0 < report.elements_compared <= total
    assert report.bytes_hashed == sum(s["size"] for s in m["shards"])


@pytest.mark.parametrize("chunk_bytes", [64, 700, 5000])
def test_tiny_read_budgets_still_compare_every_element(students, chunk_bytes):
    """Blocks smaller than one row: dimensions are walked one index at a time."""
    out, teacher = students["convnext"]
    report = slicer.verify(out, teacher=teacher, full=True, chunk_bytes=chunk_bytes)
    assert report.ok, report.problems
    total = sum(torch.Size(r["shape"]).numel() for r in _manifest(out)["tensors"].values())
    assert report.elements_compared == total


def test_verify_cli_exits_0_and_says_ok_on_stdout(students, capfd):
    out, teacher = students["llama_sharded"]
    rc, stdout, stderr = _cli(["verify", str(out), "--teacher", str(teacher), "--full"], capfd)
    assert rc == 0, (stdout, stderr)
    assert stderr == []  # the verdict is the result: stdout, like every command's (diagnostics: stderr)
    assert len(stdout) == 1 and " ok" in stdout[0] and "every element" in stdout[0], stdout


def test_verify_cli_json(students, capfd):
    out, teacher = students["zoo_random"]
    rc, stdout, _ = _cli(["verify", str(out), "--teacher", str(teacher), "--json"], capfd)
    assert rc == 0
    obj = json.loads(stdout[0])
    assert obj["ok"] is True and obj["problems"] == [] and obj["tensors_compared"] == obj["tensors"]


# --------------------------------------------------------------------------- damage is reported

def test_flipped_data_byte_is_reported_by_sha256_and_by_value(students, tmp_path, capfd):
    out, teacher = _copy(students, "llama_sharded", tmp_path)
    name = "model.layers.1.mlp.up_proj.weight"
    shard, _ = _flip_element(out, name, 0, fix_sha=False)  # row 0 is always sampled
    rc, stdout, stderr = _cli(["verify", str(out), "--teacher", str(teacher)], capfd)
    assert rc == 1
    assert len(stdout) == 3, stdout
    assert stdout[0].startswith(f"{shard}: sha256 ") and "differs from the manifest" in stdout[0]
    assert stdout[1].startswith(f"{shard}: tensor {name!r}: differs from the selection") and "at [0, 0]" in stdout[1]
    assert "2 problem(s)" in stdout[-1] and stderr == []
    # Without the teacher only the checksum can tell.
    rc, stdout, _ = _cli(["verify", str(out), "--quiet"], capfd)
    assert rc == 1 and len(stdout) == 1 and "sha256" in stdout[0]


def test_full_finds_a_changed_element_that_the_checksum_no_longer_sees(students, tmp_path):
    out, teacher = _copy(students, "zoo_cast", tmp_path)
    name = "blocks.1.bf16.weight"  # student [4, 6, 3], cast to bf16
    _flip_element(out, name, 1 * 18 + 2 * 3 + 1, fix_sha=True)  # element [1, 2, 1]
    assert slicer.verify(out).ok  # sizes, checksums and headers all agree
    report = slicer.verify(out, teacher=teacher, full=True)
    assert len(report.problems) == 1, report.problems
    assert f"tensor {name!r}: differs from the selection" in report.problems[0]
    assert "at [1, 2, 1]" in report.problems[0]


def test_full_with_a_tiny_budget_locates_the_element(students, tmp_path):
    out, teacher = _copy(students, "convnext", tmp_path)
    m = _manifest(out)
    name = next(n for n, r in m["tensors"].items() if len(r["shape"]) == 4 and r["shape"][0] > 2)
    shape = m["tensors"][name]["shape"]
    at = [shape[0] - 1, shape[1] - 1, shape[2] - 1, 0]
    flat = ((at[0] * shape[1] + at[1]) * shape[2] + at[2]) * shape[3] + at[3]
    _flip_element(out, name, flat, fix_sha=True)
    report = slicer.verify(out, teacher=teacher, full=True, chunk_bytes=64)
    assert len(report.problems) == 1 and f"at {at}" in report.problems[0], report.problems


def test_wrong_teacher_is_reported_tensor_by_tensor(students, ckpts, tmp_path):
    out, teacher = students["llama_sharded"]
    state = helpers.make_state({k: (tuple(v.shape), v.dtype) for k, v in ckpts.teacher_state("llama").items()}, seed=99)
    other = helpers.write_checkpoint(state, tmp_path / "other_teacher", "folder")
    report = slicer.verify(out, teacher=other)
    m = _manifest(out)
    assert len(report.problems) == len(m["tensors"]), report.problems[:3]
    assert all("differs from the selection of teacher tensor" in p for p in report.problems)


def test_teacher_missing_a_source_or_with_another_shape(students, ckpts, tmp_path):
    out, _ = students["llama_sharded"]
    state = dict(ckpts.teacher_state("llama"))
    del state["model.norm.weight"]
    state["lm_head.weight"] = state["lm_head.weight"][:, :32].contiguous()
    other = helpers.write_checkpoint(state, tmp_path / "t", "folder")
    problems = slicer.verify(out, teacher=other).problems
    assert any("'model.norm.weight'" in p and "is not in the teacher" in p for p in problems), problems
    assert any("'lm_head.weight'" in p and "the manifest says BF16 [64, 40]" in p for p in problems), problems


def test_truncated_shard(students, tmp_path):
    out, _ = _copy(students, "llama_sharded", tmp_path)
    shard = out / _manifest(out)["shards"][1]["name"]
    shard.write_bytes(shard.read_bytes()[:-10])
    problems = slicer.verify(out).problems
    assert len(problems) == 3, problems
    assert any(p.startswith(f"{shard}: size ") for p in problems), problems
    assert any(p.startswith(f"{shard}: sha256 ") for p in problems), problems
    assert any(p.startswith(f"{shard}: data section") or "data_offsets" in p for p in problems), problems


def test_missing_shard_stray_shard_and_staging(students, tmp_path):
    out, _ = _copy(students, "llama_sharded", tmp_path)
    shards = [s["name"] for s in _manifest(out)["shards"]]
    (out / shards[0]).unlink()
    shutil.copy(out / shards[1], out / "model-00099-of-00099.safetensors")
    (out / ".slicer-partial").mkdir()
    problems = slicer.verify(out).problems
    assert f"{out / shards[0]}: shard is missing" in problems
    assert f"{out / 'model-00099-of-00099.safetensors'}: not part of the student the manifest describes" in problems
    assert any(".slicer-partial: staging folder" in p for p in problems)
    assert len(problems) == 3, problems


def test_manifest_disagreeing_with_a_header(students, tmp_path):
    out, _ = _copy(students, "llama_sharded", tmp_path)
    name = "model.embed_tokens.weight"

    def edit(m):
        m["tensors"][name]["shape"] = [7, 7]
        m["tensors"]["ghost.weight"] = dict(m["tensors"][name], shape=[1, 1])
    _rewrite_manifest(out, edit)
    shard = _manifest(out)["tensors"][name]["shard"]
    problems = slicer.verify(out).problems
    assert f"{out / shard}: tensor {name!r} is BF16 [64, 24], the manifest says BF16 [7, 7]" in problems
    assert f"{out / shard}: tensor 'ghost.weight' is missing (the manifest puts it in this shard)" in problems
    assert any("weight_map disagrees with the manifest" in p for p in problems)
    assert any("metadata.total_size" in p for p in problems)


def test_index_problems(students, tmp_path):
    out, _ = _copy(students, "llama_sharded", tmp_path)
    index = out / "model.safetensors.index.json"
    obj = json.loads(index.read_text())
    first = sorted(obj["weight_map"])[0]
    obj["weight_map"][first] = "model-00042-of-00099.safetensors"
    index.write_text(json.dumps(obj))
    problems = slicer.verify(out).problems
    assert len(problems) == 1 and f"e.g. {first!r}" in problems[0], problems
    index.unlink()
    assert slicer.verify(out).problems == [f"{index}: index is missing (the student has "
                                           f"{len(_manifest(out)['shards'])} shards)"]
    index.write_text("{not json")
    assert "unreadable index" in slicer.verify(out).problems[0]


def test_header_of_a_shard_is_broken(students, tmp_path):
    out, _ = _copy(students, "zoo_random", tmp_path)
    shard = out / "model.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[9] = ord("[")  # '{"__' -> '{[_': no longer JSON
    shard.write_bytes(bytes(raw))
    problems = slicer.verify(out).problems
    assert any("sha256" in p for p in problems)
    assert any(p.startswith(f"{shard}: header is not valid JSON") for p in problems), problems


# --------------------------------------------------------------------------- input errors: exit 2

def test_not_a_student_folder_exits_2(tmp_path, capfd):
    (tmp_path / "empty").mkdir()
    for target, expect in [(tmp_path / "empty", "no manifest"), (tmp_path / "nope", "not found")]:
        rc, stdout, stderr = _cli(["verify", str(target)], capfd)
        assert rc == 2 and stdout == [], (rc, stdout, stderr)
        assert len(stderr) == 1 and stderr[0].startswith("slicer: error: ") and expect in stderr[0], stderr


@pytest.mark.parametrize("manifest", [
    "{not json", "[]", '{"format": "other/1"}', "[" * 100_000 + "]" * 100_000,
    '{"format": "slicer-manifest/1", "shards": [{"name": "../../etc/passwd", "size": 1}], "tensors": {}, "index_sets": {}}',
    '{"format": "slicer-manifest/1", "shards": [], "tensors": {"a": {"shape": [1]}}, "index_sets": {}}',
])
def test_malformed_manifest_exits_2(students, tmp_path, capfd, manifest):
    out, _ = _copy(students, "zoo_random", tmp_path)
    (out / "slicer_manifest.json").write_text(manifest)
    rc, stdout, stderr = _cli(["verify", str(out)], capfd)
    assert rc == 2 and len(stderr) == 1 and stderr[0].startswith(f"slicer: error: {out / 'slicer_manifest.json'}: "), stderr


def test_unreadable_teacher_exits_2(students, tmp_path, capfd):
    out, _ = students["zoo_random"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{]]]]")
    rc, _, stderr = _cli(["verify", str(out), "--teacher", str(bad)], capfd)
    assert rc == 2 and len(stderr) == 1 and stderr[0].startswith(f"slicer: error: {bad}: "), stderr


def test_verify_via_python_m_slicer(students, tmp_path, subprocess_env):
    out, teacher = _copy(students, "zoo_random", tmp_path)
    _flip_element(out, "blocks.0.f32.weight", 0, fix_sha=False)
    r = subprocess.run([sys.executable, "-m", "slicer", "verify", str(out), "--teacher", str(teacher), "--quiet"],
                       capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and r.stderr == ""
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and "sha256" in lines[0] and "'blocks.0.f32.weight': differs" in lines[1], lines


# --------------------------------------------------------------------------- bounded memory

def test_full_verify_reads_in_bounded_memory(tmp_path):
    """A 64 MB student tensor is compared in blocks: the peak stays near the budget."""
    gen = torch.Generator().manual_seed(0)
    (tmp_path / "in").mkdir()
    teacher = tmp_path / "in" / "teacher.safetensors"
    save_file({"w": torch.randn(8192, 2048, generator=gen)}, str(teacher))  # 64 MB
    template = tmp_path / "in" / "template.safetensors"
    save_file({"w": torch.zeros(4096, 2048)}, str(template))
    out = _shrink(teacher, tmp_path / "out", template=str(template))
    with PeakSampler(interval=0.005) as mem:
        base = mem.peak
        report = slicer.verify(out, teacher=teacher, full=True, chunk_bytes=2 << 20)
    assert report.ok and report.elements_compared == 4096 * 2048
    assert mem.peak - base < 24 << 20, f"peak grew by {(mem.peak - base) / 1e6:.0f} MB for a 32 MB tensor"
    got, _ = read_output(out)
    assert got["w"].shape == (4096, 2048)


# --------------------------------------------------------------------------- damaged students never crash verify

def _mutate_json(path: Path, ch) -> str:
    """Replace or delete one value anywhere in a JSON file."""
    import fuzz_headers as fz

    obj = json.loads(path.read_text())
    spots = []

    def walk(node, trail):
        spots.append(trail)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, trail + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node[:4]):
                walk(v, trail + [i])
    walk(obj, [])
    trail = ch.pick(spots[1:])
    parent = obj
    for k in trail[:-1]:
        parent = parent[k]
    if isinstance(parent, dict) and ch.integer(0, 3) == 0:
        del parent[trail[-1]]
        what = f"delete {trail}"
    else:
        value = ch.pick(fz.WRONG_TYPES + fz.INTS + ["model.safetensors", "../x", "F32", "identity:8"])
        parent[trail[-1]] = value
        what = f"{trail} = {value!r}"
    path.write_text(json.dumps(obj))
    return what


@pytest.fixture(scope="module")
def fuzz_tools():
    sys.path.insert(0, str(helpers.REPO_ROOT / "bench"))
    import fuzz_headers as fz

    return fz, fz.HypothesisChooser


def test_verify_reports_or_refuses_but_never_crashes_on_a_damaged_student(students, fuzz_tools, tmp_path_factory):
    """Mutated shards, manifest or index: a report (exit 0/1) or a SlicerError (exit 2)."""
    import tempfile

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    fz, Chooser = fuzz_tools

    @settings(max_examples=150, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def check(data):
        name = data.draw(st.sampled_from(["llama_sharded", "zoo_random", "zoo_cast"]))
        src, teacher = students[name]
        with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as tmp:
            out = Path(tmp) / "out"
            shutil.copytree(src, out)
            ch = Chooser(data)
            target = ch.pick(["shard", "manifest", "index"] if name == "llama_sharded" else ["shard", "manifest"])
            changed = False
            if target == "shard":
                shard = ch.pick(sorted(out.glob("*.safetensors")))
                before = shard.read_bytes()
                what = fz.mutate_safetensors(shard, ch)
                changed = shard.read_bytes() != before
            else:
                what = _mutate_json(out / ("slicer_manifest.json" if target == "manifest" else
                                           "model.safetensors.index.json"), ch)
            try:
                report = slicer.verify(out, teacher=teacher, full=ch.pick([False, True]), chunk_bytes=ch.pick([64, 1 << 20]))
            except slicer.SlicerError as e:
                assert "\n" not in str(e) and target == "manifest", (what, str(e))
                return
            except Exception as e:  # noqa: BLE001
                raise AssertionError(f"{name} {target}: {what}: {type(e).__name__}: {e}") from e
            assert all("\n" not in p for p in report.problems), report.problems
            if changed:  # any change to a shard's bytes shows (its sha256, at least)
                assert not report.ok, what
    check()
