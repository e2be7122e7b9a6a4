"""Attention and FFN layouts of dense decoder families (for tests/test_consistency.py). No slicer import.

Every spec is written from the family's modeling code in transformers, not from slicer's rules:

- Phi-3 (``Phi3Attention.forward``): ``qkv_proj`` rows are ``qkv[..., :query_pos]`` (query heads),
  then ``num_key_value_heads * head_dim`` keys, then values; query head h reads kv head
  h // group (``repeat_kv``), so q rows are kv * group * head_dim. ``Phi3MLP``: ``gate, up =
  gate_up_proj(x).chunk(2)``. Rotary on the first ``head_dim * partial_rotary_factor`` dims of
  a head, in halves (``rotate_half``): pair (i, i + r/2).
- GPT-NeoX: ``query_key_value(x).view(..., -1, 3 * head_size).chunk(3)``: per head [q, k, v].
  Rotary (halves) on the first ``rotary_pct * head_size`` dims.
- Falcon (``FalconAttention._split_heads``): ``new_decoder_architecture``: view(kv heads,
  heads / kv + 2, head_dim): per kv group its query heads, then its key, then its value.
  ``multi_query`` (old architecture): view(heads + 2, head_dim): all query heads, one key,
  one value. Neither: view(heads, 3, head_dim), per head [q, k, v].
- GPT-J: separate q/k/v; rotary on the first ``rotary_dim`` dims of a head, interleaved
  (``rotate_every_two``: pairs (2i, 2i + 1)).
- Cohere: separate q/k/v, ``q_norm`` a LayerNorm of shape (heads, head_dim), ``k_norm``
  (kv heads, head_dim); its ``rotate_half`` is interleaved (``x[..., ::2]``, ``x[..., 1::2]``).
- OLMo-2: ``q_norm`` over heads * head_dim, ``k_norm`` over kv heads * head_dim.
- GPT-2 with ``add_cross_attention``: ``crossattention.q_attn`` makes the queries and
  ``crossattention.c_attn`` the keys and values, ``split(split_size)``: [k | v].
- Granite-SWA: ``sinks`` [heads] on the attention module, one per query head.
- StableLM-2: ``q_layernorm.norms.N`` one LayerNorm(head_dim) per query head N,
  ``k_layernorm.norms.N`` per kv head (``StableLmLayerNormPerHead``); rotary halves on the
  first quarter of a head; ``use_parallel_residual``: no post-attention norm.

Head size shrinks write a head's dims as ``(2 * rp | un)`` (halves: rotary pairs, then the
unrotated dims) or ``(rp * 2 | un)`` (interleaved), so the checker itself proves the pairs.
"""
from __future__ import annotations

import torch

from consistency import Spec
from families import VOCAB, Family

Q = "L{1}.kv * L{1}.grp * L{1}.hd"  # query rows of a GQA block (heads whole, kv groups whole)
KV = "L{1}.kv * L{1}.hd"


def _decoder(prefix: str, attn: list, norms: tuple[str, ...], mlp: list, *, head: bool = True,
             final_norm: str = "norm", bias_norms: bool = False) -> list:
    L = rf"{prefix}\.layers\.(\d+)\."
    params = r"(?:weight|bias)" if bias_norms else r"weight"
    rules = [(rf"{prefix}\.embed_tokens\.weight", ("*", "hidden")),
             (rf"{prefix}\.{final_norm}\.{params}", ("hidden",)),
             (L + "(?:" + "|".join(norms) + rf")\.{params}", ("hidden",))]
    if head:
        rules.append((r"lm_head\.weight", ("*", "hidden")))
    return rules + [(L + pattern, dims) for pattern, dims in attn + mlp]


def _qkvo(q: str = Q, kv: str = KV, bias: bool = False) -> list:
    rules = [(r"self_attn\.q_proj\.weight", (q, "hidden")),
             (r"self_attn\.[kv]_proj\.weight", (kv, "hidden")),
             (r"self_attn\.o_proj\.weight", ("hidden", q))]
    if bias:
        rules += [(r"self_attn\.q_proj\.bias", (q,)), (r"self_attn\.[kv]_proj\.bias", (kv,))]
    return rules


GATED_MLP = [(r"mlp\.(?:gate|up)_proj\.weight", ("L{1}.ffn", "hidden")),
             (r"mlp\.down_proj\.weight", ("hidden", "L{1}.ffn"))]
GQA = dict(hidden=64, kv=4, grp=2, hd=8, ffn=128)
GQA_EDITS = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
# head size 8 -> 4 (hidden 64 -> 32 with every head kept): only the dims of each head shrink
HEAD_DIM_EDITS = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2)


def _phi3(q_dim: str, sizes: dict) -> Spec:
    qd, kvd = q_dim, q_dim.replace("L{1}.grp * ", "")
    return Spec(_decoder("model", [
        (r"self_attn\.qkv_proj\.weight", (f"{qd} | {kvd} | {kvd}", "hidden")),
        (r"self_attn\.o_proj\.weight", ("hidden", qd)),
    ], ("input_layernorm", "post_attention_layernorm"), [
        (r"mlp\.gate_up_proj\.weight", ("L{1}.ffn | L{1}.ffn", "hidden")),
        (r"mlp\.down_proj\.weight", ("hidden", "L{1}.ffn")),
    ]), sizes)


PHI3 = dict(architectures=["Phi3ForCausalLM"], hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=4, vocab_size=VOCAB, pad_token_id=0, bos_token_id=0,
            eos_token_id=0, partial_rotary_factor=0.5, max_position_embeddings=64,
            original_max_position_embeddings=64)


def _neox(hd: str, sizes: dict) -> Spec:
    L = r"gpt_neox\.layers\.(\d+)\."
    return Spec([
        (r"gpt_neox\.embed_in\.weight", ("*", "hidden")),
        (r"(?:embed_out|lm_head)\.weight", ("*", "hidden")),
        (r"gpt_neox\.final_layer_norm\.(?:weight|bias)", ("hidden",)),
        (L + r"(?:input_layernorm|post_attention_layernorm)\.(?:weight|bias)", ("hidden",)),
        (L + r"attention\.query_key_value\.weight", (f"L{{1}}.h * 3 * {hd}", "hidden")),
        (L + r"attention\.query_key_value\.bias", (f"L{{1}}.h * 3 * {hd}",)),
        (L + r"attention\.dense\.weight", ("hidden", f"L{{1}}.h * {hd}")),
        (L + r"attention\.dense\.bias", ("hidden",)),
        (L + r"mlp\.dense_h_to_4h\.weight", ("L{1}.ffn", "hidden")),
        (L + r"mlp\.dense_h_to_4h\.bias", ("L{1}.ffn",)),
        (L + r"mlp\.dense_4h_to_h\.weight", ("hidden", "L{1}.ffn")),
        (L + r"mlp\.dense_4h_to_h\.bias", ("hidden",)),
    ], sizes)


NEOX = dict(architectures=["GPTNeoXForCausalLM"], hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, vocab_size=VOCAB, rotary_pct=0.25, max_position_embeddings=32)


def _falcon(qkv: str, q: str, heads: dict, *, bias: bool, parallel_norms: bool) -> Spec:
    L = r"transformer\.h\.(\d+)\."
    norms = r"(?:ln_attn|ln_mlp)" if parallel_norms else r"input_layernorm"
    rules = [
        (r"transformer\.word_embeddings\.weight", ("*", "hidden")),
        (r"lm_head\.weight", ("*", "hidden")),
        (r"transformer\.ln_f\.(?:weight|bias)", ("hidden",)),
        (L + norms + r"\.(?:weight|bias)", ("hidden",)),
        (L + r"self_attention\.query_key_value\.weight", (qkv, "hidden")),
        (L + r"self_attention\.dense\.weight", ("hidden", q)),
        (L + r"mlp\.dense_h_to_4h\.weight", ("L{1}.ffn", "hidden")),
        (L + r"mlp\.dense_4h_to_h\.weight", ("hidden", "L{1}.ffn")),
    ]
    if bias:
        rules += [(L + r"self_attention\.query_key_value\.bias", (qkv,)),
                  (L + r"self_attention\.dense\.bias", ("hidden",)),
                  (L + r"mlp\.dense_h_to_4h\.bias", ("L{1}.ffn",)),
                  (L + r"mlp\.dense_4h_to_h\.bias", ("hidden",))]
    return Spec(rules, dict(hidden=64, hd=8, ffn=128, **heads))


FALCON = dict(architectures=["FalconForCausalLM"], hidden_size=64, num_hidden_layers=4, num_attention_heads=8,
              ffn_hidden_size=128, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, max_position_embeddings=64)
FALCON_EDITS = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, ffn_hidden_size=48)


def _gptj(hd: str, sizes: dict) -> Spec:
    L = r"transformer\.h\.(\d+)\."
    return Spec([
        (r"transformer\.wte\.weight", ("*", "hidden")),
        (r"lm_head\.weight", ("*", "hidden")),
        (r"lm_head\.bias", ("*",)),
        (r"transformer\.ln_f\.(?:weight|bias)", ("hidden",)),
        (L + r"ln_1\.(?:weight|bias)", ("hidden",)),
        (L + r"attn\.[qkv]_proj\.weight", (f"L{{1}}.h * {hd}", "hidden")),
        (L + r"attn\.out_proj\.weight", ("hidden", f"L{{1}}.h * {hd}")),
        (L + r"mlp\.fc_in\.weight", ("L{1}.ffn", "hidden")),
        (L + r"mlp\.fc_in\.bias", ("L{1}.ffn",)),
        (L + r"mlp\.fc_out\.weight", ("hidden", "L{1}.ffn")),
        (L + r"mlp\.fc_out\.bias", ("hidden",)),
    ], sizes)


GPTJ = dict(architectures=["GPTJForCausalLM"], n_embd=64, n_layer=4, n_head=4, rotary_dim=8, n_inner=128,
            n_positions=32, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)


def _cohere(hd: str, sizes: dict) -> Spec:
    q, kv = Q.replace("L{1}.hd", hd), KV.replace("L{1}.hd", hd)
    return Spec(_decoder("model", _qkvo(q, kv) + [
        (r"self_attn\.q_norm\.weight", ("L{1}.kv * L{1}.grp", hd)),
        (r"self_attn\.k_norm\.weight", ("L{1}.kv", hd)),
    ], ("input_layernorm",), GATED_MLP, head=False), sizes)


COHERE = dict(architectures=["CohereForCausalLM"], hidden_size=64, intermediate_size=128, num_hidden_layers=4,
              num_attention_heads=8, num_key_value_heads=4, use_qk_norm=True, vocab_size=VOCAB, pad_token_id=0,
              bos_token_id=0, eos_token_id=0, max_position_embeddings=64)

def _gpt2_cross() -> Spec:
    """GPT2Attention with ``is_cross_attention``: ``q_attn`` (Conv1D) makes the queries, ``c_attn`` the
    keys and values of the encoder's states, ``split(split_size)``: [k | v]."""
    L = r"transformer\.h\.(\d+)\."
    self_heads, cross_heads = "L{1}.h * L{1}.hd", "L{1}.xh * L{1}.hd"
    return Spec([
        (r"transformer\.(?:wte|wpe)\.weight", ("*", "hidden")),
        (r"transformer\.(?:ln_f|h\.\d+\.ln_(?:1|2|cross_attn))\.(?:weight|bias)", ("hidden",)),
        (L + r"attn\.c_attn\.weight", ("hidden", f"{self_heads} | {self_heads} | {self_heads}")),
        (L + r"attn\.c_attn\.bias", (f"{self_heads} | {self_heads} | {self_heads}",)),
        (L + r"attn\.c_proj\.weight", (self_heads, "hidden")),
        (L + r"crossattention\.q_attn\.weight", ("hidden", cross_heads)),
        (L + r"crossattention\.q_attn\.bias", (cross_heads,)),
        (L + r"crossattention\.c_attn\.weight", ("hidden", f"{cross_heads} | {cross_heads}")),
        (L + r"crossattention\.c_attn\.bias", (f"{cross_heads} | {cross_heads}",)),
        (L + r"crossattention\.c_proj\.weight", (cross_heads, "hidden")),
        (L + r"(?:attn|crossattention|mlp)\.c_proj\.bias", ("hidden",)),
        (L + r"mlp\.c_fc\.weight", ("hidden", "L{1}.ffn")),
        (L + r"mlp\.c_fc\.bias", ("L{1}.ffn",)),
        (L + r"mlp\.c_proj\.weight", ("L{1}.ffn", "hidden")),
    ], dict(hidden=64, h=4, xh=4, hd=16, ffn=256))


def _with_encoder_states(config: dict) -> dict:
    gen = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, VOCAB, (2, 7), generator=gen),
            "encoder_hidden_states": torch.randn(2, 5, config["n_embd"], generator=gen)}


STABLELM_HEAD = r"model\.layers\.(\d+)\.self_attn\.{}_layernorm\.norms\.(\d+)\.weight"

FAMILIES: dict[str, Family] = {
    "phi3": Family("Phi3Config", PHI3, GQA_EDITS, _phi3(Q, GQA)),
    # hidden / heads shrinks 8 -> 4: two rotary pairs (i, i + 2) of four kept, two unrotated dims of four
    "phi3_head_dim": Family("Phi3Config", PHI3, HEAD_DIM_EDITS,
                            _phi3("L{1}.kv * L{1}.grp * (2 * L{1}.rp | L{1}.un)", dict(GQA, rp=2, un=4))),
    "gpt_neox": Family("GPTNeoXConfig", NEOX, dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                                   num_attention_heads=2),
                       _neox("L{1}.hd", dict(hidden=64, h=4, hd=16, ffn=128))),
    # head size 16 -> 8, rotary_pct 0.25: rotary 4 -> 2 dims (one pair of two), unrotated 12 -> 6
    "gpt_neox_head_dim": Family("GPTNeoXConfig", NEOX, dict(hidden_size=32, intermediate_size=48,
                                                            num_hidden_layers=2),
                                _neox("(2 * L{1}.rp | L{1}.un)", dict(hidden=64, h=4, rp=2, un=12, ffn=128))),
    "falcon_new_arch": Family("FalconConfig", dict(FALCON, new_decoder_architecture=True, num_kv_heads=2),
                              dict(FALCON_EDITS, num_kv_heads=2),
                              _falcon("L{1}.kv * (L{1}.grp | 1 | 1) * L{1}.hd", Q, dict(kv=2, grp=4), bias=False, parallel_norms=True)),
    "falcon_multi_query": Family("FalconConfig", dict(FALCON, multi_query=True), FALCON_EDITS,
                                 _falcon("L{1}.grp * L{1}.hd | L{1}.hd | L{1}.hd", "L{1}.grp * L{1}.hd",
                                         dict(grp=8), bias=False, parallel_norms=False)),
    "falcon_per_head": Family("FalconConfig", dict(FALCON, multi_query=False, bias=True),
                              dict(FALCON_EDITS, num_kv_heads=4),
                              _falcon("L{1}.h * 3 * L{1}.hd", "L{1}.h * L{1}.hd", dict(h=8), bias=True, parallel_norms=False)),
    "gptj": Family("GPTJConfig", GPTJ, dict(n_embd=32, n_head=2, n_inner=48, n_layer=2),
                   _gptj("L{1}.hd", dict(hidden=64, h=4, hd=16, ffn=128))),
    # head size 16 -> 8, rotary_dim 8 -> 4: interleaved pairs (2i, 2i + 1), unrotated 8 -> 4
    "gptj_head_dim": Family("GPTJConfig", GPTJ, dict(n_embd=32, rotary_dim=4, n_inner=48, n_layer=2),
                            _gptj("(L{1}.rp * 2 | L{1}.un)", dict(hidden=64, h=4, rp=4, un=8, ffn=128))),
    "cohere": Family("CohereConfig", COHERE, GQA_EDITS, _cohere("L{1}.hd", GQA)),
    # head size 8 -> 4, rotary over the whole head, interleaved
    "cohere_head_dim": Family("CohereConfig", COHERE, HEAD_DIM_EDITS, _cohere("L{1}.rp * 2", dict(GQA, rp=4))),
    "olmo2": Family("Olmo2Config", dict(architectures=["Olmo2ForCausalLM"], hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                                        vocab_size=VOCAB, pad_token_id=0, eos_token_id=0, max_position_embeddings=64),
                    GQA_EDITS, Spec(_decoder("model", _qkvo() + [
                        (r"self_attn\.q_norm\.weight", (Q,)),
                        (r"self_attn\.k_norm\.weight", (KV,)),
                    ], ("post_attention_layernorm", "post_feedforward_layernorm"), GATED_MLP), GQA)),
    "gpt2_cross_attention": Family("GPT2Config", dict(architectures=["GPT2LMHeadModel"], n_embd=64, n_layer=4, n_head=4,
                                                      n_positions=32, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0,
                                                      add_cross_attention=True),
                                   dict(n_embd=32, n_layer=2, n_head=2), _gpt2_cross(), inputs=_with_encoder_states),
    # sinks [heads] beside a head size that shrinks to the same size (8 -> 4): they follow the heads
    "granite_swa_sinks": Family("GraniteSWAConfig", dict(architectures=["GraniteSWAForCausalLM"], hidden_size=64,
                                                         intermediate_size=128, num_hidden_layers=4,
                                                         num_attention_heads=8, num_key_value_heads=4,
                                                         vocab_size=VOCAB, max_position_embeddings=64,
                                                         sliding_window=16, pad_token_id=0, bos_token_id=0,
                                                         eos_token_id=0, tie_word_embeddings=False),
                                dict(hidden_size=16, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, layer_types=["full_attention", "sliding_attention"]),
                                Spec(_decoder("model", _qkvo(Q.replace("L{1}.hd", "2 * L{1}.rp"),
                                                             KV.replace("L{1}.hd", "2 * L{1}.rp")) + [
                                    (r"self_attn\.sinks", ("L{1}.kv * L{1}.grp",)),
                                ], ("input_layernorm", "post_attention_layernorm"), GATED_MLP), dict(GQA, rp=4))),
    # q heads as one axis (qh): the names q_layernorm.norms.N index it; tests/test_attention_layouts.py
    # checks that they are whole kv groups
    "stablelm": Family("StableLmConfig", dict(architectures=["StableLmForCausalLM"], hidden_size=64,
                                              intermediate_size=128, num_hidden_layers=4, num_attention_heads=8,
                                              num_key_value_heads=4, qk_layernorm=True, use_parallel_residual=True,
                                              use_qkv_bias=True, vocab_size=VOCAB, max_position_embeddings=64),
                       GQA_EDITS, Spec(_decoder("model", _qkvo("L{1}.qh * L{1}.hd", bias=True) + [
                           (r"self_attn\.[qk]_layernorm\.norms\.\d+\.weight", ("L{1}.hd",)),
                       ], ("input_layernorm",), GATED_MLP, bias_norms=True), dict(GQA, qh=8),
                           components=[(STABLELM_HEAD.format("q"), 2, "L{1}.qh"),
                                       (STABLELM_HEAD.format("k"), 2, "L{1}.kv")])),
}
