"""Bad input through the CLI: exit 2, one `slicer: error: ` line naming the culprit,
no traceback, no student files, inputs byte-identical.

Each case is its own test id. The subprocesses (each imports torch: ~1.5 s) run
concurrently in a module fixture, for the selected cases only.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from safetensors.torch import save_file

import helpers
from helpers import read_output, reference_student, sha256_tree, student_files, write_raw_safetensors

GOOD_SHAPES = {"alpha.weight": [8, 6], "beta.bias": [8]}
STUDENT_SHAPES = {"alpha.weight": [4, 3], "beta.bias": [4]}
ALPHA = {"dtype": "F32", "shape": [8, 6], "data_offsets": [0, 192]}
BETA = {"dtype": "F32", "shape": [8], "data_offsets": [192, 224]}


def _teacher_state():
    return helpers.make_state(GOOD_SHAPES, seed=5)


def _data(n=224) -> bytes:
    return bytes((i * 37 + 11) % 256 for i in range(n))


@dataclass
class Case:
    teacher: Path
    out: Path
    expect: list  # the stderr line must contain at least one of these
    template: Path | None = None
    args: list = field(default_factory=list)
    never_open: Path | None = None  # a file the run must not open (checked in-process)


def _template(d: Path, shapes=None, name="template") -> Path:
    return helpers.write_checkpoint(helpers.make_state(shapes or STUDENT_SHAPES, seed=1), d / name, "folder")


def _raw_teacher(d: Path, header, data: bytes = None, header_len=None) -> Case:
    p = d / "teacher.safetensors"
    write_raw_safetensors(p, header, _data() if data is None else data, header_len)
    return Case(teacher=p, out=d / "out", expect=["teacher.safetensors"], template=_template(d))


def _valid_teacher_bytes() -> bytes:
    hb = json.dumps({"alpha.weight": ALPHA, "beta.bias": BETA}).encode()
    return struct.pack("<Q", len(hb)) + hb + _data()


def _sharded_teacher(d: Path, weight_map: dict | None = None, index_text: str | None = None) -> Path:
    """teacher/ with model-00001-of-00002 (alpha) and model-00002-of-00002 (beta) + index."""
    folder = d / "teacher"
    folder.mkdir()
    st = _teacher_state()
    save_file({"alpha.weight": st["alpha.weight"]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({"beta.bias": st["beta.bias"]}, str(folder / "model-00002-of-00002.safetensors"))
    wm = weight_map or {"alpha.weight": "model-00001-of-00002.safetensors",
                        "beta.bias": "model-00002-of-00002.safetensors"}
    text = index_text if index_text is not None else json.dumps(
        {"metadata": {"total_size": 224}, "weight_map": wm})
    (folder / "model.safetensors.index.json").write_text(text)
    return folder


def _single_teacher_folder(d: Path, name="teacher_dir") -> Path:
    folder = d / name
    folder.mkdir()
    save_file(_teacher_state(), str(folder / "model.safetensors"))
    return folder


CASES: dict = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


# --- broken safetensors files -------------------------------------------------------------

@case
def empty_file(d):
    p = d / "teacher.safetensors"
    p.write_bytes(b"")
    return Case(teacher=p, out=d / "out", expect=["teacher.safetensors"], template=_template(d))


@case
def truncated_file(d):
    p = d / "teacher.safetensors"
    p.write_bytes(_valid_teacher_bytes()[:5])
    return Case(teacher=p, out=d / "out", expect=["teacher.safetensors"], template=_template(d))


@case
def truncated_in_header(d):
    p = d / "teacher.safetensors"
    p.write_bytes(_valid_teacher_bytes()[:40])
    return Case(teacher=p, out=d / "out", expect=["teacher.safetensors"], template=_template(d))


@case
def header_length_past_end_of_file(d):
    hb = json.dumps({"alpha.weight": ALPHA, "beta.bias": BETA}).encode()
    return _raw_teacher(d, hb, header_len=len(hb) + 224 + 100)


@case
def absurd_header_length(d):
    return _raw_teacher(d, json.dumps({"alpha.weight": ALPHA}).encode(), header_len=2**60)


@case
def header_not_utf8(d):
    return _raw_teacher(d, b'{"alpha.weight": "\xff\xfe\xfd"}')


@case
def header_not_json(d):
    return _raw_teacher(d, b'{"alpha.weight": {"dtype": "F32", ')


@case
def header_json_not_an_object(d):
    return _raw_teacher(d, b"[1, 2, 3]")


@case
def entry_not_an_object(d):
    return _raw_teacher(d, {"alpha.weight": 5, "beta.bias": BETA})


@case
def entry_without_data_offsets(d):
    return _raw_teacher(d, {"alpha.weight": {"dtype": "F32", "shape": [8, 6]}, "beta.bias": BETA})


@case
def overlapping_offsets(d):
    return _raw_teacher(d, {"alpha.weight": ALPHA, "beta.bias": dict(BETA, data_offsets=[160, 192])},
                        _data(192))


@case
def offsets_past_the_data(d):
    return _raw_teacher(d, {"alpha.weight": ALPHA, "beta.bias": BETA}, _data(200))


@case
def unknown_dtype(d):
    return _raw_teacher(d, {"alpha.weight": dict(ALPHA, dtype="F17"), "beta.bias": BETA})


@case
def shape_disagrees_with_byte_span(d):
    return _raw_teacher(d, {"alpha.weight": dict(ALPHA, data_offsets=[0, 188]),
                            "beta.bias": dict(BETA, data_offsets=[188, 220])}, _data(220))


@case
def negative_dimension(d):
    # (-8) * (-6) * 4 == 192: a product-only check would accept it.
    return _raw_teacher(d, {"alpha.weight": dict(ALPHA, shape=[-8, -6]), "beta.bias": BETA})


@case
def shape_not_integers(d):
    return _raw_teacher(d, {"alpha.weight": dict(ALPHA, shape=[8, "6"]), "beta.bias": BETA})


# --- sharded teachers --------------------------------------------------------------------

IDX = "model.safetensors.index.json"


@case
def index_names_a_missing_shard(d):
    folder = _sharded_teacher(d, {"alpha.weight": "model-00001-of-00002.safetensors",
                                  "beta.bias": "model-00003-of-00003.safetensors"})
    return Case(teacher=folder, out=d / "out", expect=["model-00003-of-00003.safetensors", IDX],
                template=_template(d))


@case
def index_not_json(d):
    folder = _sharded_teacher(d, index_text='{"weight_map": {"alpha.weight": ')
    return Case(teacher=folder, out=d / "out", expect=[IDX], template=_template(d))


@case
def index_path_not_json(d):
    folder = _sharded_teacher(d, index_text="not json at all")
    return Case(teacher=folder / IDX, out=d / "out", expect=[IDX], template=_template(d))


@case
def index_without_weight_map(d):
    folder = _sharded_teacher(d, index_text=json.dumps({"metadata": {"total_size": 224}}))
    return Case(teacher=folder, out=d / "out", expect=[IDX], template=_template(d))


def _secret(d: Path) -> Path:
    # A valid checkpoint outside the teacher folder: a bug that follows the index would
    # read it and succeed.
    p = d / "secret.safetensors"
    save_file(_teacher_state(), str(p))
    return p


def _escaping_index(d: Path, shard_name) -> Case:
    secret = _secret(d)
    name = shard_name(secret) if callable(shard_name) else shard_name
    folder = _sharded_teacher(d, {"alpha.weight": name, "beta.bias": "model-00002-of-00002.safetensors"})
    (folder / "sub").mkdir()  # so that "sub/../../x" resolves for a bug that follows it
    return Case(teacher=folder, out=d / "out", expect=[IDX], template=_template(d), never_open=secret)


@case
def index_entry_outside_the_folder(d):
    return _escaping_index(d, "../secret.safetensors")


@case
def index_entry_absolute_path(d):
    return _escaping_index(d, lambda secret: str(secret.resolve()))


@case
def index_entry_escaping_through_a_subfolder(d):
    return _escaping_index(d, "sub/../../secret.safetensors")


@case
def index_names_a_shard_without_the_tensor(d):
    folder = _sharded_teacher(d, {"alpha.weight": "model-00002-of-00002.safetensors",
                                  "beta.bias": "model-00002-of-00002.safetensors"})
    return Case(teacher=folder, out=d / "out",
                expect=[IDX, "model-00002-of-00002.safetensors", "alpha.weight"], template=_template(d))


@case
def shard_header_not_json(d):
    folder = _sharded_teacher(d)
    write_raw_safetensors(folder / "model-00002-of-00002.safetensors", b'{"beta.bias": ', _data(32))
    return Case(teacher=folder, out=d / "out", expect=["model-00002-of-00002.safetensors"],
                template=_template(d))


# --- paths -------------------------------------------------------------------------------

@case
def missing_teacher(d):
    return Case(teacher=d / "no_such_teacher.safetensors", out=d / "out",
                expect=["no_such_teacher.safetensors"], template=_template(d))


@case
def teacher_empty_folder(d):
    (d / "empty_teacher").mkdir()
    return Case(teacher=d / "empty_teacher", out=d / "out", expect=["empty_teacher"], template=_template(d))


@case
def template_is_a_text_file(d):
    t = d / "template.txt"
    t.write_text("this is not a checkpoint\n")
    return Case(teacher=_single_teacher_folder(d), out=d / "out", expect=["template.txt"], template=t)


@case
def template_is_an_empty_folder(d):
    (d / "empty_template").mkdir()
    return Case(teacher=_single_teacher_folder(d), out=d / "out", expect=["empty_template"],
                template=d / "empty_template")


@case
def template_header_not_json(d):
    t = d / "template.safetensors"
    write_raw_safetensors(t, b"{{{", _data(16))
    return Case(teacher=_single_teacher_folder(d), out=d / "out", expect=["template.safetensors"], template=t)


@case
def out_is_the_teacher_folder(d):
    folder = _single_teacher_folder(d)
    return Case(teacher=folder, out=folder, expect=["teacher_dir"], template=_template(d))


@case
def out_inside_the_teacher_folder(d):
    folder = _single_teacher_folder(d)
    return Case(teacher=folder, out=folder / "student_out", expect=["student_out", "teacher_dir"],
                template=_template(d))


@case
def out_exists_and_is_not_empty(d):
    out = d / "existing_out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    return Case(teacher=_single_teacher_folder(d), out=out, expect=["existing_out"], template=_template(d))


@case
def out_is_a_file(d):
    out = d / "out_file.txt"
    out.write_text("a file, not a folder\n")
    return Case(teacher=_single_teacher_folder(d), out=out, expect=["out_file.txt"], template=_template(d))


# --- template vs teacher -----------------------------------------------------------------

@case
def template_tensor_missing_from_teacher(d):
    shapes = dict(STUDENT_SHAPES, **{"gamma_extra.weight": [2, 2]})
    return Case(teacher=_single_teacher_folder(d), out=d / "out", expect=["gamma_extra.weight"],
                template=_template(d, shapes))


@case
def rank_mismatch(d):
    shapes = dict(STUDENT_SHAPES, **{"alpha.weight": [4, 3, 1]})
    return Case(teacher=_single_teacher_folder(d), out=d / "out", expect=["alpha.weight"],
                template=_template(d, shapes))


@case
def student_dim_larger_than_teacher(d):
    shapes = dict(STUDENT_SHAPES, **{"alpha.weight": [9, 3]})
    return Case(teacher=_single_teacher_folder(d), out=d / "out", expect=["alpha.weight"],
                template=_template(d, shapes))


# --- options -----------------------------------------------------------------------------

@case
def bad_max_shard_size(d):
    return Case(teacher=_single_teacher_folder(d), out=d / "out", expect=["5XB"], template=_template(d),
                args=["--max-shard-size", "5XB"])


@case
def bad_exclude_regex(d):
    return Case(teacher=_single_teacher_folder(d), out=d / "out", expect=["[unclosed"], template=_template(d),
                args=["--exclude", "[unclosed"])


# --- not bad: --overwrite ----------------------------------------------------------------

GOOD: dict = {}


def good(fn):
    GOOD[fn.__name__] = fn
    return fn


@good
def overwrite_replaces_a_non_empty_out(d):
    out = d / "existing_out"
    out.mkdir()
    (out / "notes.txt").write_text("old\n")
    (out / "model.safetensors").write_bytes(b"stale junk")
    return Case(teacher=_single_teacher_folder(d), out=out, expect=[], template=_template(d),
                args=["--overwrite"])


# --- runners ----------------------------------------------------------------------------
#
# Every case runs in-process through the console-script entry point (``slicer.cli:main``
# with sys.argv set, as the installed ``slicer`` script calls it; stderr captured at the
# file-descriptor level). A subprocess ``python -m slicer`` costs ~1.6 s here (torch import)
# and the machine has about one core's worth of CPU, so only a representative subset also
# runs as a real subprocess (all of them with SLICER_TEST_ALL_SUBPROCESS=1).

SUBPROCESS_CASES = [  # one per kind of failure
    "header_not_json", "index_entry_outside_the_folder", "missing_teacher",
    "out_exists_and_is_not_empty", "student_dim_larger_than_teacher", "bad_max_shard_size",
]
if os.environ.get("SLICER_TEST_ALL_SUBPROCESS"):
    SUBPROCESS_CASES = list(CASES)


@dataclass
class Result:
    case: Case
    dir: Path
    rc: int
    stdout: str
    stderr: str
    before: dict
    before_student_files: list


def _argv(c: Case) -> list:
    argv = ["shrink", str(c.teacher), str(c.out)]
    if c.template is not None:
        argv += ["--template", str(c.template)]
    return argv + ["--quiet", *c.args]


def _prepare(d: Path, cid: str):
    d.mkdir(parents=True)
    c = (CASES.get(cid) or GOOD[cid])(d)
    return c, sha256_tree(d), student_files(d)


def _run_subprocess(d: Path, c: Case, env: dict) -> tuple:
    cmd = [sys.executable, "-m", "slicer", *_argv(c)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=d)
        return r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        return -999, str(e.stdout), f"TIMEOUT after 120 s: {e.stderr}"


@pytest.fixture(scope="module")
def subprocess_results(request, tmp_path_factory, subprocess_env) -> dict:
    """Runs the selected subprocess cases concurrently, once per module."""
    here = request.node.path
    wanted = [item.callspec.params["sub_case"] for item in request.session.items
              if getattr(item, "path", None) == here and "sub_case" in getattr(
                  getattr(item, "callspec", None), "params", {})]
    root = tmp_path_factory.mktemp("bad_input_subprocess")
    prepared = {cid: (root / cid, *_prepare(root / cid, cid)) for cid in dict.fromkeys(wanted)}
    with ThreadPoolExecutor(max_workers=2) as ex:
        futs = {cid: ex.submit(_run_subprocess, d, c, subprocess_env) for cid, (d, c, _, _) in prepared.items()}
        return {cid: Result(c, d, *futs[cid].result(), before, bsf)
                for cid, (d, c, before, bsf) in prepared.items()}


_opened: list | None = None  # absolute paths opened from Python while recording
_hook_installed = False


def _audit(event, args):
    if _opened is not None and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.path.abspath(os.fsdecode(args[0])))


def _run_in_process(d: Path, c: Case, capfd, monkeypatch) -> tuple:
    """-> (exit code, stdout, stderr, paths opened)."""
    global _opened, _hook_installed
    from slicer import cli
    if not _hook_installed:  # audit hooks cannot be removed: one for the session, idle when not recording
        sys.addaudithook(_audit)
        _hook_installed = True
    monkeypatch.chdir(d)
    monkeypatch.setattr(sys, "argv", ["slicer", *_argv(c)])
    capfd.readouterr()
    _opened = []
    try:
        rc = cli.main()
    except SystemExit as e:
        rc = e.code
    finally:
        opened, _opened = _opened, None
    rc = 0 if rc is None else rc
    out, err = capfd.readouterr()
    return rc, out, err, opened


def check_rejected(r: Result) -> None:
    err = r.stderr
    assert "Traceback" not in err, err
    assert r.rc == 2, f"exit {r.rc}, stderr: {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1, f"stderr has {len(lines)} lines: {err!r}"
    assert lines[0].startswith("slicer: error: "), lines[0]
    assert any(e in lines[0] for e in r.case.expect), f"{lines[0]!r} names none of {r.case.expect}"
    # No student output anywhere (final or temporary), inputs and pre-existing files unchanged.
    new = sorted(set(student_files(r.dir)) - set(r.before_student_files))
    assert new == [], f"left behind: {new}"
    after = sha256_tree(r.dir)
    changed = sorted(p for p, h in r.before.items() if after.get(p) != h)
    assert changed == [], f"changed or removed: {changed}"


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input_exits_2_with_one_error_line_and_leaves_files_alone(case_id, tmp_path, capfd, monkeypatch):
    d = tmp_path / "case"
    c, before, bsf = _prepare(d, case_id)
    rc, out, err, opened = _run_in_process(d, c, capfd, monkeypatch)
    check_rejected(Result(c, d, rc, out, err, before, bsf))
    if c.never_open is not None:
        secret = os.path.realpath(c.never_open)
        assert not any(os.path.realpath(p) == secret for p in opened), f"opened {c.never_open}"


@pytest.mark.parametrize("sub_case", SUBPROCESS_CASES)
def test_bad_input_via_python_m_slicer_exits_2_with_one_error_line(subprocess_results, sub_case):
    check_rejected(subprocess_results[sub_case])


@pytest.mark.parametrize("sub_case", list(GOOD))
def test_overwrite_replaces_an_existing_out(subprocess_results, sub_case):
    r = subprocess_results[sub_case]
    assert r.rc == 0, r.stderr
    assert "Traceback" not in r.stderr
    got, _ = read_output(r.case.out)
    want = reference_student(_teacher_state(), STUDENT_SHAPES, "uniform", "first")
    helpers.assert_state_bit_equal(got, want)
    # The teacher and template were not touched.
    out = r.case.out.resolve()
    after = sha256_tree(r.dir, skip=out)
    before = {p: h for p, h in r.before.items() if not (r.dir / p).resolve().is_relative_to(out)}
    assert after == before


def test_without_overwrite_the_same_existing_out_is_rejected(tmp_path, capfd, monkeypatch):
    d = tmp_path / "case"
    c, before, bsf = _prepare(d, "overwrite_replaces_a_non_empty_out")
    c.args = []
    c.expect = ["existing_out"]
    rc, out, err, _ = _run_in_process(d, c, capfd, monkeypatch)
    check_rejected(Result(c, d, rc, out, err, before, bsf))


# --- the hostile list of issue 22 -------------------------------------------------------
#
# Each numbered input that used to be a traceback, a silent acceptance, a retry loop or
# unbounded memory: one `slicer: error: ` line, exit 2, nothing changed. In-process
# through cli.main (stderr at the fd level: a torch warning would show), one subprocess
# for the memory bound.

def _hostile_llama(d: Path, **config) -> Path:
    from slicer.cli.demo import llama_config, llama_shapes, write_checkpoint

    dims = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=128)
    teacher = d / "teacher"
    write_checkpoint(teacher, llama_shapes(**dims), {**llama_config(**dims), **config})
    return teacher


def _one_line_exit_2(capfd, argv, expect: str) -> str:
    from slicer import cli

    capfd.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slicer: error: "), err  # no warning above it, no traceback
    assert expect in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("edit,expect", [
    ("num_hidden_layers=1000000000000", "larger than the teacher's num_hidden_layers (2)"),
    ("hidden_size=100000", "larger than the teacher's hidden_size (64)"),
    ("max_position_embeddings=1000000000000", "far too large"),
    ("rope_parameters.bogus=1", "rope_parameters has no key 'bogus'"),
    ("hidden_size=0", "config.json with --set hidden_size=0"),
])
def test_hostile_set_values_are_refused_before_any_model_is_built(tmp_path, capfd, edit, expect):
    pytest.importorskip("transformers")
    teacher = _hostile_llama(tmp_path, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    before = sha256_tree(tmp_path)
    _one_line_exit_2(capfd, ["plan", teacher, "--set", edit], expect)
    assert sha256_tree(tmp_path) == before


def test_set_num_experts_on_a_moe_teacher_is_refused_against_the_teacher(tmp_path, capfd):
    pytest.importorskip("transformers")
    from families import FAMILIES, build

    teacher = build(tmp_path / "moe", FAMILIES["qwen3_moe"], coded=False)
    cfg = json.loads((teacher / "config.json").read_text())
    key = next(k for k in ("num_experts", "num_local_experts", "n_routed_experts") if k in cfg)  # as saved
    _one_line_exit_2(capfd, ["plan", teacher, "--set", f"{key}=4000000"],
                     f"larger than the teacher's {key} ({cfg[key]})")


@pytest.mark.parametrize("hidden", [8192, 0])
def test_a_teacher_config_that_contradicts_its_weights_is_refused(tmp_path, capfd, hidden):
    pytest.importorskip("transformers")
    teacher = _hostile_llama(tmp_path)
    cfg = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**cfg, "hidden_size": hidden}))
    line = _one_line_exit_2(capfd, ["plan", teacher, "--set", "num_hidden_layers=1"], str(teacher / "config.json"))
    assert "does not describe its weights" in line or "cannot be built" in line or "invalid" in line, line


def test_overwrite_removes_only_files_whose_size_and_sha256_match_the_record(tmp_path, capfd):
    import slicer

    teacher = _hostile_llama(tmp_path)
    out = tmp_path / "out"
    slicer.shrink(teacher, out, config_set={"hidden_size": 32})
    (out / "notes.txt").write_text("mine\n")
    (out / ".hidden").write_text("mine too\n")
    manifest = json.loads((out / "slicer_manifest.json").read_text())
    manifest["files"] += ["notes.txt", ".hidden"]  # a name in the record is no proof
    manifest["written"]["notes.txt"] = {"size": 5, "sha256": "0" * 64}  # nor a record that does not match
    (out / "slicer_manifest.json").write_text(json.dumps(manifest))
    # A killed run's record naming them too.
    (out / ".slicer-partial").mkdir()
    (out / ".slicer-partial" / "run.json").write_text(json.dumps(
        {"format": "slicer-run/2", "fingerprint": {}, "files": ["notes.txt", ".hidden"], "replace": [], "found": []}))
    from slicer import cli

    capfd.readouterr()
    assert cli.main(["shrink", str(teacher), str(out), "--set", "hidden_size=16", "--overwrite", "--quiet"]) == 0, \
        capfd.readouterr().err
    assert (out / "notes.txt").read_text() == "mine\n" and (out / ".hidden").read_text() == "mine too\n"
    # What the previous run did write (and its record proves) was replaced: the new student is whole.
    assert slicer.verify(out, teacher=teacher, full=True).ok


def test_score_checks_its_output_location_before_scoring(tmp_path, capfd, monkeypatch):
    import slicer.importance

    monkeypatch.setattr(slicer.importance, "score_to_file", lambda *a, **k: pytest.fail("scored first"))
    _one_line_exit_2(capfd, ["score", tmp_path, "--calibration", tmp_path / "ids.safetensors",
                             "-o", tmp_path / "no-such-folder" / "s.safetensors"], "does not exist")
    import tempfile

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)  # a read-only mount (root passes chmod)
    _one_line_exit_2(capfd, ["score", tmp_path, "-o", tmp_path / "s.safetensors"], "Read-only file system")


@pytest.mark.parametrize("url,expect", [
    ("hf://../../etc", "not a valid Hugging Face repository name"),
    ("hf://a", "expected hf://ORG/NAME"),
    ("ftp://127.0.0.1/x/", "unsupported URL scheme ftp://"),
    ("https://[::1/x/", "not a valid URL"),
    ("https://", "no host"),
    ("https://127.0.0.1:9/x/", "connection refused"),
    ("https://127.0.0.1:99999/x/", "not a valid URL"),
])
def test_bad_urls_are_one_line_without_retries(tmp_path, capfd, monkeypatch, url, expect):
    import slicer.remote.fetch as fetch

    slept = []
    monkeypatch.setattr(fetch.time, "sleep", lambda s: slept.append(s))  # a retry waits first
    _one_line_exit_2(capfd, ["plan", url, "--set", "hidden_size=32"], expect)
    assert slept == [], f"retried {len(slept)} times"
