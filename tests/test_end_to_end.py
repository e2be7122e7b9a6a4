"""shrink() end to end: every student tensor equals the independent reference bit for bit."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import helpers
from helpers import (ST_NAME, assert_state_bit_equal, index_sets_from_manifest,
                     read_output, reference_sources, reference_student, student_files)

METHODS = ["uniform", "consecutive", "random", "random-inconsistent"]
RANDOM_METHODS = ("random", "random-inconsistent")


def shrink(teacher, out, **kw):
    """The paper's flat selection (these tests reproduce its reference code), fused qkv included."""
    import slicer
    kw.setdefault("progress", False)
    kw.setdefault("attention", "flat")
    return slicer.shrink(str(teacher), str(out), **kw)


def check_manifest(manifest, teacher_state, template_shapes, sources, method, layer_selection,
                   exclude=()):
    """The manifest describes exactly what was written, with the spec's index sets."""
    want_names = [n for n in template_shapes if not helpers.excluded(n, exclude)]
    assert sorted(manifest["tensors"]) == sorted(want_names)
    assert manifest["options"].get("method") == method, manifest["options"]
    assert manifest["options"].get("layer_selection") == layer_selection, manifest["options"]
    sets = manifest["index_sets"]
    for name in want_names:
        rec = manifest["tensors"][name]
        src = sources[name]
        assert rec["source"] == src, (name, rec["source"], src)
        tshape = list(teacher_state[src].shape)
        assert list(rec["shape"]) == list(template_shapes[name]), name
        assert list(rec["teacher_shape"]) == tshape, name
        assert len(rec["index"]) == len(tshape), name
        for d, key in enumerate(rec["index"]):
            entry = sets[key]
            t, s = tshape[d], template_shapes[name][d]
            assert (entry["t"], entry["s"]) == (t, s), (name, d, entry["t"], entry["s"])
            ix = helpers.set_indices(entry)
            if s == t:
                assert ix == list(range(t)), f"{name} dim {d}: s == t must be the identity"
            elif method in helpers.REF_METHODS:
                assert ix == helpers.REF_METHODS[method](t, s), (name, d)
            else:
                assert len(ix) == s and ix == sorted(set(ix)), f"{name} dim {d}: not sorted/unique/size s"
                assert all(0 <= i < t for i in ix), (name, d)


def check_layer_maps(manifest, teacher_names, template_names, layer_selection):
    want = helpers.ref_layer_maps(teacher_names, template_names, layer_selection)
    got = {k.rstrip("."): list(v) for k, v in manifest["layer_maps"].items()}
    for prefix, m in want.items():
        assert got.get(prefix) == m, f"layer map for {prefix!r}: {got.get(prefix)} != {m} (manifest {got})"
    mapper = helpers.LayerMapper(teacher_names, template_names, layer_selection)
    for n in template_names:
        mapper.source(n)
    for prefix, m in got.items():
        if prefix not in want:
            assert prefix in mapper.kept, f"manifest maps unknown prefix {prefix!r}"
            assert m == list(range(len(m))), f"equal depth at {prefix!r} must keep indices, got {m}"


def run_and_compare(ckpts, tmp_path, fam, *, method="uniform", layer_selection="first", seed=0,
                    teacher_layout="folder", template_layout="folder", dtype="keep", exclude=(),
                    max_shard_size=None, out_name="out"):
    teacher, tstate = ckpts.teacher(fam, teacher_layout)
    template, shapes = ckpts.template(fam, template_layout)
    out = tmp_path / out_name
    kw = dict(template=str(template), method=method, seed=seed, layer_selection=layer_selection,
              exclude=tuple(exclude), dtype=dtype)
    if max_shard_size is not None:
        kw["max_shard_size"] = max_shard_size
    summary = shrink(teacher, out, **kw)
    limit = _size_bytes(max_shard_size)
    got, info = read_output(out, max_shard_size=limit)
    manifest = info["manifest"]
    sources = reference_sources(list(tstate), list(shapes), layer_selection)
    check_manifest(manifest, tstate, shapes, sources, method, layer_selection, exclude)
    check_layer_maps(manifest, list(tstate), list(shapes), layer_selection)
    rand = index_sets_from_manifest(manifest) if method in RANDOM_METHODS else None
    want = reference_student(tstate, shapes, method, layer_selection, rand, dtype=dtype, exclude=exclude)
    assert_state_bit_equal(got, want)
    # The header's dtype strings are the safetensors names of the expected dtypes.
    for shard, header in info["headers"].items():
        for name, entry in header.items():
            if name != "__metadata__":
                assert entry["dtype"] == ST_NAME[want[name].dtype], (shard, name, entry["dtype"])
    assert summary.tensors_written == len(want)
    return summary, got, want, info


def _size_bytes(v):
    if v is None:
        return None
    if isinstance(v, int):
        return v
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9}
    return int(v[:-2]) * units[v[-2:]]


# --------------------------------------------------------------------------- the main matrix

@pytest.mark.parametrize("layer_selection", ["first", "uniform"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fam", ["vit", "convnext_timm", "convnext_orig", "llama", "bert", "zoo"])
def test_student_equals_reference(ckpts, tmp_path, fam, method, layer_selection):
    run_and_compare(ckpts, tmp_path, fam, method=method, layer_selection=layer_selection, seed=7)


@pytest.mark.parametrize("out_sharded", [False, True], ids=["out-single", "out-sharded"])
@pytest.mark.parametrize("teacher_layout", ["file", "folder", "folder-any", "sharded", "index"])
def test_teacher_layouts_and_output_sharding_give_the_reference_student(
        ckpts, tmp_path, teacher_layout, out_sharded):
    _, _, _, info = run_and_compare(ckpts, tmp_path, "vit", teacher_layout=teacher_layout,
                                    max_shard_size="10KB" if out_sharded else None)
    assert info["layout"] == ("sharded" if out_sharded else "single")
    if out_sharded:
        assert len(info["shards"]) > 1


@pytest.mark.parametrize("fam", ["llama", "convnext_orig", "zoo"])
def test_sharded_teacher_to_sharded_output(ckpts, tmp_path, fam):
    _, _, _, info = run_and_compare(ckpts, tmp_path, fam, teacher_layout="sharded",
                                    layer_selection="uniform", max_shard_size=4_000)
    assert info["layout"] == "sharded" and len(info["shards"]) > 1


@pytest.mark.parametrize("template_layout", ["file", "sharded", "index", "folder-any"])
def test_template_layouts_give_the_reference_student(ckpts, tmp_path, template_layout):
    run_and_compare(ckpts, tmp_path, "convnext_timm", template_layout=template_layout)


def test_default_max_shard_size_writes_one_model_safetensors(ckpts, tmp_path):
    _, _, _, info = run_and_compare(ckpts, tmp_path, "llama")
    assert info["layout"] == "single"
    assert "model.safetensors.index.json" not in info["files"]


def test_sharded_output_index_lists_every_tensor_with_its_shard_and_total_size(ckpts, tmp_path):
    _, got, _, info = run_and_compare(ckpts, tmp_path, "vit", max_shard_size=15_000)
    index = info["index"]
    assert set(index["weight_map"]) == set(got)
    assert set(index["weight_map"].values()) == set(info["shards"])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in got.values())


# --------------------------------------------------------------------------- dtypes

def test_every_safetensors_dtype_is_copied_bit_exactly(ckpts, tmp_path):
    # Random bit patterns: NaNs with payloads, infs, subnormals, every bool/int value.
    _, got, _, _ = run_and_compare(ckpts, tmp_path, "zoo", layer_selection="uniform")
    assert {t.dtype for t in got.values()} == set(ST_NAME)
    for dt in ST_NAME:
        assert any(t.dtype == dt and t.dim() == 3 for t in got.values()), dt
        assert any(t.dtype == dt and t.dim() == 0 for t in got.values()), dt


def test_dtype_fp32_casts_a_bf16_teacher(ckpts, tmp_path):
    _, got, want, _ = run_and_compare(ckpts, tmp_path, "llama", dtype="fp32")
    _, tstate = ckpts.teacher("llama")
    assert all(t.dtype == torch.bfloat16 for t in tstate.values())
    assert all(t.dtype == torch.float32 for t in got.values())


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_dtype_cast_applies_to_floating_tensors_only(ckpts, tmp_path, dtype):
    _, got, _, _ = run_and_compare(ckpts, tmp_path, "zoo_values", dtype=dtype)
    target = helpers.CAST_TARGET[dtype]
    for name, t in got.items():
        src_dtype = ckpts.teacher_state("zoo_values")[name].dtype
        assert t.dtype == (target if src_dtype.is_floating_point else src_dtype), (name, t.dtype)


def test_dtype_keep_keeps_the_teacher_dtype_not_the_templates(ckpts, tmp_path):
    # The llama template is float32, its teacher bf16.
    template, _ = ckpts.template("llama")
    tdt = {t.dtype for t in load_file(str(Path(template) / "model.safetensors")).values()}
    assert tdt == {torch.float32}
    _, got, _, _ = run_and_compare(ckpts, tmp_path, "llama")
    assert {t.dtype for t in got.values()} == {torch.bfloat16}


# --------------------------------------------------------------------------- random methods

def _dims_by_ts(manifest):
    """(t, s) -> list of index lists, one per (tensor, dim) with s < t."""
    out: dict = {}
    for name, rec in manifest["tensors"].items():
        for d, key in enumerate(rec["index"]):
            e = manifest["index_sets"][key]
            if e["s"] < e["t"]:
                out.setdefault((e["t"], e["s"]), []).append((name, d, helpers.set_indices(e)))
    return out


def _random_manifest(ckpts, tmp_path, fam, method, seed, name):
    _, got, _, info = run_and_compare(ckpts, tmp_path, fam, method=method, seed=seed, out_name=name)
    return got, info["manifest"]


@pytest.mark.parametrize("fam", ["vit", "llama", "convnext_timm"])
def test_random_uses_one_sorted_subset_per_t_s_pair(ckpts, tmp_path, fam):
    _, manifest = _random_manifest(ckpts, tmp_path, fam, "random", 11, "out")
    groups = _dims_by_ts(manifest)
    assert groups and max(len(v) for v in groups.values()) > 1, "family too small to test consistency"
    for (t, s), dims in groups.items():
        first = dims[0][2]
        assert len(first) == s and first == sorted(set(first)) and 0 <= first[0] and first[-1] < t
        for name, d, ix in dims:
            assert ix == first, f"({t}, {s}): {name} dim {d} uses a different subset"
    # Random, not a deterministic rule in disguise.
    assert any(dims[0][2] not in (helpers.ref_uniform(t, s), helpers.ref_consecutive(t, s))
               for (t, s), dims in groups.items())


@pytest.mark.parametrize("fam", ["vit", "llama"])
def test_random_inconsistent_draws_a_subset_per_dimension(ckpts, tmp_path, fam):
    _, manifest = _random_manifest(ckpts, tmp_path, fam, "random-inconsistent", 11, "out")
    groups = _dims_by_ts(manifest)
    big = {ts: dims for ts, dims in groups.items() if len(dims) >= 4 and ts[0] - ts[1] >= 8}
    assert big, "family too small"
    for (t, s), dims in big.items():
        sets = {tuple(ix) for _, _, ix in dims}
        assert len(sets) > 1, f"({t}, {s}): all {len(dims)} dims share one subset"
        for _, _, ix in dims:
            assert len(ix) == s and ix == sorted(set(ix)) and ix[-1] < t


@pytest.mark.parametrize("method", RANDOM_METHODS)
def test_random_is_deterministic_for_a_seed_and_differs_between_seeds(ckpts, tmp_path, method):
    a, ma = _random_manifest(ckpts, tmp_path, "vit", method, 3, "a")
    b, mb = _random_manifest(ckpts, tmp_path, "vit", method, 3, "b")
    c, mc = _random_manifest(ckpts, tmp_path, "vit", method, 4, "c")
    assert_state_bit_equal(b, a)
    assert ma["index_sets"] == mb["index_sets"]
    assert any(not torch.equal(a[n], c[n]) for n in a), "seed 3 and seed 4 gave the same student"


# --------------------------------------------------------------------------- what gets written

def test_teacher_only_tensors_are_skipped(ckpts, tmp_path):
    tstate = ckpts.teacher_state("vit")
    teacher, _ = ckpts.teacher("vit")
    shapes = {n: s for n, s in helpers.vit_shapes(**helpers.VIT_S, head=False).items()}
    template = helpers.write_checkpoint(helpers.make_state(shapes), tmp_path / "tpl", "folder")
    summary = shrink(teacher, tmp_path / "out", template=str(template))
    got, _ = read_output(tmp_path / "out")
    assert "head.weight" in tstate and not any(n.startswith("head.") for n in got)
    assert_state_bit_equal(got, reference_student(tstate, shapes, "uniform", "first"))
    used = set(reference_sources(list(tstate), list(shapes), "first").values())
    assert summary.tensors_written == len(shapes)
    assert summary.tensors_skipped == len(tstate) - len(used)  # head.* and blocks 2, 3


def test_summary_byte_counts_are_bounded_by_the_files(ckpts, tmp_path):
    summary, got, _, _ = run_and_compare(ckpts, tmp_path, "convnext_orig", teacher_layout="sharded",
                                         max_shard_size="30KB")
    teacher, _ = ckpts.teacher("convnext_orig", "sharded")
    teacher_bytes = sum(p.stat().st_size for p in Path(teacher).glob("*.safetensors"))
    out_bytes = sum(p.stat().st_size for p in (tmp_path / "out").glob("*.safetensors"))
    tensor_bytes = sum(t.numel() * t.element_size() for t in got.values())
    assert 0 < summary.bytes_read <= teacher_bytes
    assert tensor_bytes <= summary.bytes_written <= out_bytes
    assert summary.seconds >= 0


def test_exclude_drops_matching_template_tensors(ckpts, tmp_path):
    import slicer
    teacher, tstate = ckpts.teacher("vit")
    # A 37-class head cannot come from a 10-class teacher head: without --exclude it is an error.
    shapes = helpers.vit_shapes(**helpers.VIT_S, num_classes=37)
    template = helpers.write_checkpoint(helpers.make_state(shapes), tmp_path / "tpl", "folder")
    with pytest.raises(slicer.SlicerError, match=r"head\.(weight|bias)"):
        shrink(teacher, tmp_path / "fails", template=str(template))
    assert not (tmp_path / "fails").exists() or student_files(tmp_path / "fails") == []
    shrink(teacher, tmp_path / "out", template=str(template), exclude=(r"^head\.",))
    got, info = read_output(tmp_path / "out")
    assert not any(n.startswith("head.") for n in got)
    assert_state_bit_equal(got, reference_student(tstate, shapes, "uniform", "first", exclude=(r"^head\.",)))
    assert not any(n.startswith("head.") for n in info["manifest"]["tensors"])


def test_identical_shapes_copy_the_teacher_bit_for_bit(ckpts, tmp_path):
    teacher, tstate = ckpts.teacher("zoo")
    for method in ("uniform", "random-inconsistent"):
        shrink(teacher, tmp_path / method, template=str(teacher), method=method, layer_selection="uniform")
        got, _ = read_output(tmp_path / method)
        assert_state_bit_equal(got, tstate)


def test_zero_length_dimensions_are_written(tmp_path):
    tstate = {"empty.weight": torch.zeros(0, 6), "w": torch.randn(5, 4)}
    sshapes = {"empty.weight": (0, 3), "w": (2, 4)}
    teacher = helpers.write_checkpoint(tstate, tmp_path / "t", "folder")
    template = helpers.write_checkpoint(helpers.make_state(sshapes), tmp_path / "tpl", "folder")
    shrink(teacher, tmp_path / "out", template=str(template))
    got, _ = read_output(tmp_path / "out")
    assert_state_bit_equal(got, reference_student(tstate, sshapes, "uniform"))


def test_config_json_is_copied_from_the_template_folder(ckpts, tmp_path):
    template, _ = ckpts.template("bert")
    run_and_compare(ckpts, tmp_path, "bert")
    assert (tmp_path / "out" / "config.json").read_bytes() == (Path(template) / "config.json").read_bytes()


def test_no_config_json_when_the_template_folder_has_none(ckpts, tmp_path):
    teacher, tstate = ckpts.teacher("bert")
    _, shapes = ckpts.template("bert")
    template = helpers.write_checkpoint(helpers.make_state(shapes), tmp_path / "tpl", "folder")
    assert not (template / "config.json").exists()
    shrink(teacher, tmp_path / "out", template=str(template))
    read_output(tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists()


@pytest.mark.parametrize("teacher_layout", ["folder", "sharded"])
def test_manifest_lists_the_teacher_files_with_their_sizes(ckpts, tmp_path, teacher_layout):
    _, _, _, info = run_and_compare(ckpts, tmp_path, "llama", teacher_layout=teacher_layout)
    teacher, _ = ckpts.teacher("llama", teacher_layout)
    folder = Path(teacher) if Path(teacher).is_dir() else Path(teacher).parent
    files = info["manifest"]["teacher"]["files"]
    listed = {os.path.basename(f["name"]): f["size"] for f in files}
    weights = {p.name: p.stat().st_size for p in folder.glob("*.safetensors")}
    assert weights and set(weights) <= set(listed), (listed, weights)
    for name, size in listed.items():
        assert (folder / name).stat().st_size == size, name


# --------------------------------------------------------------------------- plan

def _sparse_teacher(path, n=16384):
    """A teacher whose only tensor is n x n float32 (1 GiB for n=16384) of sparse zeros."""
    header = {"big.weight": {"dtype": "F32", "shape": [n, n], "data_offsets": [0, 4 * n * n]},
              "__metadata__": {"format": "pt"}}
    helpers.write_raw_safetensors(path, header)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) + 4 * n * n)


def _io_counters():
    rchar = 0
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                rchar = int(line.split()[1])
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return rchar, ru.ru_minflt + ru.ru_majflt


def test_plan_reads_headers_only(tmp_path):
    import slicer
    teacher = tmp_path / "teacher.safetensors"
    _sparse_teacher(teacher)
    template = helpers.write_checkpoint({"big.weight": torch.zeros(3, 5)}, tmp_path / "tpl", "folder")
    slicer.plan(str(teacher), template=str(template))  # warm-up: lazy imports, caches
    r0, f0 = _io_counters()
    t0 = time.perf_counter()
    p = slicer.plan(str(teacher), template=str(template), method="uniform")
    dt = time.perf_counter() - t0
    r1, f1 = _io_counters()
    assert p is not None
    assert r1 - r0 < 8 * 2**20, f"plan read {r1 - r0} bytes through read() for a 1 GiB teacher"
    assert f1 - f0 < 16384, f"plan took {f1 - f0} page faults (touching mmapped tensor data?)"
    assert dt < 5.0


def test_plan_rejects_an_incompatible_template_with_slicer_error(ckpts, tmp_path):
    import slicer
    teacher, _ = ckpts.teacher("vit")
    shapes = helpers.vit_shapes(**helpers.VIT_S)
    shapes["blocks.1.attn.qkv.weight"] = [72, 24, 1]
    template = helpers.write_checkpoint(helpers.make_state(shapes), tmp_path / "tpl", "folder")
    with pytest.raises(slicer.SlicerError, match=r"blocks\.1\.attn\.qkv\.weight"):
        slicer.plan(str(teacher), template=str(template))


def test_shrink_raises_before_writing_when_a_student_dim_exceeds_the_teachers(ckpts, tmp_path):
    import slicer
    teacher, _ = ckpts.teacher("vit")
    shapes = helpers.vit_shapes(**helpers.VIT_S)
    shapes["blocks.1.mlp.fc1.weight"] = [193, 24]
    template = helpers.write_checkpoint(helpers.make_state(shapes), tmp_path / "tpl", "folder")
    with pytest.raises(slicer.SlicerError, match=r"blocks\.1\.mlp\.fc1\.weight"):
        shrink(teacher, tmp_path / "out", template=str(template))
    assert not (tmp_path / "out").exists() or student_files(tmp_path / "out") == []


# --------------------------------------------------------------------------- CLI

def test_cli_shrink_exits_0_and_writes_the_reference_student(ckpts, tmp_path, subprocess_env):
    teacher, tstate = ckpts.teacher("llama", "sharded")
    template, shapes = ckpts.template("llama")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "slicer", "shrink", str(teacher), str(out), "--template", str(template),
           "--layer-selection", "uniform", "--dtype", "fp32", "--max-shard-size", "20KB",
           "--exclude", r"^lm_head\.", "--quiet", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert isinstance(json.loads(r.stdout), dict), r.stdout
    got, info = read_output(out, max_shard_size=20_000)
    assert info["layout"] == "sharded"
    want = reference_student(tstate, shapes, "uniform", "uniform", dtype="fp32", exclude=(r"^lm_head\.",))
    assert_state_bit_equal(got, want)


def test_cli_plan_exits_0_and_writes_nothing(ckpts, tmp_path, subprocess_env):
    teacher, _ = ckpts.teacher("vit", "index")
    template, _ = ckpts.template("vit")
    before = helpers.sha256_tree(Path(teacher).parent)
    r = subprocess.run([sys.executable, "-m", "slicer", "plan", str(teacher), "--template", str(template)],
                       capture_output=True, text=True, env=subprocess_env, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "blocks.1.attn.qkv.weight" in r.stdout
    assert list(tmp_path.iterdir()) == []
    assert helpers.sha256_tree(Path(teacher).parent) == before
