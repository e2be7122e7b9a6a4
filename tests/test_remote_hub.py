"""hf:// teachers: through huggingface_hub against a local stand-in of the Hub, and from its offline cache.

The stand-in (RangeServer with ``hub=``, tests/remote_server.py) answers the two
endpoints huggingface_hub reads a model with: the model info (files, sizes, LFS
hashes, commit) and ``resolve`` (redirecting weights to a CDN path, as the Hub does).
In-process tests point huggingface_hub at it as ``HF_ENDPOINT`` does when it is set
before the import (its endpoint constants); one subprocess sets ``HF_ENDPOINT`` itself.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

import slicer  # noqa: E402
from slicer import cli  # noqa: E402
from remote_fixtures import header_bytes, tree  # noqa: E402
from remote_server import RangeServer, Repo  # noqa: E402

COMMIT = "c0ffee" + "0" * 34
SET = ["--set", "hidden_size=32", "--set", "intermediate_size=64", "--set", "num_hidden_layers=2",
       "--set", "num_attention_heads=4", "--set", "num_key_value_heads=2"]
EDITS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny Llama saved by save_pretrained in several shards, with tokenizer and generation files."""
    folder = tmp_path_factory.mktemp("hub") / "llama"
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=8,
                                   num_key_value_heads=4, head_dim=8, vocab_size=100, tie_word_embeddings=False)
    cfg.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder, max_shard_size="100KB")
    (folder / "tokenizer.json").write_text('{"version": "1.0", "note": "not a real tokenizer"}\n' + " " * 50_000)
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 32}\n')
    local = folder.parent / "local-student"
    slicer.shrink(folder, local, config_set=EDITS)
    return {"folder": folder, "local": local}


@pytest.fixture
def hub(remote_root, hub_at):
    """The stand-in Hub, with huggingface_hub pointed at it and no token or offline mode from the machine."""
    repos = {"org/small": Repo(remote_root["teacher"]),
             "org/private": Repo(remote_root["teacher"], token="sekrit"),
             "org/gated": Repo(remote_root["teacher"], gated=True)}
    with RangeServer(hub=repos) as srv:
        yield hub_at(srv)


@pytest.fixture
def llama_hub(llama, hub):
    """The stand-in Hub serving the tiny Llama as org/llama too."""
    hub.hub["org/llama"] = Repo(llama["folder"], commit=COMMIT)
    return hub


def test_hf_config_route_writes_what_the_local_route_writes(llama, llama_hub, tmp_path):
    hub = llama_hub
    out = tmp_path / "out"
    summary = slicer.shrink("hf://org/llama", out, config_set=EDITS, remote={"backoff_s": 0.01})
    assert tree(out) == tree(llama["local"])  # shards, config.json, tokenizer and generation files
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"} <= set(tree(out))
    teacher = json.loads((out / "slicer_manifest.json").read_text())["teacher"]
    assert teacher["path"] == "hf://org/llama" and teacher["repo"] == "org/llama" and teacher["revision"] == COMMIT
    assert teacher["endpoint"] == hub.url and all(len(f["etag"]) == 64 for f in teacher["files"])
    assert summary.bytes_fetched == hub.stats.bytes_sent - sum(v for k, v in hub.stats.by_path.items() if "/api/" in k)


def test_hf_template_route_and_a_named_revision(remote_root, hub, tmp_path):
    out = tmp_path / "out"
    slicer.shrink("hf://org/small@main", out, template=remote_root["template"], max_shard_size="300KB")
    assert tree(out) == remote_root["local_tree"]
    assert json.loads((out / "slicer_manifest.json").read_text())["teacher"]["revision"] == Repo(None).commit


def test_hf_plan_fetches_headers_and_the_config_but_no_tokenizer(llama, llama_hub, capfd):
    hub = llama_hub
    assert cli.main(["plan", "hf://org/llama", *SET]) == 0
    assert "(remote;" in capfd.readouterr().out
    fetched = {k.rsplit("/", 1)[-1].split("?")[0]: v for k, v in hub.stats.by_path.items()}
    assert "tokenizer.json" not in fetched and "config.json" in fetched
    data = sum(v for k, v in fetched.items() if k.endswith(".safetensors"))
    assert data == header_bytes(llama["folder"])  # of the weights, the headers' bytes and nothing else
    shards = {p.name for p in llama["folder"].glob("*.safetensors")}
    assert set(fetched) == {"llama", "model.safetensors.index.json", "config.json", *shards}  # "llama": the model info


def test_hf_verify_uses_the_revision_the_manifest_records(llama, llama_hub, tmp_path, capfd):
    hub = llama_hub
    out = tmp_path / "out"
    slicer.shrink("hf://org/llama", out, config_set=EDITS)
    hub.stats.reset()
    capfd.readouterr()
    assert cli.main(["verify", str(out), "--teacher", "hf://org/llama", "--full"]) == 0, capfd.readouterr().err
    assert f"/revision/{COMMIT}" in " ".join(hub.stats.by_path)  # asked for the recorded commit, not main


@pytest.mark.parametrize("url, expect", [
    ("hf://org/private", "repository not found, or private without a token"),
    ("hf://org/gated", "the repository is gated"),
    ("hf://org/none", "repository not found"),
    ("hf://org/small@v9", "revision 'v9' not found in org/small"),
    ("hf://org/small/sub", "teacher folder has no model.safetensors.index.json"),
])
def test_hf_errors_are_one_line(remote_root, hub, tmp_path, capfd, url, expect):
    code = cli.main(["shrink", url, str(tmp_path / "out"), "--template", str(remote_root["template"]), "--quiet"])
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("slicer: error: hf://org/") and expect in err, err
    assert not (tmp_path / "out").exists()


def test_hf_token_from_the_environment_opens_a_private_repository(remote_root, hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "sekrit")
    slicer.shrink("hf://org/private", tmp_path / "out", template=remote_root["template"], max_shard_size="300KB")
    assert tree(tmp_path / "out") == remote_root["local_tree"]


def test_hf_offline_mode_reads_the_huggingface_cache_and_sends_nothing(llama, llama_hub, tmp_path, monkeypatch):
    hub = llama_hub
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    repo = cache / "models--org--llama"
    shutil.copytree(llama["folder"], repo / "snapshots" / COMMIT)  # the cache layout snapshot_download leaves
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.stats.reset()
    out = tmp_path / "out"
    slicer.shrink("hf://org/llama", out, config_set=EDITS)
    assert tree(out) == tree(llama["local"])
    assert hub.stats.requests == 0


def test_hf_endpoint_from_the_environment_in_a_fresh_process(remote_root, hub, subprocess_env, tmp_path):
    env = dict(subprocess_env, HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="0")
    env.pop("HF_TOKEN", None)
    hub.stats.reset()
    r = subprocess.run([sys.executable, "-m", "slicer", "plan", "hf://org/small", "--template",
                        str(remote_root["template"]), "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    teacher = json.loads(r.stdout)["teacher"]
    assert teacher["revision"] == Repo(None).commit and teacher["endpoint"] == hub.url
    weights = sum(v for k, v in hub.stats.by_path.items() if k.endswith(".safetensors"))
    assert weights == header_bytes(remote_root["teacher"])  # headers only


def test_hf_offline_mode_without_the_repository_cached_is_one_line(remote_root, hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(slicer.SlicerError, match="offline mode .* not in the local cache"):
        slicer.plan("hf://org/small", template=remote_root["template"])
    assert hub.stats.requests == 0
