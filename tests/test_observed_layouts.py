"""Fused q/k/v layouts are observed by running the attention module, not read from its source.

- with source reading made impossible, the observed layouts of Falcon's three layouts, GPT-NeoX,
  Phi-3 and GPT-2 are the ones written here from their modeling code;
- the observation itself is checked row by row against an independent reference of Falcon's
  grouped layout (the rows each query head, key and value reads);
- a run that keeps every head whole needs no layout: a teacher whose layout slicer cannot tell
  (CodeGen's per-shard [q, v, k]) gives back itself bit for bit, and shrinks in depth;
- a tensor whose every dimension keeps its size is copied even where a rule cannot bind it.
"""
from __future__ import annotations

import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")

import families  # noqa: E402,F401 - first: it registers the family groups
import slicer  # noqa: E402
from consistency import Spec, read_folder  # noqa: E402
from families import Family, build  # noqa: E402


def _meta(config_class: str, **kw):
    cfg = getattr(transformers, config_class)(**kw)
    with torch.device("meta"):
        return getattr(transformers, kw["architectures"][0])(cfg)


F = dict(architectures=["FalconForCausalLM"], hidden_size=64, num_hidden_layers=1, num_attention_heads=8, vocab_size=96)
CASES = [
    ("FalconConfig", dict(F, new_decoder_architecture=True, num_kv_heads=2), "transformer.h.0.self_attention",
     "query_key_value", "grouped", 2),
    ("FalconConfig", dict(F, multi_query=True), "transformer.h.0.self_attention", "query_key_value", "qkv", 1),
    # 7B layout with num_kv_heads in its config: multi-query all the same (one key, one value)
    ("FalconConfig", dict(F, multi_query=True, num_kv_heads=8), "transformer.h.0.self_attention", "query_key_value",
     "qkv", 1),
    # per head [q, k, v]: every head its own key and value, whatever num_kv_heads says
    ("FalconConfig", dict(F, multi_query=False, num_kv_heads=2), "transformer.h.0.self_attention", "query_key_value",
     "per-head", 8),
    ("GPTNeoXConfig", dict(architectures=["GPTNeoXForCausalLM"], hidden_size=64, num_hidden_layers=1,
                           num_attention_heads=4, vocab_size=96), "gpt_neox.layers.0.attention", "query_key_value",
     "per-head", 4),
    ("Phi3Config", dict(architectures=["Phi3ForCausalLM"], hidden_size=64, num_hidden_layers=1, num_attention_heads=8,
                        num_key_value_heads=4, vocab_size=96, pad_token_id=0, partial_rotary_factor=0.5),
     "model.layers.0.self_attn", "qkv_proj", "qkv", 4),
    ("GPT2Config", dict(architectures=["GPT2LMHeadModel"], n_embd=64, n_layer=1, n_head=4, vocab_size=96),
     "transformer.h.0.attn", "c_attn", "qkv", 4),
]


@pytest.mark.parametrize("config_class,kw,path,leaf,want,kv", CASES,
                         ids=["falcon-grouped", "falcon-multi-query", "falcon-7b-num-kv-heads", "falcon-per-head",
                              "gpt-neox", "phi3-partial-rotary", "gpt2"])
def test_the_layout_is_observed_without_reading_source(monkeypatch, config_class, kw, path, leaf, want, kv):
    from slicer.hf.bindings.geometry import geometry
    from slicer.hf.bindings.qkv_layout import fused_layout, observed_layout, per_head_kv

    model = _meta(config_class, **kw)
    real = inspect.getsource

    def no_model_source(obj, *a, **k):
        if getattr(obj, "__module__", "").startswith("transformers.models"):
            raise OSError("reading a model's source is not allowed in this test")
        return real(obj, *a, **k)

    monkeypatch.setattr(inspect, "getsource", no_model_source)
    attn = model.get_submodule(path)
    proj = attn.get_submodule(leaf)
    rows = proj.weight.shape[1 if type(proj).__name__ == "Conv1D" else 0]
    g = per_head_kv(attn, geometry(attn, model.config, None))
    assert g.kv_heads == kv
    assert fused_layout(attn, leaf, rows, g) == want
    if _own_split(attn):
        return  # transformers < 5.x's Falcon splits by its own method, outside the interface: the probe says
    assert observed_layout(attn, leaf, rows, g) == want  # the observation alone, no fallback


def _own_split(attn) -> bool:
    """Older transformers releases give Falcon a ``_split_heads`` method and call the attention
    function outside the interface; there the split method is probed instead (qkv_layout)."""
    return callable(getattr(attn, "_split_heads", None))


def test_observed_rows_are_falcons_groups_row_by_row():
    """Independent reference: per kv group j, its g query heads, then its key, then its value."""
    from slicer.hf.bindings.observe import fused_rows

    model = _meta("FalconConfig", **dict(F, new_decoder_architecture=True, num_kv_heads=2))
    attn = model.get_submodule("transformer.h.0.self_attention")
    if _own_split(attn):
        pytest.skip(f"transformers {transformers.__version__}: FalconAttention does not use the attention interface")
    H, KV, d = 8, 2, 8
    g = H // KV
    q, k, v = fused_rows(attn, "query_key_value", (H + 2 * KV) * d, d, d)
    want_q = [[((h // g) * (g + 2) + h % g) * d + i for i in range(d)] for h in range(H)]
    want_k = [[(j * (g + 2) + g) * d + i for i in range(d)] for j in range(KV)]
    want_v = [[(j * (g + 2) + g + 1) * d + i for i in range(d)] for j in range(KV)]
    assert q.tolist() == want_q
    assert k.tolist() == want_k and v.tolist() == want_v


def test_a_module_that_never_reaches_the_attention_interface_is_not_observed():
    from slicer.hf.bindings.observe import fused_rows

    model = _meta("CodeGenConfig", architectures=["CodeGenForCausalLM"], n_embd=64, n_layer=1, n_head=4, rotary_dim=8,
                  vocab_size=96)
    attn = model.get_submodule("transformer.h.0.attn")
    assert fused_rows(attn, "qkv_proj", 192, 16, 8) is None


CODEGEN = Family("CodeGenConfig", dict(architectures=["CodeGenForCausalLM"], n_embd=64, n_layer=4, n_head=4,
                                       rotary_dim=8, n_positions=32, vocab_size=96, bos_token_id=0, eos_token_id=0),
                 {}, Spec([], {}))


def test_heads_kept_whole_need_no_layout(tmp_path):
    teacher = build(tmp_path / "t", CODEGEN, coded=False)
    slicer.shrink(str(teacher), str(tmp_path / "same"), student_config=str(teacher / "config.json"), progress=False)
    got, want = read_folder(tmp_path / "same"), read_folder(teacher)
    assert sorted(got) == sorted(want) and all(torch.equal(got[n], want[n]) for n in want)
    slicer.shrink(str(teacher), str(tmp_path / "half"), config_set=dict(n_layer=2), progress=False)
    half = read_folder(tmp_path / "half")
    for name, t in half.items():  # layers 0 and 1 of the student are teacher layers 0 and 1 (first)
        assert torch.equal(t, want[name]), name
    assert not any(".h.2." in n for n in half)


def test_a_tensor_that_keeps_every_size_is_copied_even_where_no_rule_can_bind_it(tmp_path, monkeypatch):
    """A rule that cannot tell anything about a tensor must not stop the identity; a width run still
    refuses with that rule's line."""
    import slicer.hf.bindings as bindings
    from slicer.errors import SlicerError

    def cannot_tell(ref, b):
        raise SlicerError(f"tensor {ref.student_name!r}: this rule cannot tell")

    teacher = build(tmp_path / "t", families.FAMILIES["llama"], coded=False)
    monkeypatch.setattr(bindings, "RULES", [cannot_tell] + list(bindings.RULES))
    slicer.shrink(str(teacher), str(tmp_path / "same"), student_config=str(teacher / "config.json"), progress=False)
    got, want = read_folder(tmp_path / "same"), read_folder(teacher)
    assert sorted(got) == sorted(want) and all(torch.equal(got[n], want[n]) for n in want)
    with pytest.raises(SlicerError, match="this rule cannot tell"):
        slicer.shrink(str(teacher), str(tmp_path / "narrow"), config_set=dict(hidden_size=32), progress=False)
    assert not (tmp_path / "narrow").exists()


def test_t5_keeps_its_heads_or_is_refused_naming_the_shared_bias_table(tmp_path):
    from slicer.errors import SlicerError

    teacher = build(tmp_path / "t", families.FAMILIES["t5"], coded=False)
    with pytest.raises(SlicerError, match="relative position biases.*keep the number of attention heads"):
        slicer.shrink(str(teacher), str(tmp_path / "heads"), config_set=dict(num_heads=4), progress=False)
    assert not (tmp_path / "heads").exists()
