"""Families of issue 23 (for tests/test_consistency.py). No slicer import.

Each spec is written from the family's modeling code in transformers (5.x), not from slicer's rules:

- T5 / mT5 (``T5Attention``): q, k, v [heads * d_kv, d_model], o [d_model, heads * d_kv];
  ``relative_attention_bias`` [buckets, heads] lives in block 0 of each stack and its bias is
  handed to every later block, so the student keeps every head (``num_heads`` is not edited);
  ``DenseReluDense.wi`` (mT5: ``wi_0`` gate, ``wi_1`` up) [d_ff, d_model], ``wo`` [d_model, d_ff].
- ModernBERT: ``Wqkv(x).view(bs, -1, 3, heads, head_dim)``: [q | k | v], heads x head_dim each;
  ``mlp.Wi(x).chunk(2)``: [input | gate], each ``intermediate_size`` rows; ``Wo`` reads one half.
- DINOv2: ``layer_scale{1,2}.lambda1`` [hidden]; the classifier reads [CLS | mean of patches]
  side by side (``cat([cls, patch.mean(1)], dim=1)``): [labels, hidden | hidden]. Its config
  names ``out_features`` [stage4]; the half-depth student's must name a stage it has.
- LFM2 (``Lfm2ShortConv``): ``in_proj(x).chunk(3)`` along the channels: [B | C | x], each
  channel-aligned with the depthwise ``conv`` [hidden, 1, L] and ``out_proj``'s columns; attention
  with per-head ``q_layernorm`` / ``k_layernorm`` [head_dim]; ``feed_forward.w1/w3/w2``.
- Gemma 3 with both towers one width: ``mm_soft_emb_norm`` normalises the pooled *vision*
  features before ``matmul(x, mm_input_projection_weight)`` ([vision hidden, text hidden]).
- GraniteMoE-hybrid with its shared MLP shrunk: ``shared_mlp.input_linear(x).chunk(2)``.
- Qwen3-VL-MoE: Qwen3-VL's vision tower and deepstack mergers (4 patches side by side, the
  channel innermost: ``x.view(-1, 4 * C)``), text experts packed [E, 2 * ffn, hidden] (``chunk(2)``)
  and [E, hidden, ffn], router [E, hidden].
"""
from __future__ import annotations

import torch

from consistency import Spec
from families import VOCAB, Family, FAMILIES as _BASE

FAMILIES: dict[str, Family] = {}


def _seq2seq_inputs(config: dict) -> dict:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (2, 7), generator=gen)
    return {"input_ids": ids, "decoder_input_ids": ids[:, :5]}


def _t5_spec(gated: bool, lm_head: bool) -> Spec:
    H = "{0}.h * {0}.hd"

    def attn(stack: str, block: str, sub: int, name: str) -> list:
        P = rf"{stack}\.block\.(\d+)\.layer\.{sub}\.{name}\."
        h = f"{block}{{1}}.h * {block}{{1}}.hd"
        return [(P + r"[qkv]\.weight", (h, "hidden")), (P + r"o\.weight", ("hidden", h)),
                (P + r"relative_attention_bias\.weight", ("*", f"{block}{{1}}.h"))]

    def ffn(stack: str, block: str, sub: int) -> list:
        P = rf"{stack}\.block\.(\d+)\.layer\.{sub}\.DenseReluDense\."
        f = f"{block}{{1}}.ffn"
        ups = r"wi_[01]" if gated else r"wi"
        return [(P + ups + r"\.weight", (f, "hidden")), (P + r"wo\.weight", ("hidden", f))]

    del H
    rules = [(r"shared\.weight", ("*", "hidden")),
             (r"(?:encoder|decoder)\.embed_tokens\.weight", ("*", "hidden")),
             (r"(?:encoder|decoder)\.(?:final_layer_norm|block\.\d+\.layer\.\d+\.layer_norm)\.weight", ("hidden",))]
    rules += attn("encoder", "E", 0, "SelfAttention") + ffn("encoder", "E", 1)
    rules += attn("decoder", "D", 0, "SelfAttention") + attn("decoder", "D", 1, "EncDecAttention") + ffn("decoder", "D", 2)
    if lm_head:
        rules.append((r"lm_head\.weight", ("*", "hidden")))
    return Spec(rules, dict(hidden=64, h=8, hd=8, ffn=128))


_T5 = dict(vocab_size=VOCAB, d_model=64, d_kv=8, d_ff=128, num_layers=3, num_decoder_layers=3, num_heads=8,
           decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
_T5_EDITS = dict(d_model=32, d_ff=48, num_layers=2, num_decoder_layers=2)  # num_heads kept: see the docstring
FAMILIES["t5"] = Family("T5Config", dict(_T5, architectures=["T5ForConditionalGeneration"]), _T5_EDITS,
                        _t5_spec(gated=False, lm_head=False), inputs=_seq2seq_inputs)
FAMILIES["mt5"] = Family("MT5Config", dict(_T5, architectures=["MT5ForConditionalGeneration"]), _T5_EDITS,
                         _t5_spec(gated=True, lm_head=True), inputs=_seq2seq_inputs)

_MB = r"model\.layers\.(\d+)\."
FAMILIES["modernbert"] = Family(
    "ModernBertConfig",
    dict(architectures=["ModernBertForMaskedLM"], vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
         num_hidden_layers=4, num_attention_heads=4, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
         sep_token_id=2, max_position_embeddings=64, global_attn_every_n_layers=2, local_attention=16),
    dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2),
    Spec([
        (r"model\.embeddings\.tok_embeddings\.weight", ("*", "hidden")),
        (r"model\.(?:embeddings\.norm|final_norm|layers\.\d+\.(?:attn_norm|mlp_norm))\.weight", ("hidden",)),
        (_MB + r"attn\.Wqkv\.weight", ("L{1}.h * L{1}.hd | L{1}.h * L{1}.hd | L{1}.h * L{1}.hd", "hidden")),
        (_MB + r"attn\.Wo\.weight", ("hidden", "L{1}.h * L{1}.hd")),
        (_MB + r"mlp\.Wi\.weight", ("L{1}.ffn | L{1}.ffn", "hidden")),
        (_MB + r"mlp\.Wo\.weight", ("hidden", "L{1}.ffn")),
        (r"head\.dense\.weight", ("hidden", "hidden")),
        (r"head\.norm\.weight", ("hidden",)),
        (r"decoder\.bias", ("*",)),
    ], dict(hidden=64, h=4, hd=16, ffn=128)))

_DV = r"dinov2\.encoder\.layer\.(\d+)\."
FAMILIES["dinov2"] = Family(
    "Dinov2Config",
    dict(architectures=["Dinov2ForImageClassification"], hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
         mlp_ratio=2, image_size=16, patch_size=4, num_labels=3, out_features=["stage4"]),
    # half depth (out_features must follow) and half the FFN; the hidden size stays: the classifier reads
    # [CLS | mean of patches] side by side, which slicer does not bind (refused, naming classifier.weight)
    dict(num_hidden_layers=2, mlp_ratio=1),
    Spec([
        (r"dinov2\.embeddings\.(?:cls_token|position_embeddings)", ("*", "*", "hidden")),
        (r"dinov2\.embeddings\.mask_token", ("*", "hidden")),
        (r"dinov2\.embeddings\.patch_embeddings\.projection\.weight", ("hidden", "*", "*", "*")),
        (r"dinov2\.(?:embeddings\.patch_embeddings\.projection\.bias|layernorm\.(?:weight|bias))", ("hidden",)),
        (_DV + r"(?:norm[12]\.(?:weight|bias)|layer_scale[12]\.lambda1|attention\.output\.dense\.bias|mlp\.fc2\.bias)",
         ("hidden",)),
        (_DV + r"attention\.attention\.(?:query|key|value)\.weight", ("L{1}.h * L{1}.hd", "hidden")),
        (_DV + r"attention\.attention\.(?:query|key|value)\.bias", ("L{1}.h * L{1}.hd",)),
        (_DV + r"attention\.output\.dense\.weight", ("hidden", "L{1}.h * L{1}.hd")),
        (_DV + r"mlp\.fc1\.weight", ("L{1}.ffn", "hidden")),
        (_DV + r"mlp\.fc1\.bias", ("L{1}.ffn",)),
        (_DV + r"mlp\.fc2\.weight", ("hidden", "L{1}.ffn")),
        (r"classifier\.weight", ("*", "hidden | hidden")),
        (r"classifier\.bias", ("*",)),
    ], dict(hidden=64, h=4, hd=16, ffn=128)), inputs="image")

_LF = r"model\.layers\.(\d+)\."
FAMILIES["lfm2"] = Family(
    "Lfm2Config",
    dict(architectures=["Lfm2ForCausalLM"], vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
         layer_types=["conv", "full_attention", "conv", "full_attention"], block_auto_adjust_ff_dim=False,
         conv_L_cache=3, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=64),
    dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2),
    Spec([
        (r"model\.embed_tokens\.weight", ("*", "hidden")),
        (r"model\.(?:embedding_norm|layers\.\d+\.(?:operator_norm|ffn_norm))\.weight", ("hidden",)),
        (_LF + r"conv\.in_proj\.weight", ("L{1}.ch | L{1}.ch | L{1}.ch", "hidden")),
        (_LF + r"conv\.conv\.weight", ("L{1}.ch", "*", "*")),
        (_LF + r"conv\.out_proj\.weight", ("hidden", "L{1}.ch")),
        (_LF + r"self_attn\.q_proj\.weight", ("L{1}.kv * L{1}.grp * L{1}.hd", "hidden")),
        (_LF + r"self_attn\.[kv]_proj\.weight", ("L{1}.kv * L{1}.hd", "hidden")),
        (_LF + r"self_attn\.out_proj\.weight", ("hidden", "L{1}.kv * L{1}.grp * L{1}.hd")),
        (_LF + r"self_attn\.[qk]_layernorm\.weight", ("L{1}.hd",)),
        (_LF + r"feed_forward\.w[13]\.weight", ("L{1}.ffn", "hidden")),
        (_LF + r"feed_forward\.w2\.weight", ("hidden", "L{1}.ffn")),
    ], dict(hidden=64, ch=64, kv=4, grp=2, hd=8, ffn=128)))

# Gemma 3 with the vision tower as wide as the language model, both halved: the projector's norm
# sizes match both towers' hidden axes, and only where the forward applies it says which.
_g3 = _BASE["gemma3"]
FAMILIES["gemma3_one_width"] = Family(
    _g3.config_class,
    {**_g3.config, "vision_config": {**_g3.config["vision_config"], "hidden_size": 64, "intermediate_size": 64}},
    {**_g3.edits, "vision_config.hidden_size": 32},
    Spec(_g3.spec.rules, {**_g3.spec.sizes, "vhidden": 64, "vhd": 16}, _g3.spec.components), inputs=_g3.inputs)

_gh = _BASE["granite_hybrid"]
FAMILIES["granite_hybrid_shared"] = Family(_gh.config_class, _gh.config, {**_gh.edits, "shared_intermediate_size": 32},
                                           _gh.spec, inputs=_gh.inputs)

_q3 = _BASE["qwen3_vl"]
_QT = r"model\.language_model\.layers\.(\d+)\.mlp\."
FAMILIES["qwen3_vl_moe"] = Family(
    "Qwen3VLMoeConfig",
    {**_q3.config, "architectures": ["Qwen3VLMoeForConditionalGeneration"],
     "text_config": {**_q3.config["text_config"], "moe_intermediate_size": 24, "num_experts": 4,
                     "num_experts_per_tok": 2, "decoder_sparse_step": 1}},
    {**_q3.edits, "text_config.moe_intermediate_size": 12, "text_config.num_experts": 2},
    Spec([r for r in _q3.spec.rules if r"mlp\.(?:gate|up)" not in r[0] and r"mlp\.down" not in r[0]] + [
        (_QT + r"gate\.weight", ("L{1}.E", "hidden")),
        (_QT + r"experts\.gate_up_proj", ("L{1}.E", "L{1}.effn | L{1}.effn", "hidden")),
        (_QT + r"experts\.down_proj", ("L{1}.E", "hidden", "L{1}.effn")),
    ], {**_q3.spec.sizes, "effn": 24, "E": 4}), inputs=_q3.inputs)

# Qwen3-Next with its linear attention's key heads halved (Qwen3NextGatedDeltaNet.fix_query_key_value_ordering:
# in_proj_qkvz viewed per key head as [q (dk) | k (dk) | v (group x dv) | z (group x dv)], in_proj_ba per key
# head [b (group) | a (group)]; the conv runs over cat(all q, all k, all v); dt_bias / A_log per value head;
# norm over one value head; out_proj reads the value heads)
_qn = _BASE["qwen3_next"]
_LA = r"model\.layers\.(\d+)\.linear_attn\."
_KH, _VH = "L{1}.kh", "L{1}.kh * L{1}.vg"
FAMILIES["qwen3_next_linear_heads"] = Family(
    _qn.config_class, _qn.config, {**_qn.edits, "linear_num_key_heads": 1, "linear_num_value_heads": 2},
    Spec([r for r in _qn.spec.rules if "linear_attn" not in r[0]] + [
        (_LA + r"in_proj_qkvz\.weight", (f"{_KH} * (L{{1}}.dk | L{{1}}.dk | L{{1}}.vg * L{{1}}.dv | L{{1}}.vg * L{{1}}.dv)",
                                         "hidden")),
        (_LA + r"in_proj_ba\.weight", (f"{_KH} * (L{{1}}.vg | L{{1}}.vg)", "hidden")),
        (_LA + r"conv1d\.weight", (f"{_KH} * L{{1}}.dk | {_KH} * L{{1}}.dk | {_VH} * L{{1}}.dv", "*", "*")),
        (_LA + r"(?:dt_bias|A_log)", (_VH,)),
        (_LA + r"norm\.weight", ("L{1}.dv",)),
        (_LA + r"out_proj\.weight", ("hidden", f"{_VH} * L{{1}}.dv")),
    ], {**_qn.spec.sizes, "kh": 2, "vg": 2, "dk": 8, "dv": 8}, _qn.spec.components), inputs=_qn.inputs)
