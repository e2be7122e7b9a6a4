"""The config route: students of Hugging Face models from a config, whole attention heads, folders that load.

Teachers are tiny random models built from configs with transformers and saved with
``save_pretrained`` in several shards. Expected values are computed here from the
spec (docs: weight-selection.md, "Attention heads"), not with slicer's functions.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

import slicer  # noqa: E402
from slicer import SlicerError  # noqa: E402
from slicer.cli.report import format_plan  # noqa: E402

VOCAB = 100

# family -> (config class, teacher config, width+depth edits)
FAMILIES = {
    "llama": ("LlamaConfig", dict(architectures=["LlamaForCausalLM"], hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, head_dim=8,
                                  vocab_size=VOCAB, tie_word_embeddings=False),
              dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", dict(architectures=["Qwen2ForCausalLM"], hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2, vocab_size=VOCAB,
                                  tie_word_embeddings=False),
              dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)),
    "mistral": ("MistralConfig", dict(architectures=["MistralForCausalLM"], hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2, head_dim=8,
                                      vocab_size=VOCAB, tie_word_embeddings=False),
                dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)),
    "gpt2": ("GPT2Config", dict(architectures=["GPT2LMHeadModel"], n_embd=64, n_layer=3, n_head=4, n_positions=32,
                                vocab_size=VOCAB, bos_token_id=0, eos_token_id=0),
             dict(n_embd=32, n_layer=2, n_head=2)),
    "bert": ("BertConfig", dict(architectures=["BertForMaskedLM"], hidden_size=64, num_hidden_layers=3,
                                num_attention_heads=4, intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=32),
             dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)),
    "vit": ("ViTConfig", dict(architectures=["ViTForImageClassification"], hidden_size=64, num_hidden_layers=3,
                              num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8, num_labels=3),
            dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)),
}
DEPTH_KEY = {"gpt2": "n_layer"}


# --------------------------------------------------------------------------- teachers

def _build(folder: Path, config_name: str, config: dict, seed: int = 0) -> Path:
    cfg = getattr(transformers, config_name)(**config)
    cls = getattr(transformers, config["architectures"][0])
    torch.manual_seed(seed)
    model = cls(cfg)
    with torch.no_grad():  # tiny random inits can be all-zero (biases, norms): make every tensor distinct
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder, max_shard_size="100KB")
    (folder / "tokenizer.json").write_text('{"version": "1.0", "note": "not a real tokenizer"}\n')
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 32}\n')
    return folder


class Teachers:
    def __init__(self, root: Path):
        self.root = root
        self.made: dict[str, Path] = {}

    def get(self, fam: str, **overrides) -> Path:
        key = fam + "".join(f"-{k}={v}" for k, v in sorted(overrides.items()))
        if key not in self.made:
            config_name, config, _ = FAMILIES[fam]
            self.made[key] = _build(self.root / key, config_name, {**config, **overrides})
        return self.made[key]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> Teachers:
    return Teachers(tmp_path_factory.mktemp("hf-teachers"))


# --------------------------------------------------------------------------- helpers

def read_state(folder: Path) -> dict[str, torch.Tensor]:
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state |= load_file(f)
    return state


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def load(folder: Path):
    """The model from_pretrained loads from folder, and its loading info."""
    arch = json.loads((folder / "config.json").read_text())["architectures"][0]
    model, info = getattr(transformers, arch).from_pretrained(folder, output_loading_info=True)
    return model.eval(), info


def assert_clean_load(info: dict) -> None:
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(key), f"{key}: {info.get(key)}"


def example_inputs(fam: str) -> dict:
    gen = torch.Generator().manual_seed(1)
    if fam == "vit":
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=gen)}
    return {"input_ids": torch.randint(0, VOCAB, (2, 9), generator=gen)}


def layer_list(model) -> torch.nn.ModuleList:
    depth = model.config.num_hidden_layers
    lists = [m for _, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == depth]
    assert len(lists) == 1, f"cannot tell the layer list of {type(model).__name__}"
    return lists[0]


def layer_outputs(model, inputs: dict) -> tuple[list[torch.Tensor], tuple]:
    """The output of every layer (hooks) and output_hidden_states, in eval, fp32."""
    outs = []
    hooks = [layer.register_forward_hook(lambda m, a, out: outs.append((out[0] if isinstance(out, tuple) else out).detach()))
             for layer in layer_list(model)]
    try:
        with torch.no_grad():
            result = model(**inputs, output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    return outs, result.hidden_states


def uniform(t: int, s: int) -> list[int]:
    """The spec's uniform rule for the divisible sizes used here."""
    assert t % s == 0
    return list(range(0, t, t // s))


def attention_blocks(fam: str, state: dict, layer: int, cfg: dict) -> dict[str, torch.Tensor]:
    """q, k, v as [heads*head_dim, hidden] and o as [hidden, heads*head_dim], whatever the layout."""
    if fam == "gpt2":
        p = f"transformer.h.{layer}.attn."
        hidden = cfg["n_embd"]
        qkv = state[p + "c_attn.weight"].T  # Conv1D stores [in, out]
        return {"q": qkv[:hidden], "k": qkv[hidden:2 * hidden], "v": qkv[2 * hidden:], "o": state[p + "c_proj.weight"].T}
    names = {
        "bert": (f"bert.encoder.layer.{layer}.attention.", "self.query", "self.key", "self.value", "output.dense"),
        "vit": (f"vit.encoder.layer.{layer}.attention.", "attention.query", "attention.key", "attention.value", "output.dense"),
    }.get(fam, (f"model.layers.{layer}.self_attn.", "q_proj", "k_proj", "v_proj", "o_proj"))
    p, q, k, v, o = names
    return {r: state[p + n + ".weight"] for r, n in zip("qkvo", (q, k, v, o))}


def head_geometry(cfg: dict) -> tuple[int, int, int, int]:
    heads = cfg.get("num_attention_heads", cfg.get("n_head"))
    kv = cfg.get("num_key_value_heads", heads)
    hidden = cfg.get("hidden_size", cfg.get("n_embd"))
    return heads, kv, cfg.get("head_dim") or hidden // heads, hidden


def shrink(teacher: Path, out: Path, **kwargs):
    return slicer.shrink(teacher, out, device="cpu", backend="torch", **kwargs)


# --------------------------------------------------------------------------- the teacher's own config

@pytest.mark.parametrize("fam", FAMILIES)
def test_teachers_own_config_gives_back_the_teacher_bit_for_bit(teachers, tmp_path, fam):
    teacher = teachers.get(fam)
    out = tmp_path / "out"
    summary = shrink(teacher, out, student_config=teacher / "config.json", max_shard_size="100KB")
    assert summary.shards > 1
    got, want = read_state(out), read_state(teacher)
    assert sorted(got) == sorted(want)
    for name in want:
        assert torch.equal(bits(got[name]), bits(want[name])), name
    assert json.loads((out / "config.json").read_text()) == json.loads((teacher / "config.json").read_text())
    # non-weight files travel with the student; the teacher's weights and index are never copied over
    assert (out / "tokenizer.json").read_bytes() == (teacher / "tokenizer.json").read_bytes()
    assert (out / "tokenizer_config.json").is_file()
    if (teacher / "generation_config.json").is_file():
        assert (out / "generation_config.json").read_bytes() == (teacher / "generation_config.json").read_bytes()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(want)


# --------------------------------------------------------------------------- depth only

@pytest.mark.parametrize("fam", FAMILIES)
def test_depth_only_student_reproduces_the_teachers_first_layers_exactly(teachers, tmp_path, fam):
    teacher = teachers.get(fam)
    n = 2
    out = tmp_path / "out"
    shrink(teacher, out, config_set={DEPTH_KEY.get(fam, "num_hidden_layers"): n})
    t_model, _ = load(teacher)
    s_model, info = load(out)
    assert_clean_load(info)
    assert s_model.config.num_hidden_layers == n
    inputs = example_inputs(fam)
    t_layers, t_hidden = layer_outputs(t_model, inputs)
    s_layers, s_hidden = layer_outputs(s_model, inputs)
    assert len(s_layers) == n
    for i in range(n):
        assert torch.equal(s_layers[i], t_layers[i]), f"layer {i} output differs"
    # output_hidden_states: the inputs of the first n layers (the last entry may carry a final norm)
    for i in range(n):
        assert torch.equal(s_hidden[i], t_hidden[i]), f"hidden state {i} differs"


# --------------------------------------------------------------------------- width and depth

@pytest.mark.parametrize("fam", FAMILIES)
def test_width_and_depth_student_loads_runs_and_keeps_whole_heads(teachers, tmp_path, fam):
    teacher = teachers.get(fam)
    _, t_cfg, edits = FAMILIES[fam]
    out = tmp_path / "out"
    shrink(teacher, out, config_set=edits)
    model, info = load(out)
    assert_clean_load(info)
    with torch.no_grad():
        logits = model(**example_inputs(fam)).logits
    assert torch.isfinite(logits).all()

    s_cfg = json.loads((out / "config.json").read_text())
    t_state, s_state = read_state(teacher), read_state(out)
    t_heads, t_kv, t_dim, t_hidden = head_geometry(t_cfg)
    s_heads, s_kv, s_dim, s_hidden = head_geometry(s_cfg)
    assert s_dim == t_dim  # head size kept: whole heads
    keep_kv = uniform(t_kv, s_kv)
    within = uniform(t_heads // t_kv, s_heads // s_kv)
    q_heads = [k * (t_heads // t_kv) + q for k in keep_kv for q in within]
    cols = uniform(t_hidden, s_hidden)
    d = t_dim
    for layer in range(2):
        t, s = attention_blocks(fam, t_state, layer, t_cfg), attention_blocks(fam, s_state, layer, s_cfg)
        for j, h in enumerate(q_heads):
            assert torch.equal(s["q"][j * d:(j + 1) * d], t["q"][h * d:(h + 1) * d][:, cols]), f"layer {layer} q head {j}"
            assert torch.equal(s["o"][:, j * d:(j + 1) * d], t["o"][cols][:, h * d:(h + 1) * d]), f"layer {layer} o head {j}"
        kv_heads = keep_kv if t_kv != t_heads else q_heads
        for j, h in enumerate(kv_heads):
            for r in "kv":
                assert torch.equal(s[r][j * d:(j + 1) * d], t[r][h * d:(h + 1) * d][:, cols]), f"layer {layer} {r} head {j}"
    manifest = json.loads((out / "slicer_manifest.json").read_text())
    assert manifest["options"]["attention"] == "heads"
    assert any(a["kind"] == "q-heads" and a["parts"].endswith(":kv-heads * " + name.rsplit(":", 1)[0] + ":group")
               for name, a in manifest["axes"].items())
    assert manifest["student"]["config_changes"]


def test_qwen2_attention_biases_follow_the_kept_heads(teachers, tmp_path):
    teacher = teachers.get("qwen2")
    out = tmp_path / "out"
    shrink(teacher, out, config_set=FAMILIES["qwen2"][2])
    t_state, s_state = read_state(teacher), read_state(out)
    # teacher 8 heads / 2 kv (groups of 4) -> 2 heads / 1 kv: K = [0], Q = uniform(4, 2) = [0, 2]
    d = 8
    for j, h in enumerate([0, 2]):
        assert torch.equal(s_state["model.layers.0.self_attn.q_proj.bias"][j * d:(j + 1) * d],
                           t_state["model.layers.0.self_attn.q_proj.bias"][h * d:(h + 1) * d])
    assert torch.equal(s_state["model.layers.0.self_attn.k_proj.bias"], t_state["model.layers.0.self_attn.k_proj.bias"][:d])
    assert torch.equal(s_state["model.layers.0.self_attn.v_proj.bias"], t_state["model.layers.0.self_attn.v_proj.bias"][:d])


def test_gpt2_fused_c_attn_bias_keeps_q_k_v_blocks_of_whole_heads(teachers, tmp_path):
    teacher = teachers.get("gpt2")
    out = tmp_path / "out"
    shrink(teacher, out, config_set=FAMILIES["gpt2"][2])
    t_bias = read_state(teacher)["transformer.h.1.attn.c_attn.bias"]
    s_bias = read_state(out)["transformer.h.1.attn.c_attn.bias"]
    d = 16  # teacher 4 heads of 16 -> 2 heads of 16: heads [0, 2] in each of the q, k, v blocks
    want = torch.cat([t_bias[block * 64 + h * d: block * 64 + (h + 1) * d] for block in range(3) for h in (0, 2)])
    assert torch.equal(s_bias, want)


def test_smaller_rotary_head_keeps_rotary_pairs_together(teachers, tmp_path):
    teacher = teachers.get("llama")
    out = tmp_path / "out"
    # head size 8 -> 4 with consecutive selection: P = [0, 1], dims [0, 1, 4, 5] (flat would take [0, 1, 2, 3])
    shrink(teacher, out, method="consecutive",
           config_set=dict(hidden_size=32, num_attention_heads=8, num_key_value_heads=4, head_dim=4, num_hidden_layers=2))
    model, info = load(out)
    assert_clean_load(info)
    t_q = read_state(teacher)["model.layers.1.self_attn.q_proj.weight"]
    s_q = read_state(out)["model.layers.1.self_attn.q_proj.weight"]
    rows = [h * 8 + i for h in range(8) for i in (0, 1, 4, 5)]
    assert torch.equal(s_q, t_q[rows][:, :32])
    manifest = json.loads((out / "slicer_manifest.json").read_text())
    head_dim = manifest["axes"]["model.layers.1.self_attn:head-dim"]
    assert head_dim["parts"] == "2 * model.layers.1.self_attn:rotary-pairs"
    assert manifest["index_sets"][manifest["axes"]["model.layers.1.self_attn:rotary-pairs"]["index"]]["s"] == 2


def test_flat_attention_selects_projection_rows_like_any_other_axis(teachers, tmp_path):
    teacher = teachers.get("mistral")
    out = tmp_path / "out"
    shrink(teacher, out, attention="flat", config_set=FAMILIES["mistral"][2])
    t_q = read_state(teacher)["model.layers.0.self_attn.q_proj.weight"]
    s_q = read_state(out)["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(s_q, t_q[uniform(64, 32)][:, uniform(64, 32)])
    manifest = json.loads((out / "slicer_manifest.json").read_text())
    assert not any(a["kind"] in ("q-heads", "kv-heads") for a in manifest["axes"].values())
    assert manifest["tensors"]["model.layers.0.self_attn.q_proj.weight"]["axes"] == ["64->32", "hidden"]


def test_per_layer_config_lists_follow_the_selected_layers(teachers, tmp_path):
    teacher = teachers.get("qwen2")
    the_plan = slicer.plan(teacher, config_set={"num_hidden_layers": 2}, layer_selection="uniform")
    assert the_plan.layer_maps == {"model.layers": [0, 2]}
    out = tmp_path / "out"
    shrink(teacher, out, config_set={"num_hidden_layers": 2}, layer_selection="uniform")
    assert json.loads((out / "config.json").read_text())["layer_types"] == ["full_attention"] * 2
    _, info = load(out)
    assert_clean_load(info)


def test_cast_output_dtype_is_written_into_the_config(teachers, tmp_path):
    teacher = teachers.get("llama")
    out = tmp_path / "out"
    shrink(teacher, out, config_set={"num_hidden_layers": 1}, dtype="bf16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    model, info = load(out)
    assert_clean_load(info)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16


# --------------------------------------------------------------------------- tied embeddings

def test_tied_teacher_gives_an_untied_student_its_lm_head_from_the_embeddings(teachers, tmp_path):
    teacher = teachers.get("llama", tie_word_embeddings=True)
    assert "lm_head.weight" not in read_state(teacher)
    out = tmp_path / "out"
    shrink(teacher, out, config_set={"tie_word_embeddings": False, "hidden_size": 32, "num_attention_heads": 4,
                                     "num_key_value_heads": 2})
    state = read_state(out)
    assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    manifest = json.loads((out / "slicer_manifest.json").read_text())
    assert manifest["tensors"]["lm_head.weight"]["source"] == "model.embed_tokens.weight"
    model, info = load(out)
    assert_clean_load(info)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


def test_tied_student_has_no_lm_head_in_its_files(teachers, tmp_path):
    teacher = teachers.get("llama")
    assert "lm_head.weight" in read_state(teacher)
    out = tmp_path / "out"
    shrink(teacher, out, config_set={"tie_word_embeddings": True, "num_hidden_layers": 2})
    assert "lm_head.weight" not in read_state(out)
    model, info = load(out)
    assert_clean_load(info)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_tied_bert_teacher_gives_an_untied_student_its_decoder(teachers, tmp_path):
    teacher = teachers.get("bert")
    out = tmp_path / "out"
    shrink(teacher, out, config_set={"tie_word_embeddings": False, "num_hidden_layers": 1})
    state = read_state(out)
    assert torch.equal(state["cls.predictions.decoder.weight"], state["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(state["cls.predictions.decoder.bias"], state["cls.predictions.bias"])
    _, info = load(out)
    assert_clean_load(info)


# --------------------------------------------------------------------------- plan, CLI

def test_plan_shows_the_config_changes(teachers):
    the_plan = slicer.plan(teachers.get("gpt2"), config_set={"hidden_size": 32, "n_head": 2, "n_layer": 2})
    assert the_plan.student["config_changes"] == {"n_embd": [64, 32], "n_head": [4, 2], "n_layer": [3, 2]}
    text = format_plan(the_plan)
    assert "n_embd: 64 -> 32" in text and "attention=heads" in text


def test_cli_shrink_with_set_exits_0_and_writes_a_loadable_student(teachers, tmp_path, subprocess_env):
    teacher = teachers.get("llama")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "slicer", "shrink", str(teacher), str(out), "--quiet",
                           "--set", "hidden_size=32", "--set", "num_attention_heads=4", "--set", "num_key_value_heads=2",
                           "--set", "num_hidden_layers=2", "--set", "intermediate_size=64"],
                          capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    _, info = load(out)
    assert_clean_load(info)


def test_cli_refuses_an_impossible_config_in_one_line(teachers, tmp_path, subprocess_env):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "slicer", "shrink", str(teachers.get("bert")), str(out),
                           "--set", "num_attention_heads=5"], capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("slicer: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "num_attention_heads" in proc.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("fam, edits, words", [
    ("bert", {"num_attention_heads": 5}, ["config.json", "num_attention_heads=5", "multiple"]),
    ("vit", {"num_attention_heads": 3}, ["config.json", "num_attention_heads=3"]),
    ("llama", {"num_attention_heads": 6}, ["num_attention_heads=6", "hidden size (64) is not a multiple"]),
    ("llama", {"num_attention_heads": 4, "num_key_value_heads": 3}, ["num_key_value_heads"]),
    ("llama", {"hidden_size": 128}, ["larger than", "hidden_size 64 -> 128"]),
    ("llama", {"num_hidden_layers": 6}, ["deeper", "num_hidden_layers=6"]),
    ("llama", {"architectures": ["NoSuchModelForCausalLM"]}, ["architectures", "NoSuchModelForCausalLM"]),
    ("llama", {"hiden_size": 32}, ["hiden_size", "no such key"]),
    ("qwen2", {"num_attention_heads": 2, "num_key_value_heads": 1}, ["head size 32 exceeds the teacher's 8"]),
    ("mistral", {"num_key_value_heads": 1}, ["8 query heads per kv head, the teacher 4", "--attention flat"]),
    ("llama", {"vocab_size": 50}, ["vocabulary is 50 tokens", "tokenizer", "keep vocab_size"]),
])
def test_impossible_configs_are_refused_before_anything_is_written(teachers, tmp_path, fam, edits, words):
    out = tmp_path / "out"
    with pytest.raises(SlicerError) as e:
        shrink(teachers.get(fam), out, config_set=edits)
    message = str(e.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message
    assert not out.exists()


def test_missing_transformers_says_how_to_install_it(teachers, tmp_path, monkeypatch):
    teacher = teachers.get("llama")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(SlicerError, match=r"pip install 'weight-slicer\[hf\]'"):
        shrink(teacher, tmp_path / "out", config_set={"num_hidden_layers": 2})
    assert not (tmp_path / "out").exists()


def test_teacher_without_config_needs_a_student_config(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2, 2)}, tmp_path / "model.safetensors")
    with pytest.raises(SlicerError, match="no config.json"):
        slicer.plan(tmp_path, config_set={"num_hidden_layers": 2})


# --------------------------------------------------------------------------- layouts without a model here

def test_gpt_neox_interleaved_qkv_and_partial_rotary_keep_whole_heads(tmp_path):
    # rotary on 4 of 16 dims per head: pairs (0, 2), (1, 3); dims 4..15 are not rotated
    config = dict(architectures=["GPTNeoXForCausalLM"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, vocab_size=VOCAB, rotary_pct=0.25, max_position_embeddings=32)
    teacher = _build(tmp_path / "teacher", "GPTNeoXConfig", config)
    out = tmp_path / "out"
    shrink(teacher, out, method="consecutive", config_set=dict(hidden_size=32, intermediate_size=64))
    model, info = load(out)
    assert_clean_load(info)
    with torch.no_grad():
        assert torch.isfinite(model(**example_inputs("gpt_neox")).logits).all()
    # head size 16 -> 8: rotary pair 0 (dims 0 and 2), then unrotated dims 4..9; every head keeps its q, k, v
    dims = [0, 2, 4, 5, 6, 7, 8, 9]
    rows = [h * 48 + part * 16 + i for h in range(4) for part in range(3) for i in dims]
    t_w = read_state(teacher)["gpt_neox.layers.1.attention.query_key_value.weight"]
    s_w = read_state(out)["gpt_neox.layers.1.attention.query_key_value.weight"]
    assert torch.equal(s_w, t_w[rows][:, :32])
    t_o = read_state(teacher)["gpt_neox.layers.1.attention.dense.weight"]
    s_o = read_state(out)["gpt_neox.layers.1.attention.dense.weight"]
    assert torch.equal(s_o, t_o[:32][:, [h * 16 + i for h in range(4) for i in dims]])


def test_from_config_spec_has_no_folder_and_copies_no_weights(teachers, tmp_path):
    import shutil

    from slicer.hf.route import from_config

    teacher = tmp_path / "teacher"
    shutil.copytree(teachers.get("gpt2"), teacher)
    for name in ("pytorch_model.bin", "model.safetensors.index.json.bak.safetensors", "tf_model.h5", "README.md"):
        (teacher / name).write_bytes(b"weights or the teacher's card")
    (teacher / "merges.txt").write_text("#version: 0.2\n")
    spec = from_config(teacher, None, {"n_layer": 1}, attention="heads")
    assert spec.folder is None
    assert sorted(spec.files) == ["config.json", "generation_config.json", "merges.txt", "tokenizer.json",
                                  "tokenizer_config.json"]
    assert json.loads(spec.files["config.json"])["n_layer"] == 1
    assert spec.origin["config_changes"] == {"n_layer": [3, 1]}
    names = {t.name for t in spec.tensors}
    assert "lm_head.weight" not in names and "transformer.h.0.attn.c_attn.weight" in names
