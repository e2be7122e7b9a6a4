"""Remote teachers over plain HTTP: same bytes as a local run, only the kept rows fetched, faults survived.

A RangeServer (tests/remote_server.py) on 127.0.0.1 serves a copy of a Llama-shaped
teacher; it counts the bytes it sends and injects faults into chosen requests.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import slicer
from slicer import SlicerError, cli
from remote_fixtures import header_bytes, tree
from remote_server import Fault

SHARDS = "300KB"
FAST = {"backoff_s": 0.01, "retries": 3}  # retries without the real backoff's seconds


def _shrink(url, out, template, **kw):
    kw.setdefault("remote", FAST)
    return slicer.shrink(url, out, template=template, max_shard_size=SHARDS, **kw)


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slicer: error: "), stderr
    return lines[0]


# --------------------------------------------------------------------------- same bytes, fewer bytes

def test_http_student_is_byte_identical_to_the_local_run_and_the_manifest_names_the_source(remote_root, server, tmp_path):
    out = tmp_path / "out"
    summary = _shrink(server.teacher_url, out, remote_root["template"])
    assert tree(out) == remote_root["local_tree"]
    teacher = json.loads((out / "slicer_manifest.json").read_text())["teacher"]
    assert teacher["path"] == server.url + "/teacher" and teacher["source"] == "http"
    sizes = {f["name"]: (f["size"], f["etag"]) for f in teacher["files"]}
    from remote_server import etag_of

    assert sizes == {p.name: (p.stat().st_size, etag_of(p)) for p in server.teacher_dir.glob("*.safetensors")}
    assert summary.bytes_fetched == server.stats.bytes_sent  # the summary counts what crossed the network
    assert summary.bytes_fetched < summary.teacher_bytes


def test_only_kept_rows_cross_the_network_within_1_1x_of_bytes_to_read_plus_headers(remote_root, server, tmp_path):
    # Half width, half depth: every other row of each kept tensor. The default bridges small gaps
    # only within a 10 % over-fetch budget; with no gap bridged exactly the kept rows are fetched.
    plan = slicer.plan(server.teacher_url, template=remote_root["template"], max_shard_size=SHARDS)
    headers = server.stats.bytes_sent
    index = (server.teacher_dir / "model.safetensors.index.json").stat().st_size
    assert headers == header_bytes(server.teacher_dir) + index  # the index and the headers, exactly
    # adaptive=False: the fixed rule's budget (the measured one may bridge more where requests cost more)
    for remote, exact in (({**FAST, "adaptive": False}, False), ({**FAST, "gap_bytes": 0}, True)):
        server.stats.reset()
        out = tmp_path / f"out-{exact}"
        summary = _shrink(server.teacher_url, out, remote_root["template"], remote=remote)
        data = server.stats.bytes_sent - headers  # the run reads the headers again, then the rows
        assert plan.bytes_to_read <= data <= 1.1 * plan.bytes_to_read, (remote, data, plan.bytes_to_read)
        if exact:
            assert data == plan.bytes_to_read  # gaps of 0 are never bridged
        assert plan.bytes_to_read < 0.3 * summary.teacher_bytes
        assert tree(out) == remote_root["local_tree"]


def test_bridging_gaps_trades_bytes_for_requests(remote_root, server, tmp_path):
    counts = {}
    for gap, overfetch in ((0, 0.1), (64 << 10, 0.1), (64 << 10, 1.0)):
        server.stats.reset()
        out = tmp_path / f"out{gap}-{overfetch}"
        _shrink(server.teacher_url, out, remote_root["template"], remote={**FAST, "gap_bytes": gap, "overfetch": overfetch})
        counts[gap, overfetch] = (server.stats.ranged_requests, server.stats.bytes_sent)
        assert tree(out) == remote_root["local_tree"]
    (few_requests, few_bytes), (budget_requests, budget_bytes), (bridged_requests, bridged) = counts.values()
    assert bridged_requests * 20 < few_requests  # thousands of rows -> a few dozen requests
    assert few_bytes < bridged <= 2.2 * few_bytes  # half the rows kept: at most the spans' bytes
    assert budget_requests < few_requests and few_bytes < budget_bytes <= 1.1 * few_bytes  # the budget in between


@pytest.mark.parametrize("chunk_bytes", [700])
def test_small_chunks_and_rows_split_across_chunks_still_match(remote_root, server, tmp_path, chunk_bytes):
    # 700 B is less than one teacher row of down_proj (1 kB): chunks split along dimension 1.
    _shrink(server.teacher_url, tmp_path / "out", remote_root["template"], chunk_bytes=chunk_bytes,
            remote={**FAST, "max_request_bytes": 30000, "ahead_bytes": 60000})
    assert tree(tmp_path / "out") == remote_root["local_tree"]


def test_a_depth_only_student_streams_whole_tensor_copies(remote_root, server, tmp_path):
    # Same width, half depth: every tensor is a plain copy, fetched in chunk-sized blocks.
    teacher = slicer.plan(remote_root["teacher"], template=remote_root["template"])
    from safetensors.torch import save_file
    import torch

    keep = {n: i.shape for n, i in teacher.teacher.tensors.items() if ".layers.2." not in n and ".layers.3." not in n}
    (tmp_path / "depth").mkdir()
    template = tmp_path / "depth" / "model.safetensors"
    save_file({n: torch.zeros(s, dtype=torch.bfloat16) for n, s in keep.items()}, str(template))
    local = slicer.shrink(remote_root["teacher"], tmp_path / "local", template=template, chunk_bytes=50_000)
    remote = slicer.shrink(server.teacher_url, tmp_path / "remote", template=template, chunk_bytes=50_000, remote=FAST)
    assert tree(tmp_path / "remote") == tree(tmp_path / "local")
    assert remote.bytes_read == local.bytes_read


# --------------------------------------------------------------------------- faults

@pytest.mark.parametrize("fault", [
    # skip=6: past the plan's 6 header reads (length, then JSON, of 3 shards): these hit tensor data
    Fault("drop", match=".safetensors", skip=6, times=3, after=300),  # connection dropped mid-range
    Fault("short", match=".safetensors", skip=7, times=2, after=100),  # a truncating proxy: short body
    Fault("status", match=".safetensors", skip=8, times=2, status=500),
    Fault("status", match=".safetensors", skip=6, times=1, status=503),
    Fault("delay", match=".safetensors", skip=9, times=2, seconds=0.6),  # slower than the read timeout
], ids=["drop", "truncated", "500", "503", "slow"])
def test_transient_faults_are_retried_and_the_student_is_unchanged(remote_root, server, tmp_path, fault):
    counter = Fault("status", match=fault.match, times=0)  # fires never: counts the requests of a clean run
    server.faults.append(counter)
    fixed = {**FAST, "adaptive": False}  # the same requests in both runs (the measured rule depends on timing)
    _shrink(server.teacher_url, tmp_path / "clean", remote_root["template"], remote=fixed)
    server.faults[:] = [fault]
    out = tmp_path / "out"
    _shrink(server.teacher_url, out, remote_root["template"], remote={**fixed, "timeout_s": 0.3})
    assert fault.fired == fault.times
    assert fault.seen == counter.seen + fault.times  # each failed request made again, whole
    assert tree(out) == remote_root["local_tree"]


def test_a_server_answering_less_than_asked_is_asked_for_the_rest(remote_root, server, tmp_path, monkeypatch):
    # RFC 9110 lets a server send a shorter 206 (some cap ranges): the rest is requested.
    import remote_server

    real = remote_server._Handler._file

    def capped(self, root, rel, head, extra):
        rng = self.headers.get("Range")
        if rng and rel.endswith(".safetensors"):
            a, b = map(int, rng.split("=")[1].split("-"))
            if b - a > 1000:
                del self.headers["Range"]
                self.headers["Range"] = f"bytes={a}-{a + 999}"
        return real(self, root, rel, head, extra)

    monkeypatch.setattr(remote_server._Handler, "_file", capped)
    _shrink(server.teacher_url, tmp_path / "out", remote_root["template"])
    assert tree(tmp_path / "out") == remote_root["local_tree"]


def test_persistent_5xx_gives_up_after_the_retries_and_leaves_nothing(remote_root, server, tmp_path):
    server.faults.append(Fault("status", match=".safetensors", skip=6, times=-1, status=502))
    out = tmp_path / "out"
    with pytest.raises(SlicerError) as err:
        _shrink(server.teacher_url, out, remote_root["template"])
    line = str(err.value)
    assert "HTTP 502" in line and "gave up after 4 attempts" in line and "/teacher/model-0000" in line, line
    assert "\n" not in line and not out.exists()


def test_a_file_changed_between_plan_and_read_is_one_line_and_leaves_nothing(remote_root, server, tmp_path, capfd):
    def rewrite(path):  # same size, new contents: a new ETag
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))

    server.faults.append(Fault("hook", match="model-00002", skip=2, times=1, hook=rewrite))  # at its first data read
    out = tmp_path / "out"
    code = cli.main(["shrink", server.teacher_url, str(out), "--template", str(remote_root["template"]), "--quiet",
                     "--max-shard-size", SHARDS])
    line = _one_error_line(capfd.readouterr().err)
    assert code == 2 and "model-00002-of-00003.safetensors: the remote file changed since the plan" in line, line
    assert not out.exists()


def test_a_file_of_another_size_is_refused_even_without_an_etag(remote_root, server, tmp_path, monkeypatch):
    # A server without ETags: the Content-Range total still tells a changed file.
    import remote_server

    monkeypatch.setattr(remote_server, "etag_of", lambda path: None)

    def grow(path):
        with open(path, "ab") as f:
            f.write(b"\0" * 8)

    server.faults.append(Fault("hook", match="model-00001", skip=2, times=1, hook=grow))
    with pytest.raises(SlicerError, match="changed since the plan"):
        _shrink(server.teacher_url, tmp_path / "out", remote_root["template"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["no teacher", "missing shard", "401", "403"])
def test_404_401_403_are_one_line(remote_root, server, tmp_path, capfd, case):
    url = server.teacher_url
    if case == "no teacher":
        url = server.url + "/nothing-here/"
        expect = "nothing-here: teacher not found"
    elif case == "missing shard":
        (server.teacher_dir / "model-00003-of-00003.safetensors").unlink()
        expect = "shard 'model-00003-of-00003.safetensors' named by the index is missing"
    elif case == "401":
        server.require_token = "sekrit"
        expect = "access denied (HTTP 401"
    else:
        server.forbid = "model-00002"
        expect = "model-00002-of-00003.safetensors: access denied (HTTP 403"
    out = tmp_path / "out"
    code = cli.main(["shrink", url, str(out), "--template", str(remote_root["template"]), "--quiet"])
    line = _one_error_line(capfd.readouterr().err)
    assert code == 2 and expect in line, line
    assert not out.exists()


# --------------------------------------------------------------------------- resume, cache

def test_resume_with_a_remote_teacher_fetches_only_the_unfinished_shards(remote_root, server, tmp_path, monkeypatch):
    from slicer.io import writer

    out = tmp_path / "out"
    real_done, real_abort = writer.OutputDir.record_done, writer.OutputDir.abort

    class Killed(BaseException):
        pass

    def die_after_first(self, shard):
        real_done(self, shard)
        raise Killed  # as a kill right after the first shard was recorded

    monkeypatch.setattr(writer.OutputDir, "record_done", die_after_first)
    monkeypatch.setattr(writer.OutputDir, "abort", lambda self: self._unlock())  # a kill cleans nothing up
    with pytest.raises(Killed):
        _shrink(server.teacher_url, out, remote_root["template"])
    monkeypatch.setattr(writer.OutputDir, "record_done", real_done)
    monkeypatch.setattr(writer.OutputDir, "abort", real_abort)
    assert sorted(json.loads((out / writer.STAGING / writer.DONE_NAME).read_text())) == ["model-00001-of-00003.safetensors"]

    full = slicer.plan(server.teacher_url, template=remote_root["template"], max_shard_size=SHARDS)
    headers = server.stats.bytes_sent
    server.stats.reset()
    summary = _shrink(server.teacher_url, out, remote_root["template"], resume=True)
    assert tree(out) == remote_root["local_tree"]
    assert server.stats.bytes_sent - headers < 0.9 * (headers + full.bytes_to_read)  # shard 1 not fetched again
    assert summary.bytes_fetched == server.stats.bytes_sent


def test_resume_refuses_a_remote_teacher_that_changed(remote_root, server, tmp_path, monkeypatch, capfd):
    from slicer.io import writer

    out = tmp_path / "out"
    monkeypatch.setattr(writer.OutputDir, "abort", lambda self: self._unlock())
    server.faults.append(Fault("status", match="model-00003", times=-1, status=404, skip=2))  # after its header

    with pytest.raises(SlicerError):
        _shrink(server.teacher_url, out, remote_root["template"])
    monkeypatch.undo()
    server.faults.clear()
    f = server.teacher_dir / "model-00001-of-00003.safetensors"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # same bytes, another ETag
    capfd.readouterr()
    code = cli.main(["shrink", server.teacher_url, str(out), "--template", str(remote_root["template"]), "--quiet",
                     "--max-shard-size", SHARDS, "--resume"])
    line = _one_error_line(capfd.readouterr().err)
    assert code == 2 and "cannot resume: the teacher's files changed since the interrupted run" in line, line


def test_cache_dir_makes_a_second_run_fetch_no_tensor_bytes(remote_root, server, tmp_path):
    cache = tmp_path / "cache"
    first = _shrink(server.teacher_url, tmp_path / "a", remote_root["template"], cache_dir=cache)
    assert first.bytes_fetched > 0 and any(cache.iterdir())
    server.stats.reset()
    second = _shrink(server.teacher_url, tmp_path / "b", remote_root["template"], cache_dir=cache)
    assert second.bytes_fetched == 0 == server.stats.bytes_sent  # HEAD requests only
    assert tree(tmp_path / "b") == tree(tmp_path / "a") == remote_root["local_tree"]


def test_without_cache_dir_nothing_but_out_is_written(remote_root, server, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    before = set(os.listdir(tmp_path))
    _shrink(server.teacher_url, tmp_path / "out", remote_root["template"])
    assert set(os.listdir(tmp_path)) - before == {"out"} and not os.listdir(tmp_path / "tmp")


# --------------------------------------------------------------------------- plan, verify, CLI, imports

def test_plan_of_a_remote_teacher_fetches_only_headers(remote_root, server, capfd):
    assert cli.main(["plan", server.teacher_url, "--template", str(remote_root["template"])]) == 0
    out = capfd.readouterr().out
    sent = server.stats.bytes_sent
    index = (server.teacher_dir / "model.safetensors.index.json").stat().st_size
    assert sent == index + header_bytes(server.teacher_dir)
    assert sent < 0.01 * sum(p.stat().st_size for p in server.teacher_dir.iterdir())
    assert "(remote;" in out and "fetched so far: headers" in out
    names = {"model.safetensors.index.json", *(p.name for p in server.teacher_dir.glob("*.safetensors"))}
    assert {path.rsplit("/", 1)[-1] for path in server.stats.by_path} <= names  # no config, no tokenizer


def test_verify_compares_values_with_a_remote_teacher(remote_root, server, tmp_path, capfd):
    out = tmp_path / "out"
    _shrink(server.teacher_url, out, remote_root["template"])
    assert cli.main(["verify", str(out), "--teacher", server.teacher_url, "--full"]) == 0, capfd.readouterr()
    assert "compared with the teacher (every element" in capfd.readouterr().out  # the verdict: stdout
    # A teacher value changed: verify finds it through range reads.
    index = json.loads((server.teacher_dir / "model.safetensors.index.json").read_text())
    shard = server.teacher_dir / index["weight_map"]["model.embed_tokens.weight"]
    data = bytearray(shard.read_bytes())
    n = int.from_bytes(data[:8], "little")
    begin = json.loads(data[8:8 + n])["model.embed_tokens.weight"]["data_offsets"][0]
    data[8 + n + begin + 1] ^= 0x40  # element [0, 0]: kept by every uniform selection
    shard.write_bytes(bytes(data))
    report = slicer.verify(out, teacher=server.teacher_url, full=True)
    assert not report.ok and "differs from the selection of teacher tensor" in report.problems[0]


def test_the_progress_bar_and_summary_show_bytes_fetched(remote_root, server, tmp_path, capfd):
    from slicer.cli.report import format_summary

    summary = _shrink(server.teacher_url, tmp_path / "out", remote_root["template"], progress=True)
    err = capfd.readouterr().err
    assert "fetched" in err and "tensors" in err
    assert "over the network, of the teacher's" in format_summary(summary)


def test_a_local_run_imports_no_remote_library(remote_root, tmp_path, subprocess_env):
    code = ("import sys; from slicer.cli import main; "
            f"rc = main(['shrink', {str(remote_root['teacher'])!r}, {str(tmp_path / 'out')!r}, '--template', "
            f"{str(remote_root['template'])!r}, '--quiet']); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('urllib3', 'huggingface_hub', 'fsspec', "
            "'s3fs', 'botocore', 'aiobotocore', 'aiohttp', 'httpx', 'httpx2', 'requests') or m.startswith('slicer.remote')); "
            "print(rc, bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert r.stdout.strip() == "0 []", r.stdout + r.stderr


def test_a_remote_cpu_run_imports_no_torch(remote_root, server, tmp_path, subprocess_env):
    """The remote reader hands the numpy gather its span buffers: no torch start-up (~2 s) either."""
    code = ("import sys; from slicer.cli import main; "
            f"rc = main(['shrink', {server.teacher_url!r}, {str(tmp_path / 'out')!r}, '--template', "
            f"{str(remote_root['template'])!r}, '--quiet', '--device', 'cpu', '--max-shard-size', {SHARDS!r}]); "
            "print(rc, sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert r.stdout.strip() == "0 []", r.stdout + r.stderr
    assert tree(tmp_path / "out") == remote_root["local_tree"]


def test_cli_remote_flags_tune_the_fetching_and_bad_values_are_one_line(remote_root, server, tmp_path, capfd):
    out = tmp_path / "out"
    args = ["shrink", server.teacher_url, str(out), "--template", str(remote_root["template"]), "--quiet",
            "--max-shard-size", SHARDS]
    assert cli.main([*args, "--coalesce-gap", "1MB", "--max-requests", "2"]) == 0, capfd.readouterr().err
    assert tree(out) == remote_root["local_tree"]
    before = server.stats.bytes_sent
    assert cli.main([*args, "--overwrite", "--max-overfetch", "2"]) == 0, capfd.readouterr().err
    assert tree(out) == remote_root["local_tree"]
    bridged = server.stats.bytes_sent - before
    plan = slicer.plan(server.teacher_url, template=remote_root["template"], max_shard_size=SHARDS)
    assert bridged > 1.1 * plan.bytes_to_read  # the flag reached the coalescing: gaps beyond the default budget bridged
    for flags, expect in ((["--coalesce-gap", "abc"], "--coalesce-gap 'abc' is not a size"),
                          (["--max-overfetch", "-1"], "--max-overfetch -1.0: must be 0 or more"),
                          (["--max-requests", "0"], "requests=0 (>= 1)"),
                          (["--revision", "main"], "--revision applies to hf:// teachers only")):
        capfd.readouterr()
        assert cli.main([*args, "--overwrite", *flags]) == 2
        line = _one_error_line(capfd.readouterr().err)
        assert expect in line, line
