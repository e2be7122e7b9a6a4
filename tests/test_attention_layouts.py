"""Attention layouts, beyond what the consistency checker proves on its own.

- the exact rows a student keeps for a given geometry, written here from the modeling code
  (Falcon's per-group [q..., k, v], Phi-3's [q | k | v], rotary pairs of both conventions);
- StableLM's per-head norm modules are whole kv groups; MiniMax's lightning attention (each
  head its own key and value) keeps any heads, its softmax layers whole kv groups;
- how fused layouts and rotary conventions are read off transformers' code;
- what is refused, with one line that names the tensor or the config and says what to do.
"""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import families  # noqa: E402,F401 - first: it registers the family groups
import slicer  # noqa: E402
from consistency import Codebook, Spec, check, coded_teacher, decode, read_folder  # noqa: E402
from families import FAMILIES, Family, build, example_inputs  # noqa: E402
from helpers import ref_uniform  # noqa: E402

from slicer.errors import SlicerError  # noqa: E402


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    made = {}

    def get(fam: str):
        if fam not in made:
            made[fam] = build(root / fam, FAMILIES[fam], coded=True)
        return made[fam]

    return get


def _kept(out, teacher, name: str, dim: int = 0) -> list[int]:
    """The teacher indices student tensor ``name`` keeps along ``dim``, decoded from the values."""
    book = Codebook(read_folder(teacher))
    return decode(name, read_folder(out)[name], book).index[dim]


def _shrink(teacher, out, **kw):
    return slicer.shrink(str(teacher), str(out), progress=False, **kw)


# --------------------------------------------------------------------------- exact rows, from the spec

def _falcon_grouped() -> list[int]:
    # teacher: 2 kv groups of (4 query heads, k, v), head size 8; student: 2 query heads per group
    slots = ref_uniform(4, 2) + [4, 5]
    return [j * 6 * 8 + slot * 8 + d for j in ref_uniform(2, 2) for slot in slots for d in range(8)]


def _falcon_multi_query() -> list[int]:
    # 8 query heads, one key, one value; student 4 query heads
    return [h * 8 + d for h in ref_uniform(8, 4) for d in range(8)] + [64 + d for d in range(8)] + \
        [72 + d for d in range(8)]


def _falcon_per_head() -> list[int]:
    # per head [q, k, v]; student 4 of 8 heads
    return [h * 24 + slot * 8 + d for h in ref_uniform(8, 4) for slot in range(3) for d in range(8)]


def _phi3() -> list[int]:
    # 8 query heads over 4 kv heads, head size 8; student 4 over 2: q head = kv * 2 + member of its group
    kv, group = ref_uniform(4, 2), ref_uniform(2, 2)
    q = [j * 2 + g for j in kv for g in group]
    return [h * 8 + d for h in q for d in range(8)] + [64 + j * 8 + d for j in kv for d in range(8)] + \
        [96 + j * 8 + d for j in kv for d in range(8)]


def _interleaved_dims(pairs_t: int, pairs_s: int, unrotated_t: int, unrotated_s: int) -> list[int]:
    """A head's kept dims with rotary pairs (2i, 2i + 1), then the unrotated dims."""
    return [2 * p + k for p in ref_uniform(pairs_t, pairs_s) for k in (0, 1)] + \
        [2 * pairs_t + u for u in ref_uniform(unrotated_t, unrotated_s)]


def _halves_dims(pairs_t: int, pairs_s: int, unrotated_t: int, unrotated_s: int) -> list[int]:
    """A head's kept dims with rotary pairs (i, i + r/2), then the unrotated dims."""
    return [half * pairs_t + p for half in (0, 1) for p in ref_uniform(pairs_t, pairs_s)] + \
        [2 * pairs_t + u for u in ref_uniform(unrotated_t, unrotated_s)]


def _gptj_head_dim() -> list[int]:
    # head size 16, rotary_dim 8 -> 8, 4: interleaved pairs; every head kept
    return [h * 16 + d for h in range(4) for d in _interleaved_dims(4, 2, 8, 4)]


def _neox_head_dim() -> list[int]:
    # head size 16 -> 8, rotary 4 -> 2 (pairs (i, i + 2)), per head [q, k, v]
    return [h * 48 + slot * 16 + d for h in range(4) for slot in range(3) for d in _halves_dims(2, 1, 12, 6)]


def _phi3_head_dim() -> list[int]:
    # head size 8 -> 4, partial_rotary_factor 0.5: 2 pairs (i, i + 2) -> 1, 4 unrotated -> 2
    dims = _halves_dims(2, 1, 4, 2)
    return [h * 8 + d for h in range(8) for d in dims] + [64 + j * 8 + d for j in range(4) for d in dims] + \
        [96 + j * 8 + d for j in range(4) for d in dims]


EXACT = {
    "falcon_new_arch": ("transformer.h.0.self_attention.query_key_value.weight", 0, _falcon_grouped),
    "falcon_multi_query": ("transformer.h.0.self_attention.query_key_value.weight", 0, _falcon_multi_query),
    "falcon_per_head": ("transformer.h.0.self_attention.query_key_value.weight", 0, _falcon_per_head),
    "phi3": ("model.layers.0.self_attn.qkv_proj.weight", 0, _phi3),
    "phi3_head_dim": ("model.layers.0.self_attn.qkv_proj.weight", 0, _phi3_head_dim),
    "gptj_head_dim": ("transformer.h.0.attn.k_proj.weight", 0, _gptj_head_dim),
    "gpt_neox_head_dim": ("gpt_neox.layers.0.attention.query_key_value.weight", 0, _neox_head_dim),
    # Cohere's q_norm is [heads, head size]; its rotation is interleaved over the whole head
    "cohere_head_dim": ("model.layers.0.self_attn.q_norm.weight", 1, lambda: _interleaved_dims(4, 2, 0, 0)),
}


@pytest.mark.parametrize("fam", sorted(EXACT))
def test_the_rows_kept_are_the_ones_the_modeling_code_says(coded, tmp_path, fam):
    name, dim, expected = EXACT[fam]
    teacher = coded(fam)
    _shrink(teacher, tmp_path / "out", config_set=FAMILIES[fam].edits)
    assert _kept(tmp_path / "out", teacher, name, dim) == expected()


def test_stablelm_per_head_norms_are_the_query_heads_of_the_kept_kv_groups(coded, tmp_path):
    fam = FAMILIES["stablelm"]
    teacher = coded("stablelm")
    _shrink(teacher, tmp_path / "out", config_set=fam.edits, method="random", layer_selection="uniform")
    report = check(tmp_path / "out", teacher, fam.spec)
    assert not report.problems, report.problems[:5]
    teacher_group, student_group = 8 // 4, 4 // 2
    layers = sorted({k.split(".")[0] for k in report.members if k.endswith(".qh")})
    assert len(layers) == 2, layers
    for layer in layers:
        qh, kv = report.members[f"{layer}.qh"], report.members[f"{layer}.kv"]
        assert len(qh) == 4 and len(kv) == 2
        # student query head j reads student kv head j // 2: its teacher head must read that teacher kv head
        assert [h // teacher_group for h in qh] == [kv[j // student_group] for j in range(len(qh))], (qh, kv)


# --------------------------------------------------------------------------- MiniMax's lightning attention

MINIMAX = dict(architectures=["MiniMaxForCausalLM"], hidden_size=64, intermediate_size=32, num_hidden_layers=4,
               num_attention_heads=8, num_key_value_heads=4, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
               vocab_size=96, layer_types=["linear_attention", "full_attention"] * 2, block_size=16,
               max_position_embeddings=64)
MINIMAX_HEADS = dict(num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                     layer_types=["linear_attention", "full_attention"])
_LIGHT = r"model\.layers\.(\d+)\.self_attn\."
MINIMAX_SPEC = Spec([  # the attention tensors of both kinds of layer (hidden and experts are kept)
    (_LIGHT + r"qkv_proj\.weight", ("L{1}.h * 3 * L{1}.hd", "*")),  # view(heads, 3 * head_dim): [q, k, v]
    (_LIGHT + r"output_gate\.weight", ("L{1}.h * L{1}.hd", "*")),  # sigmoid(output_gate(x)) * heads' output
    (_LIGHT + r"norm\.weight", ("L{1}.h * L{1}.hd",)),  # RMSNorm over heads * head_dim of the output
    (_LIGHT + r"out_proj\.weight", ("*", "L{1}.h * L{1}.hd")),
    (_LIGHT + r"(?:slope_rate|query_decay|key_decay)", ("L{1}.h", "*", "*")),
    (_LIGHT + r"diagonal_decay", ("*", "L{1}.h", "*", "*")),
    (_LIGHT + r"q_proj\.weight", ("L{1}.kv * L{1}.grp * L{1}.hd", "*")),
    (_LIGHT + r"[kv]_proj\.weight", ("L{1}.kv * L{1}.hd", "*")),
    (_LIGHT + r"o_proj\.weight", ("*", "L{1}.kv * L{1}.grp * L{1}.hd")),
], dict(h=8, kv=4, grp=2, hd=8))


def _minimax_teacher(folder, coded: bool):
    model = transformers.MiniMaxForCausalLM(transformers.MiniMaxConfig(**MINIMAX))
    if coded:  # parameters and the persistent decay buffers, every element its own code
        coded_teacher(model)
        base = 1 + sum(p.numel() for p in model.parameters())
        persistent = set(model.state_dict())
        with torch.no_grad():
            for name, buf in model.named_buffers():
                if name in persistent and buf.is_floating_point():
                    buf.copy_(torch.arange(base, base + buf.numel(), dtype=torch.float64).view(buf.shape))
                    base += buf.numel()
    model.save_pretrained(folder)
    return folder


def test_minimax_lightning_heads_own_their_keys_and_softmax_heads_keep_kv_groups(tmp_path):
    teacher = _minimax_teacher(tmp_path / "coded", coded=True)
    _shrink(teacher, tmp_path / "out", config_set=MINIMAX_HEADS)
    report = check(tmp_path / "out", teacher, MINIMAX_SPEC)
    assert not report.problems, report.problems[:5]
    # a head of the lightning layer (teacher 0) has its own key and value: any 4 of 8, uniform over all
    assert report.members["L0.h"] == ref_uniform(8, 4)
    # the softmax layer (teacher 1): 2 of 4 kv heads, each with both of its query heads
    assert report.members["L1.kv"] == ref_uniform(4, 2) and report.members["L1.grp"] == [0, 1]
    assert {"L0.h", "L0.hd", "L1.kv", "L1.grp"} <= set(report.members)


def test_minimax_student_with_fewer_heads_loads_and_runs(tmp_path):
    teacher = _minimax_teacher(tmp_path / "random", coded=False)
    _shrink(teacher, tmp_path / "out", config_set=MINIMAX_HEADS)
    model, info = transformers.MiniMaxForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    fam = Family("MiniMaxConfig", MINIMAX, MINIMAX_HEADS, MINIMAX_SPEC)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(**example_inputs(fam, config)).logits).all()


# --------------------------------------------------------------------------- reading transformers' code

def _meta_model(config_class: str, **kw):
    cfg = getattr(transformers, config_class)(**kw)
    with torch.device("meta"):
        return getattr(transformers, kw["architectures"][0])(cfg)


def _module(model, path: str):
    return dict(model.named_modules())[path]


FUSED = [
    ("FalconConfig", dict(architectures=["FalconForCausalLM"], hidden_size=64, num_hidden_layers=1,
                          num_attention_heads=8, num_kv_heads=2, new_decoder_architecture=True, vocab_size=96),
     "transformer.h.0.self_attention", "query_key_value", "grouped"),
    ("FalconConfig", dict(architectures=["FalconForCausalLM"], hidden_size=64, num_hidden_layers=1,
                          num_attention_heads=8, multi_query=True, vocab_size=96),
     "transformer.h.0.self_attention", "query_key_value", "qkv"),
    ("FalconConfig", dict(architectures=["FalconForCausalLM"], hidden_size=64, num_hidden_layers=1,
                          num_attention_heads=8, multi_query=False, vocab_size=96),
     "transformer.h.0.self_attention", "query_key_value", "per-head"),
    ("BloomConfig", dict(architectures=["BloomForCausalLM"], hidden_size=64, n_layer=1, n_head=4, vocab_size=96),
     "transformer.h.0.self_attention", "query_key_value", "per-head"),
    ("GPTNeoXConfig", dict(architectures=["GPTNeoXForCausalLM"], hidden_size=64, num_hidden_layers=1,
                           num_attention_heads=4, vocab_size=96), "gpt_neox.layers.0.attention", "query_key_value",
     "per-head"),
    ("Phi3Config", dict(architectures=["Phi3ForCausalLM"], hidden_size=64, num_hidden_layers=1, num_attention_heads=8,
                        num_key_value_heads=4, vocab_size=96, pad_token_id=0), "model.layers.0.self_attn", "qkv_proj",
     "qkv"),
    ("GPT2Config", dict(architectures=["GPT2LMHeadModel"], n_embd=64, n_layer=1, n_head=4, vocab_size=96,
                        add_cross_attention=True), "transformer.h.0.attn", "c_attn", "qkv"),
    ("GPT2Config", dict(architectures=["GPT2LMHeadModel"], n_embd=64, n_layer=1, n_head=4, vocab_size=96,
                        add_cross_attention=True), "transformer.h.0.crossattention", "c_attn", "kv"),
    ("MiniMaxConfig", dict(MINIMAX, num_hidden_layers=2, layer_types=["linear_attention", "full_attention"]),
     "model.layers.0.self_attn", "qkv_proj", "per-head"),
    # CodeGen views its qkv_proj per model-parallel shard as [q, v, k]: a layout slicer does not know
    ("CodeGenConfig", dict(architectures=["CodeGenForCausalLM"], n_embd=64, n_layer=1, n_head=4, rotary_dim=8,
                           vocab_size=96), "transformer.h.0.attn", "qkv_proj", None),
]


@pytest.mark.parametrize("config_class,kw,path,leaf,want", FUSED, ids=[f"{c[0]}-{c[2]}-{c[4]}" for c in FUSED])
def test_the_fused_layout_is_read_off_the_modules_code(config_class, kw, path, leaf, want):
    from slicer.hf.bindings.geometry import geometry
    from slicer.hf.bindings.qkv_layout import fused_layout, per_head_kv

    model = _meta_model(config_class, **kw)
    attn = _module(model, path)
    proj = _module(model, f"{path}.{leaf}")
    rows = proj.weight.shape[1 if type(proj).__name__ == "Conv1D" else 0]
    g = per_head_kv(attn, geometry(attn, model.config, None))
    assert fused_layout(attn, leaf, rows, g) == want


@pytest.mark.parametrize("config_class,kw,path,want", [
    ("LlamaConfig", dict(architectures=["LlamaForCausalLM"], hidden_size=64, num_hidden_layers=1,
                         num_attention_heads=4, vocab_size=96), "model.layers.0.self_attn", "halves"),
    ("GPTJConfig", dict(architectures=["GPTJForCausalLM"], n_embd=64, n_layer=1, n_head=4, rotary_dim=8,
                        vocab_size=96), "transformer.h.0.attn", "interleaved"),
    ("CohereConfig", dict(architectures=["CohereForCausalLM"], hidden_size=64, num_hidden_layers=1,
                          num_attention_heads=4, vocab_size=96, pad_token_id=0), "model.layers.0.self_attn",
     "interleaved"),
], ids=["llama", "gptj", "cohere"])
def test_the_rotary_convention_is_read_off_the_models_rotation(config_class, kw, path, want):
    from slicer.hf.bindings.geometry import rotary_convention

    assert rotary_convention(_module(_meta_model(config_class, **kw), path)) == want


def test_attention_flat_selects_per_head_norms_by_their_sizes(coded, tmp_path):
    """--attention flat is the paper's rule for every attention dimension, per-head norms included."""
    teacher = coded("cohere")
    _shrink(teacher, tmp_path / "out", config_set=FAMILIES["cohere"].edits, attention="flat")
    manifest = json.loads((tmp_path / "out" / "slicer_manifest.json").read_text())
    assert manifest["tensors"]["model.layers.0.self_attn.q_norm.weight"]["axes"] == ["8->4", "8->8"]
    assert manifest["tensors"]["model.layers.0.self_attn.q_proj.weight"]["axes"] == ["64->32", "hidden"]
    assert _kept(tmp_path / "out", teacher, "model.layers.0.self_attn.q_norm.weight", 0) == ref_uniform(8, 4)


# --------------------------------------------------------------------------- refusals

def test_a_fused_layout_slicer_cannot_read_is_refused_naming_the_tensor(tmp_path):
    fam = Family("CodeGenConfig", dict(architectures=["CodeGenForCausalLM"], n_embd=64, n_layer=2, n_head=4,
                                       rotary_dim=8, n_positions=32, vocab_size=96, bos_token_id=0, eos_token_id=0),
                 {}, Spec([], {}))
    teacher = build(tmp_path / "t", fam, coded=False)
    with pytest.raises(SlicerError) as e:
        _shrink(teacher, tmp_path / "out", config_set=dict(n_embd=32, n_head=2))
    msg = str(e.value)
    assert "transformer.h.0.attn.qkv_proj.weight" in msg and "CodeGenAttention.forward" in msg
    assert "--attention flat" in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()
    _shrink(teacher, tmp_path / "flat", config_set=dict(n_embd=32, n_head=2), attention="flat")  # the way out


def test_a_student_with_another_fused_layout_is_refused(coded, tmp_path):
    teacher = coded("falcon_new_arch")
    with pytest.raises(SlicerError, match="holds its rows as grouped, the student's as qkv.*new_decoder_architecture"):
        _shrink(teacher, tmp_path / "out", config_set=dict(hidden_size=32, num_attention_heads=4,
                                                           new_decoder_architecture=False))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edits,match", [
    (dict(n_embd=32, rotary_dim=8), "rotates all 8 dims per head, the teacher 8 of 16"),
    (dict(n_embd=32, rotary_dim=3), "rotates 3 of 8 dims per head: rotary embeddings rotate pairs"),
    (dict(n_embd=32, n_head=2, rotary_dim=3), "rotates 3 of 16 dims per head"),  # whole heads, still no pairs
    (dict(n_embd=32, n_head=2, rotary_dim=24), "rotates 24 of 16 dims per head|rotary_dim 24 is larger than the teacher.s rotary_dim"),
    (dict(n_embd=48, rotary_dim=10), "rotary pairs cannot be kept"),  # more rotated dims than the teacher has
], ids=["every-unrotated-dim-dropped", "odd-rotary-dim", "odd-rotary-dim-whole-heads", "rotary-beyond-the-head",
        "pairs-not-kept"])
def test_a_head_size_shrink_that_would_break_rotary_pairs_is_refused(coded, tmp_path, edits, match):
    teacher = coded("gptj")
    with pytest.raises(SlicerError, match=match):
        _shrink(teacher, tmp_path / "out", config_set=edits)
    assert not (tmp_path / "out").exists()


GPT_OSS = dict(architectures=["GptOssForCausalLM"], hidden_size=64, intermediate_size=32, num_hidden_layers=2,
               num_attention_heads=8, num_key_value_heads=4, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
               vocab_size=96, max_position_embeddings=64, sliding_window=16,
               layer_types=["sliding_attention", "full_attention"])


def test_a_head_size_shrink_is_refused_where_the_rotation_cannot_be_read(tmp_path):
    """gpt-oss rotates with its own _apply_rotary_emb (no rotate_half): slicer cannot tell its
    pairs, so it keeps whole heads (fewer heads pass) and refuses to shrink the head size."""
    teacher = build(tmp_path / "t", Family("GptOssConfig", GPT_OSS, {}, Spec([], {})), coded=False)
    with pytest.raises(SlicerError, match="cannot tell how this model pairs its rotary dims; keep head_dim"):
        _shrink(teacher, tmp_path / "out", config_set=dict(head_dim=4))
    _shrink(teacher, tmp_path / "heads", config_set=dict(num_attention_heads=4, num_key_value_heads=2))


def test_verify_checks_per_head_norm_modules_against_their_query_heads(coded, tmp_path):
    teacher = coded("stablelm")
    out = tmp_path / "out"
    _shrink(teacher, out, config_set=FAMILIES["stablelm"].edits)
    assert slicer.verify(out, teacher=teacher).ok
    path = out / "slicer_manifest.json"
    manifest = json.loads(path.read_text())
    prefix = "model.layers.0.self_attn.q_layernorm.norms"
    entry = manifest["component_maps"][prefix]
    assert entry["axis"] == "model.layers.0.self_attn:q-heads"  # derived: kv heads * group
    entry["members"] = list(reversed(entry["members"]))
    path.write_text(json.dumps(manifest))
    problems = slicer.verify(out).problems
    assert any(prefix in p and "q-heads" in p for p in problems), problems
