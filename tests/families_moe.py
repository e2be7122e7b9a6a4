"""Mixture-of-experts and hybrid families for tests/test_consistency.py (and tests/test_moe.py).

Specs are written from transformers' modeling code (5.x), not from slicer's rules:
- Mixtral / MiniMax / PhiMoE: ``block_sparse_moe.experts.N.w1`` (gate), ``w3`` (up) [I, H], ``w2`` [H, I]
  (MixtralExperts: gate_up_proj = cat(w1, w3) per expert, down_proj = w2); the router ``gate`` [E, H]
  scores expert e with row e.
- Qwen2/3-MoE, OLMoE, DeepSeek-V3, Qwen3-Next, Jamba: ``experts.N.{gate,up,down}_proj`` (same
  packing), routers ``gate`` / ``router`` [E, H]; DeepSeek's ``e_score_correction_bias`` [E] is added
  to the scores of expert e; shared experts are a plain MLP with their own neurons; Qwen3-Next's
  ``shared_expert_gate`` is Linear(H, 1).
- gpt-oss: packed ``experts.gate_up_proj`` [E, H, 2I] used as ``x @ W`` and split
  ``gate_up[..., ::2]`` (gate), ``[..., 1::2]`` (up): column 2i + p is neuron i; ``gate_up_proj_bias``
  [E, 2I] likewise; ``down_proj`` [E, I, H]; ``router.weight`` [E, H] + ``router.bias`` [E]; ``sinks``
  [heads], one per query head.
- Llama 4: packed ``experts.gate_up_proj`` [E, H, 2I] used by ``bmm(x, W)`` and ``chunk(2)``:
  [gate | up] halves; ``down_proj`` [E, I, H]; MoE every ``interleave_moe_layer_step`` layers.
- DeepSeek-V3 MLA: q = q_b(norm(q_a(x))), rows per head [nope | rope]; ``kv_a_proj_with_mqa`` rows
  [kv_lora | rope]; ``kv_b_proj`` rows per head [k nope | v], columns the kv latent; ``o_proj``
  columns per head v_head_dim. The k nope dims are dotted with the q nope dims: one axis.
- Qwen3-Next full attention: ``q_proj`` viewed as (-1, head_dim * 2) and chunked: per head
  [query | gate], the gate multiplying the head's output dims (the head-dim axis).
"""
from __future__ import annotations

import torch

from consistency import Spec
from families import VOCAB, Family, _llama_like

EXPERTS = r"experts\.(\d+)\."


def _moe_rules(layer: str, block: str, experts: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj"),
               router: str = "gate", shared: str | None = None) -> list:
    """Per-expert tensors, the router, shared experts of the MoE block ``block`` of each layer."""
    L = rf"{layer}\.(\d+)\.{block}\."
    gate, up, down = experts
    rules = [
        (L + EXPERTS + rf"(?:{gate}|{up})\.weight", ("L{1}.effn", "hidden")),
        (L + EXPERTS + rf"{down}\.weight", ("hidden", "L{1}.effn")),
        (L + rf"{router}\.weight", ("L{1}.E", "hidden")),
    ]
    if shared:
        rules += [
            (L + rf"{shared}\.(?:gate_proj|up_proj)\.weight", ("L{1}.sffn", "hidden")),
            (L + rf"{shared}\.down_proj\.weight", ("hidden", "L{1}.sffn")),
        ]
    return rules


def _experts_component(layer: str, block: str) -> list:
    return [(rf"{layer}\.(\d+)\.{block}\.experts\.(\d+)\..*", 2, "L{1}.E")]


ATTN_SIZES = dict(hidden=64, kv=4, grp=2, hd=8)
ATTN_TEACHER = dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=4, head_dim=8, vocab_size=VOCAB,
                    tie_word_embeddings=False)
ATTN_EDITS = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2)


def _text(config: dict) -> dict:
    gen = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, min(VOCAB, config.get("vocab_size", VOCAB)), (2, 7), generator=gen)}


FAMILIES: dict[str, Family] = {
    "mixtral": Family(
        "MixtralConfig",
        dict(architectures=["MixtralForCausalLM"], **ATTN_TEACHER, intermediate_size=96, num_hidden_layers=4,
             num_local_experts=8, num_experts_per_tok=2),
        dict(ATTN_EDITS, intermediate_size=48, num_hidden_layers=2, num_local_experts=4),
        Spec(_llama_like() + _moe_rules(r"model\.layers", "block_sparse_moe", ("w1", "w3", "w2")),
             dict(ATTN_SIZES, effn=96, E=8), _experts_component(r"model\.layers", "block_sparse_moe"))),
    "qwen3_moe": Family(
        "Qwen3MoeConfig",
        dict(architectures=["Qwen3MoeForCausalLM"], **ATTN_TEACHER, intermediate_size=128, moe_intermediate_size=48,
             num_hidden_layers=4, num_experts=8, num_experts_per_tok=2),
        dict(ATTN_EDITS, moe_intermediate_size=24, num_hidden_layers=2, num_experts=4),
        Spec(_llama_like(q_norm="head") + _moe_rules(r"model\.layers", "mlp"), dict(ATTN_SIZES, effn=48, E=8),
             _experts_component(r"model\.layers", "mlp"))),
    "olmoe": Family(
        "OlmoeConfig",
        dict(architectures=["OlmoeForCausalLM"], **{k: v for k, v in ATTN_TEACHER.items() if k != "head_dim"},
             intermediate_size=48, num_hidden_layers=4, num_experts=8, num_experts_per_tok=2, pad_token_id=0,
             eos_token_id=1),
        dict(ATTN_EDITS, intermediate_size=24, num_hidden_layers=2, num_experts=4),
        # OLMoE normalizes q and k over all heads at once: q_norm [heads * head_dim], k_norm [kv heads * head_dim]
        Spec(_llama_like() + _moe_rules(r"model\.layers", "mlp") + [
            (r"model\.layers\.(\d+)\.self_attn\.q_norm\.weight", ("L{1}.kv * L{1}.grp * L{1}.hd",)),
            (r"model\.layers\.(\d+)\.self_attn\.k_norm\.weight", ("L{1}.kv * L{1}.hd",)),
        ], dict(ATTN_SIZES, effn=48, E=8), _experts_component(r"model\.layers", "mlp"))),
    "gpt_oss": Family(
        "GptOssConfig",
        dict(architectures=["GptOssForCausalLM"], **ATTN_TEACHER, intermediate_size=48, num_hidden_layers=4,
             num_local_experts=8, num_experts_per_tok=2, sliding_window=8,
             layer_types=["sliding_attention", "full_attention"] * 2),
        dict(ATTN_EDITS, intermediate_size=24, num_hidden_layers=2, num_local_experts=4),
        Spec(_llama_like() + [
            (r"model\.layers\.(\d+)\.self_attn\.q_proj\.bias", ("L{1}.kv * L{1}.grp * L{1}.hd",)),
            (r"model\.layers\.(\d+)\.self_attn\.[kv]_proj\.bias", ("L{1}.kv * L{1}.hd",)),
            (r"model\.layers\.\d+\.self_attn\.o_proj\.bias", ("hidden",)),
            (r"model\.layers\.(\d+)\.self_attn\.sinks", ("L{1}.kv * L{1}.grp",)),
            (r"model\.layers\.(\d+)\.mlp\.router\.weight", ("L{1}.E", "hidden")),
            (r"model\.layers\.(\d+)\.mlp\.router\.bias", ("L{1}.E",)),
            (r"model\.layers\.(\d+)\.mlp\.experts\.gate_up_proj", ("L{1}.E", "hidden", "L{1}.effn * 2")),
            (r"model\.layers\.(\d+)\.mlp\.experts\.gate_up_proj_bias", ("L{1}.E", "L{1}.effn * 2")),
            (r"model\.layers\.(\d+)\.mlp\.experts\.down_proj", ("L{1}.E", "L{1}.effn", "hidden")),
            (r"model\.layers\.(\d+)\.mlp\.experts\.down_proj_bias", ("L{1}.E", "hidden")),
        ], dict(ATTN_SIZES, effn=48, E=8))),
}


def _deepseek_v3_spec() -> Spec:
    L = r"model\.layers\.(\d+)\."
    A = L + r"self_attn\."
    rules = [r for r in _llama_like() if "self_attn" not in r[0]] + [
        (A + r"q_a_proj\.weight", ("L{1}.qlora", "hidden")),
        (A + r"q_a_layernorm\.weight", ("L{1}.qlora",)),
        (A + r"q_b_proj\.weight", ("L{1}.h * (L{1}.nope | L{1}.rope)", "L{1}.qlora")),
        (A + r"kv_a_proj_with_mqa\.weight", ("L{1}.kvlora | L{1}.rope", "hidden")),
        (A + r"kv_a_layernorm\.weight", ("L{1}.kvlora",)),
        (A + r"kv_b_proj\.weight", ("L{1}.h * (L{1}.nope | L{1}.v)", "L{1}.kvlora")),
        (A + r"o_proj\.weight", ("hidden", "L{1}.h * L{1}.v")),
        (L + r"mlp\.gate\.e_score_correction_bias", ("L{1}.E",)),
    ] + _moe_rules(r"model\.layers", "mlp", shared="shared_experts")
    sizes = dict(hidden=64, h=8, qlora=32, kvlora=16, nope=8, rope=4, v=8, ffn=128, effn=32, sffn=64, E=8)
    return Spec(rules, sizes, _experts_component(r"model\.layers", "mlp"))


FAMILIES["deepseek_v3"] = Family(
    "DeepseekV3Config",
    dict(architectures=["DeepseekV3ForCausalLM"], hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
         num_hidden_layers=4, first_k_dense_replace=1, num_attention_heads=8, num_key_value_heads=8,
         q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
         n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=2, n_group=2, topk_group=1,
         vocab_size=VOCAB, tie_word_embeddings=False),
    dict(hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3, num_attention_heads=4,
         num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=8, qk_nope_head_dim=4, v_head_dim=4,
         n_routed_experts=4, num_experts_per_tok=2),
    _deepseek_v3_spec())


def _jamba_spec() -> Spec:
    L = r"model\.layers\.(\d+)\."
    M = L + r"mamba\."
    rules = [r for r in _llama_like() if r"mlp\." not in r[0] and "layernorm" not in r[0] and r"\.norm\." not in r[0]] + [
        (r"model\.final_layernorm\.weight", ("hidden",)),
        (L + r"(?:input_layernorm|pre_ff_layernorm)\.weight", ("hidden",)),
        (L + r"feed_forward\.(?:gate|up)_proj\.weight", ("L{1}.ffn", "hidden")),
        (L + r"feed_forward\.down_proj\.weight", ("hidden", "L{1}.ffn")),
        # the Mamba mixer reads and writes the residual stream; its inner sizes are kept (mamba_expand
        # grows as hidden_size shrinks)
        (M + r"in_proj\.weight", ("*", "hidden")),
        (M + r"out_proj\.weight", ("hidden", "*")),
    ] + _moe_rules(r"model\.layers", "feed_forward", router="router")
    return Spec(rules, dict(ATTN_SIZES, ffn=96, effn=96, E=8), _experts_component(r"model\.layers", "feed_forward"))


# 8 layers: attention at layer 0 and 4 (period 4), experts at odd layers: kinds
# [attn+dense, mamba+moe, mamba+dense, mamba+moe] x 2; the 4-layer student keeps the pattern once.
FAMILIES["jamba"] = Family(
    "JambaConfig",
    dict(architectures=["JambaForCausalLM"], **{k: v for k, v in ATTN_TEACHER.items() if k != "head_dim"},
         intermediate_size=96, num_hidden_layers=8, num_experts=8, num_experts_per_tok=2,
         attn_layer_period=4, attn_layer_offset=0, expert_layer_period=2, expert_layer_offset=1,
         mamba_d_state=4, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=8, use_mamba_kernels=False),
    dict(ATTN_EDITS, intermediate_size=48, num_hidden_layers=4, num_experts=4, mamba_expand=4),
    _jamba_spec())


def _llama4_spec() -> Spec:
    L = r"model\.layers\.(\d+)\."
    rules = [r for r in _llama_like() if r"mlp\." not in r[0]] + [
        (L + r"feed_forward\.(?:gate|up)_proj\.weight", ("L{1}.ffn", "hidden")),
        (L + r"feed_forward\.down_proj\.weight", ("hidden", "L{1}.ffn")),
        (L + r"feed_forward\.router\.weight", ("L{1}.E", "hidden")),
        (L + r"feed_forward\.experts\.gate_up_proj", ("L{1}.E", "hidden", "L{1}.effn | L{1}.effn")),
        (L + r"feed_forward\.experts\.down_proj", ("L{1}.E", "L{1}.effn", "hidden")),
        (L + r"feed_forward\.shared_expert\.(?:gate|up)_proj\.weight", ("L{1}.sffn", "hidden")),
        (L + r"feed_forward\.shared_expert\.down_proj\.weight", ("hidden", "L{1}.sffn")),
    ]
    return Spec(rules, dict(ATTN_SIZES, ffn=128, effn=48, sffn=48, E=8))


# 8 layers, MoE every other layer (moe_layers [1, 3, 5, 7]), NoPE every 4th (no_rope_layers).
FAMILIES["llama4_text"] = Family(
    "Llama4TextConfig",
    dict(architectures=["Llama4ForCausalLM"], **ATTN_TEACHER, intermediate_size=48, intermediate_size_mlp=128,
         num_hidden_layers=8, num_local_experts=8, num_experts_per_tok=1, interleave_moe_layer_step=2,
         attention_chunk_size=16, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    dict(ATTN_EDITS, intermediate_size=24, intermediate_size_mlp=64, num_hidden_layers=4, num_local_experts=4),
    _llama4_spec())


def _qwen3_next_spec() -> Spec:
    L = r"model\.layers\.(\d+)\."
    rules = [r for r in _llama_like(q_norm="head") if r"mlp\." not in r[0] and r"q_proj\.weight" not in r[0]] + [
        (L + r"self_attn\.q_proj\.weight", ("L{1}.kv * L{1}.grp * 2 * L{1}.hd", "hidden")),
        (L + r"linear_attn\.in_proj_(?:qkvz|ba)\.weight", ("*", "hidden")),
        (L + r"linear_attn\.out_proj\.weight", ("hidden", "*")),
        (L + r"mlp\.shared_expert_gate\.weight", ("*", "hidden")),
    ] + _moe_rules(r"model\.layers", "mlp", shared="shared_expert")
    return Spec(rules, dict(ATTN_SIZES, effn=32, sffn=64, E=8), _experts_component(r"model\.layers", "mlp"))


# 8 layers, full attention every other layer (layer_types), linear attention (Gated DeltaNet) between.
FAMILIES["qwen3_next"] = Family(
    "Qwen3NextConfig",
    dict(architectures=["Qwen3NextForCausalLM"], **ATTN_TEACHER, intermediate_size=96, moe_intermediate_size=32,
         shared_expert_intermediate_size=64, num_hidden_layers=8, full_attention_interval=2, num_experts=8,
         num_experts_per_tok=2, linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=8,
         linear_value_head_dim=8, linear_conv_kernel_dim=4),
    dict(ATTN_EDITS, moe_intermediate_size=16, shared_expert_intermediate_size=32, num_hidden_layers=4, num_experts=4),
    _qwen3_next_spec())


FAMILIES["phimoe"] = Family(
    "PhimoeConfig",
    dict(architectures=["PhimoeForCausalLM"], **{k: v for k, v in ATTN_TEACHER.items() if k != "head_dim"},
         intermediate_size=96, num_hidden_layers=4, num_local_experts=8, num_experts_per_tok=2),
    dict(ATTN_EDITS, intermediate_size=48, num_hidden_layers=2, num_local_experts=4),
    # LayerNorms with biases; the router is ``gate`` in checkpoints (``router`` in the model)
    Spec(_llama_like() + _moe_rules(r"model\.layers", "block_sparse_moe", ("w1", "w3", "w2")) + [
        (r"model\.(?:norm|layers\.\d+\.(?:input_layernorm|post_attention_layernorm))\.bias", ("hidden",)),
    ], dict(ATTN_SIZES, effn=96, E=8), _experts_component(r"model\.layers", "block_sparse_moe")))

# GLM-4-MoE: DeepSeek-V3's router (sigmoid scores + e_score_correction_bias, n_group / topk_group),
# grouped-query attention with partial rotary, the first layer dense
FAMILIES["glm4_moe"] = Family(
    "Glm4MoeConfig",
    dict(architectures=["Glm4MoeForCausalLM"], **ATTN_TEACHER, intermediate_size=128, moe_intermediate_size=32,
         num_hidden_layers=4, first_k_dense_replace=1, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
         n_group=2, topk_group=1),
    dict(ATTN_EDITS, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3, n_routed_experts=4),
    Spec(_llama_like() + _moe_rules(r"model\.layers", "mlp", shared="shared_experts") + [
        (r"model\.layers\.(\d+)\.mlp\.gate\.e_score_correction_bias", ("L{1}.E",)),
    ], dict(ATTN_SIZES, ffn=128, effn=32, sffn=32, E=8), _experts_component(r"model\.layers", "mlp")))

# ERNIE-4.5-MoE: MoE from layer 1 (moe_layer_start_index), shared experts, ``moe_statics`` [1, E]
# holding the experts' score correction; embeddings tied
FAMILIES["ernie4_5_moe"] = Family(
    "Ernie4_5_MoeConfig",
    dict(architectures=["Ernie4_5_MoeForCausalLM"], **{**ATTN_TEACHER, "tie_word_embeddings": True},
         intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=4, moe_num_experts=8, moe_k=2,
         moe_num_shared_experts=1, moe_layer_start_index=1),
    dict(ATTN_EDITS, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3, moe_num_experts=4),
    Spec(_llama_like() + _moe_rules(r"model\.layers", "mlp", shared="shared_experts") + [
        (r"model\.layers\.(\d+)\.mlp\.moe_statics\.e_score_correction_bias", ("*", "L{1}.E")),
    ], dict(ATTN_SIZES, ffn=128, effn=32, sffn=32, E=8), _experts_component(r"model\.layers", "mlp")))


def _minimax_spec() -> Spec:
    L = r"model\.layers\.(\d+)\."
    A = L + r"self_attn\."
    rules = _llama_like() + _moe_rules(r"model\.layers", "block_sparse_moe", ("w1", "w3", "w2")) + [
        # lightning attention (MiniMaxLightningAttention): qkv viewed (heads, 3 * head_dim) and split
        # per head into [q, k, v]; norm and output gate over heads * head_dim; per-head decay rates
        (A + r"qkv_proj\.weight", ("L{1}.h * 3 * L{1}.hd", "hidden")),
        (A + r"output_gate\.weight", ("L{1}.h * L{1}.hd", "hidden")),
        (A + r"out_proj\.weight", ("hidden", "L{1}.h * L{1}.hd")),
        (A + r"norm\.weight", ("L{1}.h * L{1}.hd",)),
        (A + r"(?:slope_rate|query_decay|key_decay)", ("L{1}.h", "*", "*")),
        (A + r"diagonal_decay", ("*", "L{1}.h", "*", "*")),
    ]
    return Spec(rules, dict(ATTN_SIZES, h=8, effn=96, E=8), _experts_component(r"model\.layers", "block_sparse_moe"))


# MiniMax: lightning attention and softmax attention alternating (layer_types), Mixtral's experts.
FAMILIES["minimax"] = Family(
    "MiniMaxConfig",
    dict(architectures=["MiniMaxForCausalLM"], **ATTN_TEACHER, intermediate_size=96, num_hidden_layers=4,
         num_local_experts=8, num_experts_per_tok=2, block_size=16,
         layer_types=["linear_attention", "full_attention"] * 2),
    dict(ATTN_EDITS, intermediate_size=48, num_hidden_layers=2, num_local_experts=4),
    _minimax_spec())

# Qwen2-MoE: dense layers named by index (mlp_only_layers), q/k/v biases, a shared expert behind a
# sigmoid gate [1, H]: kinds [moe, dense, moe, moe]
FAMILIES["qwen2_moe"] = Family(
    "Qwen2MoeConfig",
    dict(architectures=["Qwen2MoeForCausalLM"], **ATTN_TEACHER, intermediate_size=128, moe_intermediate_size=32,
         shared_expert_intermediate_size=64, num_hidden_layers=4, num_experts=8, num_experts_per_tok=2,
         mlp_only_layers=[1]),
    dict(ATTN_EDITS, intermediate_size=48, moe_intermediate_size=16, shared_expert_intermediate_size=32,
         num_hidden_layers=3, num_experts=4),
    Spec(_llama_like() + _moe_rules(r"model\.layers", "mlp", shared="shared_expert") + [
        (r"model\.layers\.(\d+)\.self_attn\.q_proj\.bias", ("L{1}.kv * L{1}.grp * L{1}.hd",)),
        (r"model\.layers\.(\d+)\.self_attn\.[kv]_proj\.bias", ("L{1}.kv * L{1}.hd",)),
        (r"model\.layers\.(\d+)\.mlp\.shared_expert_gate\.weight", ("*", "hidden")),
    ], dict(ATTN_SIZES, ffn=128, effn=32, sffn=64, E=8), _experts_component(r"model\.layers", "mlp")))
