"""Nested configs, vision-language models, vision encoders and state-space models: tiny teachers,
their shrinks and the spec of every teacher tensor dimension. No slicer import.

Specs are written from transformers' modeling code (5.x), independently of slicer's rules:
- a VLM's language model has its own axes (``hidden``, per-layer heads / FFN), its vision
  tower its own (``vhidden``, ``V<n>.vh`` heads ...); the projector's first input is the vision
  hidden (``k * vhidden`` where k neighbouring patches are merged with the channel innermost:
  Qwen's ``ln_q(x).view(-1, 4C)``, InternVL's and Idefics3's pixel shuffle), its output the
  language model's hidden, anything in between its own neurons (``pffn``);
- CLIP's ``visual_projection`` and ``text_projection`` share the projection axis (their outputs
  are compared by a dot product); SigLIP's text ``head`` maps into the vision tower's width;
- Swin and ConvNeXt have one channel axis per stage (``c0``, ``c1``); Swin's patch merging
  concatenates 4 neighbours of C channels (``4 * c0``) into the next stage's 2C;
- Mamba-2's ``in_proj`` rows are [z | x | B | C | dt], ``conv1d`` covers [x | B | C]; heads are
  ``groups * heads-per-group`` (B and C are shared by the heads of a group), d_inner is
  ``heads * head_dim``.
"""
from __future__ import annotations

import torch

from consistency import Spec
from families import VOCAB, Family

# ----------------------------------------------------------------------------- language models


def _lm(prefix: str, head: str = r"lm_head", *, qkv_bias: bool = False, head_norms: bool = False, extra_norms: tuple[str, ...] = ()) -> list:
    """A Llama-like decoder under ``prefix`` (kinds: hidden, kv, grp, hd, ffn; layers ``L<n>``)."""
    L = rf"{prefix}\.layers\.(\d+)\."
    q, kv = "L{1}.kv * L{1}.grp * L{1}.hd", "L{1}.kv * L{1}.hd"
    norms = "|".join(("input_layernorm", "post_attention_layernorm") + extra_norms)
    rules = [
        (rf"{prefix}\.embed_tokens\.weight", ("*", "hidden")),
        (rf"{head}\.weight", ("*", "hidden")),
        (rf"{prefix}\.norm\.weight", ("hidden",)),
        (L + rf"(?:{norms})\.weight", ("hidden",)),
        (L + r"self_attn\.q_proj\.weight", (q, "hidden")),
        (L + r"self_attn\.[kv]_proj\.weight", (kv, "hidden")),
        (L + r"self_attn\.o_proj\.weight", ("hidden", q)),
        (L + r"mlp\.(?:gate|up)_proj\.weight", ("L{1}.ffn", "hidden")),
        (L + r"mlp\.down_proj\.weight", ("hidden", "L{1}.ffn")),
    ]
    if qkv_bias:
        rules += [(L + r"self_attn\.q_proj\.bias", (q,)), (L + r"self_attn\.[kv]_proj\.bias", (kv,))]
    if head_norms:
        rules.append((L + r"self_attn\.[qk]_norm\.weight", ("L{1}.hd",)))
    return rules


TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=4,
            head_dim=8, vocab_size=VOCAB, max_position_embeddings=64)
TEXT_EDITS = {"text_config.hidden_size": 32, "text_config.intermediate_size": 48, "text_config.num_hidden_layers": 2,
              "text_config.num_attention_heads": 4, "text_config.num_key_value_heads": 2}
TEXT_SIZES = dict(hidden=64, kv=4, grp=2, hd=8, ffn=128)

# ----------------------------------------------------------------------------- vision towers

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16,
              patch_size=4)
VISION_EDITS = {"vision_config.hidden_size": 16, "vision_config.intermediate_size": 32,
                "vision_config.num_hidden_layers": 1, "vision_config.num_attention_heads": 2}
VISION_SIZES = dict(vhidden=32, vh=4, vhd=8, vffn=64, pffn=64)


def _vit_layers(layers: str, V: str = "V", hidden: str = "vhidden", *, qkv_bias: bool = True, o: str = "out_proj",
                attn: str = "self_attn", norms: tuple[str, ...] = ("layer_norm1", "layer_norm2")) -> list:
    """CLIP / SigLIP encoder layers (q/k/v/out, two norms, fc1/fc2) under ``layers`` (a regex, group 1 = layer)."""
    h = f"{V}{{1}}.vh * {V}{{1}}.vhd" if hidden == "vhidden" else f"{V}{{1}}.h * {V}{{1}}.hd"
    ffn = f"{V}{{1}}.vffn" if hidden == "vhidden" else f"{V}{{1}}.ffn"
    L = layers + r"\.(\d+)\."
    rules = [
        (L + rf"{attn}\.[qkv]_proj\.weight", (h, hidden)),
        (L + rf"{attn}\.{o}\.weight", (hidden, h)),
        (L + rf"{attn}\.{o}\.bias", (hidden,)),
        (L + rf"(?:{'|'.join(norms)})\.(?:weight|bias)", (hidden,)),
        (L + r"mlp\.fc1\.weight", (ffn, hidden)),
        (L + r"mlp\.fc1\.bias", (ffn,)),
        (L + r"mlp\.fc2\.weight", (hidden, ffn)),
        (L + r"mlp\.fc2\.bias", (hidden,)),
    ]
    if qkv_bias:
        rules.append((L + rf"{attn}\.[qkv]_proj\.bias", (h,)))
    return rules


def _clip_vision(prefix: str) -> list:
    return [
        (rf"{prefix}\.embeddings\.class_embedding", ("vhidden",)),
        (rf"{prefix}\.embeddings\.patch_embedding\.weight", ("vhidden", "*", "*", "*")),
        (rf"{prefix}\.embeddings\.position_embedding\.weight", ("*", "vhidden")),
        (rf"{prefix}\.(?:pre_layrnorm|post_layernorm)\.(?:weight|bias)", ("vhidden",)),
    ] + _vit_layers(rf"{prefix}\.encoder\.layers")


def _siglip_vision(prefix: str) -> list:
    """SigLIP's vision tower with its attention-pooling head (nn.MultiheadAttention: in_proj = [q | k | v])."""
    P = "P.vh * P.vhd"
    return [
        (rf"{prefix}\.embeddings\.patch_embedding\.weight", ("vhidden", "*", "*", "*")),
        (rf"{prefix}\.embeddings\.patch_embedding\.bias", ("vhidden",)),
        (rf"{prefix}\.embeddings\.position_embedding\.weight", ("*", "vhidden")),
        (rf"{prefix}\.post_layernorm\.(?:weight|bias)", ("vhidden",)),
        (rf"{prefix}\.head\.probe", ("*", "*", "vhidden")),
        (rf"{prefix}\.head\.attention\.in_proj_weight", (f"{P} | {P} | {P}", "vhidden")),
        (rf"{prefix}\.head\.attention\.in_proj_bias", (f"{P} | {P} | {P}",)),
        (rf"{prefix}\.head\.attention\.out_proj\.weight", ("vhidden", P)),
        (rf"{prefix}\.head\.(?:attention\.out_proj\.bias|layernorm\.weight|layernorm\.bias)", ("vhidden",)),
        (rf"{prefix}\.head\.mlp\.fc1\.weight", ("P.vffn", "vhidden")),
        (rf"{prefix}\.head\.mlp\.fc1\.bias", ("P.vffn",)),
        (rf"{prefix}\.head\.mlp\.fc2\.weight", ("vhidden", "P.vffn")),
        (rf"{prefix}\.head\.mlp\.fc2\.bias", ("vhidden",)),
    ] + _vit_layers(rf"{prefix}\.encoder\.layers")


# ----------------------------------------------------------------------------- forward inputs

def _ids(config: dict, image_token: int, n_image_tokens: int, *, before: tuple[int, ...] = (), n_text: int = 5):
    gen = torch.Generator().manual_seed(1)
    text = torch.randint(0, 80, (1, n_text), generator=gen)
    head = torch.tensor([list(before) + [image_token] * n_image_tokens])
    return torch.cat([head, text], dim=1)


def _pixels(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(2))


def _llava_inputs(config: dict) -> dict:
    v = config["vision_config"]
    n = (v["image_size"] // v["patch_size"]) ** 2  # the CLS token is dropped ("default" strategy)
    return {"input_ids": _ids(config, config["image_token_index"], n), "pixel_values": _pixels(1, 3, 16, 16)}


def _qwen_vl_inputs(config: dict) -> dict:
    v = config["vision_config"]
    p, t, m = v["patch_size"], v["temporal_patch_size"], v["spatial_merge_size"]
    grid = torch.tensor([[1, 4, 4]])  # t, h, w in patches
    patches = _pixels(16, v.get("in_channels", 3) * t * p * p)
    ids = _ids(config, config["image_token_id"], 16 // (m * m), before=(config["vision_start_token_id"],))
    return {"input_ids": ids, "pixel_values": patches, "image_grid_thw": grid,
            "mm_token_type_ids": (ids == config["image_token_id"]).long()}  # 1: image, as the processor returns it


def _gemma3_inputs(config: dict) -> dict:
    return {"input_ids": _ids(config, config["image_token_index"], config["mm_tokens_per_image"]),
            "pixel_values": _pixels(1, 3, 16, 16)}


def _paligemma_inputs(config: dict) -> dict:
    v = config["vision_config"]
    n = (v["image_size"] // v["patch_size"]) ** 2
    return {"input_ids": _ids(config, config["image_token_index"], n), "pixel_values": _pixels(1, 3, 16, 16)}


def _internvl_inputs(config: dict) -> dict:
    v = config["vision_config"]
    n = int((v["image_size"][0] // v["patch_size"][0]) ** 2 * config["downsample_ratio"] ** 2)
    return {"input_ids": _ids(config, config["image_token_id"], n), "pixel_values": _pixels(1, 3, 16, 16)}


def _idefics3_inputs(config: dict) -> dict:
    v = config["vision_config"]
    n = (v["image_size"] // v["patch_size"]) ** 2 // config["scale_factor"] ** 2
    return {"input_ids": _ids(config, config["image_token_id"], n), "pixel_values": _pixels(1, 1, 3, 16, 16)}


def _mistral3_inputs(config: dict) -> dict:
    v = config["vision_config"]
    n = (v["image_size"] // v["patch_size"]) ** 2 // config["spatial_merge_size"] ** 2
    return {"input_ids": _ids(config, config["image_token_index"], n), "pixel_values": _pixels(1, 3, 16, 16),
            "image_sizes": torch.tensor([[16, 16]])}


def _aya_inputs(config: dict) -> dict:
    v = config["vision_config"]
    n = (v["image_size"] // v["patch_size"]) ** 2 // config["downsample_factor"] ** 2
    return {"input_ids": _ids(config, config["image_token_index"], n), "pixel_values": _pixels(1, 3, 16, 16)}


def _dual_inputs(config: dict) -> dict:
    gen = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(3, 80, (2, 6), generator=gen), "pixel_values": _pixels(2, 3, 16, 16)}


# ----------------------------------------------------------------------------- the families

_LLAVA_PROJECTOR = [
    (r"multi_modal_projector\.linear_1\.weight", ("pffn", "vhidden")),
    (r"multi_modal_projector\.linear_1\.bias", ("pffn",)),
    (r"multi_modal_projector\.linear_2\.weight", ("hidden", "pffn")),
    (r"multi_modal_projector\.linear_2\.bias", ("hidden",)),
]

_QWEN_VL_VISION = [
    (r"visual\.patch_embed\.proj\.weight", ("vhidden", "*", "*", "*", "*")),
    (r"visual\.blocks\.\d+\.norm[12]\.(?:weight|bias)", ("vhidden",)),
    # qkv(x).reshape(seq, 3, heads, -1): [q | k | v], each heads x head dim
    (r"visual\.blocks\.(\d+)\.attn\.qkv\.weight", ("V{1}.vh * V{1}.vhd | V{1}.vh * V{1}.vhd | V{1}.vh * V{1}.vhd",
                                                         "vhidden")),
    (r"visual\.blocks\.(\d+)\.attn\.qkv\.bias", ("V{1}.vh * V{1}.vhd | V{1}.vh * V{1}.vhd | V{1}.vh * V{1}.vhd",)),
    (r"visual\.blocks\.(\d+)\.attn\.proj\.weight", ("vhidden", "V{1}.vh * V{1}.vhd")),
    (r"visual\.blocks\.\d+\.(?:attn\.proj|mlp\.fc2|mlp\.down_proj)\.bias", ("vhidden",)),
    (r"visual\.blocks\.(\d+)\.mlp\.(?:fc1|gate_proj|up_proj)\.weight", ("V{1}.vffn", "vhidden")),
    (r"visual\.blocks\.(\d+)\.mlp\.(?:fc1|gate_proj|up_proj)\.bias", ("V{1}.vffn",)),
    (r"visual\.blocks\.(\d+)\.mlp\.(?:fc2|down_proj)\.weight", ("vhidden", "V{1}.vffn")),
    # PatchMerger: ln_q over C, then view(-1, 4C): 4 neighbouring patches, the channel innermost
    (r"visual\.merger\.ln_q\.(?:weight|bias)", ("vhidden",)),
    (r"visual\.merger\.mlp\.0\.weight", ("pffn", "4 * vhidden")),
    (r"visual\.merger\.mlp\.0\.bias", ("pffn",)),
    (r"visual\.merger\.mlp\.2\.weight", ("hidden", "pffn")),
    (r"visual\.merger\.mlp\.2\.bias", ("hidden",)),
]
_QWEN_VL_SIZES = TEXT_SIZES | dict(vhidden=32, vh=4, vhd=8, vffn=64, pffn=128)
_QWEN_TOKENS = dict(image_token_id=95, video_token_id=94, vision_start_token_id=93)
_MROPE = dict(rope_scaling=dict(type="mrope", mrope_section=[1, 1, 2]))  # head_dim / 2 = 4 rotary frequencies

_INTERNVL_VISION = [
    (r"vision_tower\.embeddings\.cls_token", ("*", "*", "vhidden")),
    (r"vision_tower\.embeddings\.position_embeddings", ("*", "*", "vhidden")),
    (r"vision_tower\.embeddings\.patch_embeddings\.projection\.weight", ("vhidden", "*", "*", "*")),
    (r"vision_tower\.embeddings\.patch_embeddings\.projection\.bias", ("vhidden",)),
    (r"vision_tower\.encoder\.layer\.\d+\.lambda_[12]", ("vhidden",)),  # layer scale
] + _vit_layers(r"vision_tower\.encoder\.layer", attn="attention", o="projection_layer", qkv_bias=False,
                norms=("layernorm_before", "layernorm_after")) + [
    # pixel shuffle (scale 0.5) puts 2 x 2 neighbours side by side, the channel innermost
    (r"multi_modal_projector\.layer_norm\.(?:weight|bias)", ("4 * vhidden",)),
    (r"multi_modal_projector\.linear_1\.weight", ("pffn", "4 * vhidden")),
    (r"multi_modal_projector\.linear_1\.bias", ("pffn",)),
    (r"multi_modal_projector\.linear_2\.weight", ("hidden", "pffn")),
    (r"multi_modal_projector\.linear_2\.bias", ("hidden",)),
]

_IDEFICS3_VISION = [
    (r"model\.vision_model\.embeddings\.patch_embedding\.weight", ("vhidden", "*", "*", "*")),
    (r"model\.vision_model\.embeddings\.patch_embedding\.bias", ("vhidden",)),
    (r"model\.vision_model\.embeddings\.position_embedding\.weight", ("*", "vhidden")),
    (r"model\.vision_model\.post_layernorm\.(?:weight|bias)", ("vhidden",)),
    (r"model\.connector\.modality_projection\.proj\.weight", ("hidden", "4 * vhidden")),  # pixel shuffle, scale 2
] + _vit_layers(r"model\.vision_model\.encoder\.layers")


def _swin_spec() -> Spec:
    # checkpoint names are Swin's original ones (transformers renames them to q_proj / fc1 ... on load)
    B = r"swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\."
    h = "S{1}B{2}.h{1} * S{1}B{2}.hd"
    return Spec([
        (r"swin\.embeddings\.patch_embeddings\.projection\.weight", ("c0", "*", "*", "*")),
        (r"swin\.embeddings\.(?:patch_embeddings\.projection\.bias|norm\.weight|norm\.bias)", ("c0",)),
        (B + r"attention\.self\.(?:query|key|value)\.weight", (h, "c{1}")),
        (B + r"attention\.self\.(?:query|key|value)\.bias", (h,)),
        (B + r"attention\.output\.dense\.weight", ("c{1}", h)),
        (B + r"attention\.output\.dense\.bias", ("c{1}",)),
        # [(2w-1)^2 relative positions, heads]
        (B + r"attention\.self\.relative_position_bias_table", ("*", "S{1}B{2}.h{1}")),
        (B + r"layernorm_(?:before|after)\.(?:weight|bias)", ("c{1}",)),
        (B + r"intermediate\.dense\.weight", ("S{1}B{2}.f{1}", "c{1}")),
        (B + r"intermediate\.dense\.bias", ("S{1}B{2}.f{1}",)),
        (B + r"output\.dense\.weight", ("c{1}", "S{1}B{2}.f{1}")),
        (B + r"output\.dense\.bias", ("c{1}",)),
        # patch merging: cat of 4 neighbours (C each) -> LayerNorm(4C) -> Linear(4C, 2C) = the next stage
        (r"swin\.encoder\.layers\.0\.downsample\.norm\.(?:weight|bias)", ("4 * c0",)),
        (r"swin\.encoder\.layers\.0\.downsample\.reduction\.weight", ("c1", "4 * c0")),
        (r"swin\.layernorm\.(?:weight|bias)", ("c1",)),
        (r"classifier\.weight", ("*", "c1")),
        (r"classifier\.bias", ("*",)),
    ], dict(c0=16, c1=32, h0=2, h1=4, hd=8, f0=32, f1=64))


def _convnext_spec() -> Spec:
    L = r"convnext\.encoder\.stages\.(\d+)\.layers\.(\d+)\."
    return Spec([
        (r"convnext\.embeddings\.patch_embeddings\.weight", ("c0", "*", "*", "*")),
        (r"convnext\.embeddings\.(?:patch_embeddings\.bias|layernorm\.weight|layernorm\.bias)", ("c0",)),
        (L + r"dwconv\.weight", ("c{1}", "*", "*", "*")),  # depthwise: groups = channels, one input each
        (L + r"(?:dwconv\.bias|layernorm\.weight|layernorm\.bias|pwconv2\.bias|layer_scale_parameter)", ("c{1}",)),
        (L + r"pwconv1\.weight", ("S{1}L{2}.f{1}", "c{1}")),
        (L + r"pwconv1\.bias", ("S{1}L{2}.f{1}",)),
        (L + r"pwconv2\.weight", ("c{1}", "S{1}L{2}.f{1}")),
        # downsampling between stages: LayerNorm(C_prev) then Conv2d(C_prev, C, 2, 2)
        (r"convnext\.encoder\.stages\.1\.downsampling_layer\.0\.(?:weight|bias)", ("c0",)),
        (r"convnext\.encoder\.stages\.1\.downsampling_layer\.1\.weight", ("c1", "c0", "*", "*")),
        (r"convnext\.encoder\.stages\.1\.downsampling_layer\.1\.bias", ("c1",)),
        (r"convnext\.layernorm\.(?:weight|bias)", ("c1",)),
        (r"classifier\.weight", ("*", "c1")),
        (r"classifier\.bias", ("*",)),
    ], dict(c0=16, c1=32, f0=64, f1=128))


def _mamba2_rules(prefix: str, mixer: str = "mixer") -> list:
    M = rf"{prefix}\.layers\.(\d+)\.{mixer}\."
    inner = "L{1}.g * L{1}.hpg * L{1}.shd"  # d_inner = heads * head_dim, heads = groups * heads per group
    bc = "L{1}.g * L{1}.n"  # B and C: state per group
    return [
        (M + r"in_proj\.weight", (f"{inner} | {inner} | {bc} | {bc} | L{{1}}.g * L{{1}}.hpg", "hidden")),
        (M + r"conv1d\.weight", (f"{inner} | {bc} | {bc}", "*", "*")),
        (M + r"conv1d\.bias", (f"{inner} | {bc} | {bc}",)),
        (M + r"(?:dt_bias|A_log|D)", ("L{1}.g * L{1}.hpg",)),
        (M + r"norm\.weight", (inner,)),  # gated RMSNorm per group of d_inner / n_groups
        (M + r"out_proj\.weight", ("hidden", inner)),
    ]


MAMBA2_SIZES = dict(hidden=32, g=2, hpg=4, shd=8, n=8)

FAMILIES: dict[str, Family] = {
    "llava": Family("LlavaConfig", dict(
        architectures=["LlavaForConditionalGeneration"], image_token_index=95,
        text_config=dict(model_type="llama", **TEXT), vision_config=dict(model_type="clip_vision_model", **VISION)),
        TEXT_EDITS | VISION_EDITS,
        Spec(_lm(r"language_model\.model", r"language_model\.lm_head") + _clip_vision(r"vision_tower") + _LLAVA_PROJECTOR,
             TEXT_SIZES | VISION_SIZES), inputs=_llava_inputs),
    # the language model alone: the vision tower is copied, the projector follows the LM's hidden axis only
    "llava_text_only": Family("LlavaConfig", dict(
        architectures=["LlavaForConditionalGeneration"], image_token_index=95,
        text_config=dict(model_type="llama", **TEXT), vision_config=dict(model_type="clip_vision_model", **VISION)),
        TEXT_EDITS,
        Spec(_lm(r"language_model\.model", r"language_model\.lm_head") + _clip_vision(r"vision_tower") + _LLAVA_PROJECTOR,
             TEXT_SIZES | VISION_SIZES), inputs=_llava_inputs),
    "qwen2_vl": Family("Qwen2VLConfig", dict(
        architectures=["Qwen2VLForConditionalGeneration"], **_QWEN_TOKENS,
        text_config=dict(**TEXT, **_MROPE),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=2,
                           spatial_merge_size=2, temporal_patch_size=2)),
        TEXT_EDITS | {"vision_config.embed_dim": 16, "vision_config.hidden_size": 32, "vision_config.num_heads": 2,
                      "vision_config.depth": 1},
        Spec(_lm(r"model", qkv_bias=True) + _QWEN_VL_VISION, _QWEN_VL_SIZES), inputs=_qwen_vl_inputs),
    "qwen2_5_vl": Family("Qwen2_5_VLConfig", dict(
        architectures=["Qwen2_5_VLForConditionalGeneration"], **_QWEN_TOKENS,
        text_config=dict(**TEXT, **_MROPE),
        vision_config=dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=4,
                           patch_size=2, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[0],
                           window_size=8)),
        TEXT_EDITS | {"vision_config.hidden_size": 16, "vision_config.out_hidden_size": 32,
                      "vision_config.intermediate_size": 32, "vision_config.num_heads": 2, "vision_config.depth": 1},
        Spec(_lm(r"model", qkv_bias=True) + _QWEN_VL_VISION, _QWEN_VL_SIZES), inputs=_qwen_vl_inputs),
    "qwen3_vl": Family("Qwen3VLConfig", dict(
        architectures=["Qwen3VLForConditionalGeneration"], **_QWEN_TOKENS,
        text_config=dict(**TEXT, rope_scaling=dict(rope_type="default", mrope_section=[1, 1, 2], mrope_interleaved=True)),
        vision_config=dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=4, patch_size=2,
                           spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                           deepstack_visual_indexes=[0])),
        TEXT_EDITS | {"vision_config.hidden_size": 16, "vision_config.out_hidden_size": 32,
                      "vision_config.intermediate_size": 32, "vision_config.num_heads": 2},
        Spec(_lm(r"model\.language_model", qkv_bias=False, head_norms=True) + [
            (r"model\.visual\.patch_embed\.proj\.weight", ("vhidden", "*", "*", "*", "*")),
            (r"model\.visual\.patch_embed\.proj\.bias", ("vhidden",)),
            (r"model\.visual\.pos_embed\.weight", ("*", "vhidden")),  # a grid, interpolated to the image
            (r"model\.visual\.blocks\.\d+\.norm[12]\.(?:weight|bias)", ("vhidden",)),
            (r"model\.visual\.blocks\.(\d+)\.attn\.qkv\.weight",
             ("V{1}.vh * V{1}.vhd | V{1}.vh * V{1}.vhd | V{1}.vh * V{1}.vhd", "vhidden")),
            (r"model\.visual\.blocks\.(\d+)\.attn\.qkv\.bias", ("V{1}.vh * V{1}.vhd | V{1}.vh * V{1}.vhd | V{1}.vh * V{1}.vhd",)),
            (r"model\.visual\.blocks\.(\d+)\.attn\.proj\.weight", ("vhidden", "V{1}.vh * V{1}.vhd")),
            (r"model\.visual\.blocks\.\d+\.(?:attn\.proj|mlp\.linear_fc2)\.bias", ("vhidden",)),
            (r"model\.visual\.blocks\.(\d+)\.mlp\.linear_fc1\.weight", ("V{1}.vffn", "vhidden")),
            (r"model\.visual\.blocks\.(\d+)\.mlp\.linear_fc1\.bias", ("V{1}.vffn",)),
            (r"model\.visual\.blocks\.(\d+)\.mlp\.linear_fc2\.weight", ("vhidden", "V{1}.vffn")),
            # the merger normalises each patch (C), the deepstack mergers the merged 4C ("postshuffle")
            (r"model\.visual\.merger\.norm\.(?:weight|bias)", ("vhidden",)),
            (r"model\.visual\.deepstack_merger_list\.\d+\.norm\.(?:weight|bias)", ("4 * vhidden",)),
            (r"model\.visual\.(merger|deepstack_merger_list\.\d+)\.linear_fc1\.weight", ("{1}.pffn", "4 * vhidden")),
            (r"model\.visual\.(merger|deepstack_merger_list\.\d+)\.linear_fc1\.bias", ("{1}.pffn",)),
            (r"model\.visual\.(merger|deepstack_merger_list\.\d+)\.linear_fc2\.weight", ("hidden", "{1}.pffn")),
            (r"model\.visual\.(?:merger|deepstack_merger_list\.\d+)\.linear_fc2\.bias", ("hidden",)),
        ], _QWEN_VL_SIZES), inputs=_qwen_vl_inputs),
    "gemma3": Family("Gemma3Config", dict(
        architectures=["Gemma3ForConditionalGeneration"], mm_tokens_per_image=4, image_token_index=95,
        boi_token_index=94, eoi_token_index=93,
        text_config=dict(**TEXT, sliding_window=16), vision_config=dict(**VISION)),
        TEXT_EDITS | VISION_EDITS,
        Spec(_lm(r"language_model\.model", r"language_model\.lm_head", head_norms=True,
                 extra_norms=("pre_feedforward_layernorm", "post_feedforward_layernorm"))
             + _siglip_vision(r"vision_tower") + [
                 # matmul(x, W): [vision hidden, text hidden]
                 (r"multi_modal_projector\.mm_input_projection_weight", ("vhidden", "hidden")),
                 (r"multi_modal_projector\.mm_soft_emb_norm\.weight", ("vhidden",)),
             ], TEXT_SIZES | VISION_SIZES), inputs=_gemma3_inputs),
    "paligemma": Family("PaliGemmaConfig", dict(
        architectures=["PaliGemmaForConditionalGeneration"], image_token_index=95, projection_dim=64, hidden_size=64,
        text_config=dict(model_type="gemma", **TEXT), vision_config=dict(**VISION, projection_dim=64)),
        TEXT_EDITS | VISION_EDITS | {"projection_dim": 32, "hidden_size": 32},
        Spec(_lm(r"language_model\.model", r"language_model\.lm_head") + _siglip_vision(r"vision_tower") + [
            (r"multi_modal_projector\.linear\.weight", ("hidden", "vhidden")),
            (r"multi_modal_projector\.linear\.bias", ("hidden",)),
        ], TEXT_SIZES | VISION_SIZES), inputs=_paligemma_inputs),
    "internvl": Family("InternVLConfig", dict(
        architectures=["InternVLForConditionalGeneration"], image_token_id=95,
        text_config=dict(model_type="qwen2", **TEXT), vision_config=dict(**VISION)),
        TEXT_EDITS | VISION_EDITS,
        Spec(_lm(r"language_model\.model", r"language_model\.lm_head", qkv_bias=True) + _INTERNVL_VISION,
             TEXT_SIZES | VISION_SIZES | dict(pffn=64)), inputs=_internvl_inputs),
    "idefics3": Family("Idefics3Config", dict(
        architectures=["Idefics3ForConditionalGeneration"], image_token_id=95, scale_factor=2,
        text_config=dict(model_type="llama", **TEXT), vision_config=dict(**VISION)),
        TEXT_EDITS | VISION_EDITS,
        Spec(_lm(r"model\.text_model") + _IDEFICS3_VISION, TEXT_SIZES | VISION_SIZES), inputs=_idefics3_inputs),
    "smolvlm": Family("SmolVLMConfig", dict(
        architectures=["SmolVLMForConditionalGeneration"], image_token_id=95, scale_factor=2,
        text_config=dict(model_type="llama", **TEXT), vision_config=dict(**VISION)),
        TEXT_EDITS | VISION_EDITS,
        Spec(_lm(r"model\.text_model") + _IDEFICS3_VISION, TEXT_SIZES | VISION_SIZES), inputs=_idefics3_inputs),
    # Pixtral vision; the patch merger unfolds 2 x 2 patches of a [C, h, w] grid: C * 4, the channel outermost
    "mistral3": Family("Mistral3Config", dict(
        architectures=["Mistral3ForConditionalGeneration"], image_token_index=95, spatial_merge_size=2,
        text_config=dict(model_type="mistral", **TEXT),
        vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, head_dim=8, image_size=16, patch_size=4)),
        TEXT_EDITS | VISION_EDITS,
        Spec(_lm(r"language_model\.model", r"language_model\.lm_head") + [
            (r"vision_tower\.patch_conv\.weight", ("vhidden", "*", "*", "*")),
            (r"vision_tower\.(?:ln_pre|transformer\.layers\.\d+\.(?:attention_norm|ffn_norm))\.weight", ("vhidden",)),
            (r"vision_tower\.transformer\.layers\.(\d+)\.attention\.[qkv]_proj\.weight", ("V{1}.vh * V{1}.vhd", "vhidden")),
            (r"vision_tower\.transformer\.layers\.(\d+)\.attention\.o_proj\.weight", ("vhidden", "V{1}.vh * V{1}.vhd")),
            (r"vision_tower\.transformer\.layers\.(\d+)\.feed_forward\.(?:gate|up)_proj\.weight", ("V{1}.vffn", "vhidden")),
            (r"vision_tower\.transformer\.layers\.(\d+)\.feed_forward\.down_proj\.weight", ("vhidden", "V{1}.vffn")),
            (r"multi_modal_projector\.norm\.weight", ("vhidden",)),
            (r"multi_modal_projector\.patch_merger\.merging_layer\.weight", ("pm", "vhidden * 4")),
            (r"multi_modal_projector\.linear_1\.weight", ("pffn", "pm")),
            (r"multi_modal_projector\.linear_2\.weight", ("hidden", "pffn")),
        ], TEXT_SIZES | VISION_SIZES | dict(pm=32)), inputs=_mistral3_inputs),
    # the projector's pixel shuffle, then SwiGLU: linear_1 writes [x | gate] (chunk(2)), linear_2 reads x * silu(gate)
    "aya_vision": Family("AyaVisionConfig", dict(
        architectures=["AyaVisionForConditionalGeneration"], image_token_index=95, downsample_factor=2,
        text_config=dict(model_type="cohere2", **TEXT), vision_config=dict(model_type="siglip_vision_model", **VISION)),
        TEXT_EDITS | VISION_EDITS,
        Spec(_lm(r"language_model\.model", r"language_model\.lm_head") + _siglip_vision(r"vision_tower") + [
            (r"multi_modal_projector\.layernorm\.(?:weight|bias)", ("4 * vhidden",)),
            (r"multi_modal_projector\.linear_1\.weight", ("pffn | pffn", "4 * vhidden")),
            (r"multi_modal_projector\.linear_1\.bias", ("pffn | pffn",)),
            (r"multi_modal_projector\.linear_2\.weight", ("hidden", "pffn")),
            (r"multi_modal_projector\.linear_2\.bias", ("hidden",)),
        ], TEXT_SIZES | VISION_SIZES | dict(pffn=32)), inputs=_aya_inputs),
    "clip": Family("CLIPConfig", dict(
        architectures=["CLIPModel"], projection_dim=24,
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=VOCAB, max_position_embeddings=16, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(**VISION)),
        {"text_config.hidden_size": 16, "text_config.intermediate_size": 32, "text_config.num_hidden_layers": 1,
         "text_config.num_attention_heads": 2, "projection_dim": 12} | VISION_EDITS,
        Spec([
            (r"text_model\.embeddings\.(?:token|position)_embedding\.weight", ("*", "hidden")),
            (r"text_model\.final_layer_norm\.(?:weight|bias)", ("hidden",)),
            (r"text_projection\.weight", ("proj", "hidden")),  # both towers land in one projection space
            (r"visual_projection\.weight", ("proj", "vhidden")),
        ] + _vit_layers(r"text_model\.encoder\.layers", "T", "hidden") + _clip_vision("vision_model"),
            dict(hidden=32, h=4, hd=8, ffn=64, proj=24) | VISION_SIZES), inputs=_dual_inputs),
    "siglip": Family("SiglipConfig", dict(
        architectures=["SiglipModel"],
        text_config=dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=VOCAB, max_position_embeddings=16, projection_size=32),
        vision_config=dict(**VISION)),
        {"text_config.hidden_size": 24, "text_config.intermediate_size": 32, "text_config.num_hidden_layers": 1,
         "text_config.num_attention_heads": 2, "text_config.projection_size": 16} | VISION_EDITS,
        Spec([
            (r"text_model\.embeddings\.(?:token|position)_embedding\.weight", ("*", "hidden")),
            (r"text_model\.final_layer_norm\.(?:weight|bias)", ("hidden",)),
            # the text embedding is compared with the vision tower's pooled output (vision hidden)
            (r"text_model\.head\.weight", ("vhidden", "hidden")),
            (r"text_model\.head\.bias", ("vhidden",)),
        ] + _vit_layers(r"text_model\.encoder\.layers", "T", "hidden") + _siglip_vision("vision_model"),
            dict(hidden=48, h=4, hd=12, ffn=64) | VISION_SIZES), inputs=_dual_inputs),
    "swin": Family("SwinConfig", dict(architectures=["SwinForImageClassification"], image_size=32, patch_size=2,
                                      embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, mlp_ratio=2.0,
                                      num_labels=3),
                   dict(embed_dim=8, depths=[1, 1], num_heads=[1, 2]), _swin_spec(), inputs="image"),
    "convnext": Family("ConvNextConfig", dict(architectures=["ConvNextForImageClassification"], hidden_sizes=[16, 32],
                                              depths=[2, 2], num_stages=2, image_size=32, patch_size=4, num_labels=3),
                       dict(hidden_sizes=[8, 16], depths=[1, 1]), _convnext_spec(), inputs="image"),
    "mamba2": Family("Mamba2Config", dict(architectures=["Mamba2ForCausalLM"], hidden_size=32, num_heads=8, head_dim=8,
                                          expand=2, n_groups=2, state_size=8, num_hidden_layers=3, vocab_size=VOCAB,
                                          chunk_size=4, tie_word_embeddings=False),
                     dict(hidden_size=16, num_heads=4, state_size=4, num_hidden_layers=2),
                     Spec([
                         (r"backbone\.embeddings\.weight", ("*", "hidden")),
                         (r"lm_head\.weight", ("*", "hidden")),
                         (r"backbone\.(?:norm_f|layers\.\d+\.norm)\.weight", ("hidden",)),
                     ] + _mamba2_rules("backbone"), MAMBA2_SIZES)),
    # whole groups dropped (with their heads and their B, C rows): n_groups 2 -> 1, heads 8 -> 4
    "mamba2_groups": Family("Mamba2Config", dict(architectures=["Mamba2ForCausalLM"], hidden_size=32, num_heads=8,
                                                 head_dim=8, expand=2, n_groups=2, state_size=8, num_hidden_layers=2,
                                                 vocab_size=VOCAB, chunk_size=4, tie_word_embeddings=False),
                            dict(hidden_size=16, num_heads=4, n_groups=1, num_hidden_layers=1),
                            Spec([
                                (r"backbone\.embeddings\.weight", ("*", "hidden")),
                                (r"lm_head\.weight", ("*", "hidden")),
                                (r"backbone\.(?:norm_f|layers\.\d+\.norm)\.weight", ("hidden",)),
                            ] + _mamba2_rules("backbone"), MAMBA2_SIZES)),
    "mamba": Family("MambaConfig", dict(architectures=["MambaForCausalLM"], hidden_size=32, state_size=8, expand=2,
                                        conv_kernel=4, time_step_rank=4, num_hidden_layers=3, vocab_size=VOCAB,
                                        tie_word_embeddings=False),
                    dict(hidden_size=16, state_size=4, time_step_rank=2, num_hidden_layers=2),
                    Spec([
                        (r"backbone\.embeddings\.weight", ("*", "hidden")),
                        (r"lm_head\.weight", ("*", "hidden")),
                        (r"backbone\.(?:norm_f|layers\.\d+\.norm)\.weight", ("hidden",)),
                        # in_proj(x).chunk(2) = [x | z]; x_proj(x).split([rank, state, state]) = [dt | B | C]
                        (r"backbone\.layers\.(\d+)\.mixer\.in_proj\.weight", ("L{1}.di | L{1}.di", "hidden")),
                        (r"backbone\.layers\.(\d+)\.mixer\.conv1d\.weight", ("L{1}.di", "*", "*")),
                        (r"backbone\.layers\.(\d+)\.mixer\.(?:conv1d\.bias|dt_proj\.bias|D)", ("L{1}.di",)),
                        (r"backbone\.layers\.(\d+)\.mixer\.x_proj\.weight", ("L{1}.r | L{1}.n | L{1}.n", "L{1}.di")),
                        (r"backbone\.layers\.(\d+)\.mixer\.dt_proj\.weight", ("L{1}.di", "L{1}.r")),
                        (r"backbone\.layers\.(\d+)\.mixer\.A_log", ("L{1}.di", "L{1}.n")),
                        (r"backbone\.layers\.(\d+)\.mixer\.out_proj\.weight", ("hidden", "L{1}.di")),
                    ], dict(hidden=32, di=64, n=8, r=4))),
    # Granite-4 hybrid: Mamba-2 layers beside attention layers; its config holds time_step_limit [0, inf]
    "granite_hybrid": Family("GraniteMoeHybridConfig", dict(
        architectures=["GraniteMoeHybridForCausalLM"], hidden_size=32, intermediate_size=64, shared_intermediate_size=64,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB, num_local_experts=0,
        layer_types=["mamba", "attention", "mamba", "attention"], mamba_n_heads=8, mamba_d_head=8, mamba_n_groups=2,
        mamba_d_state=8, mamba_expand=2, mamba_chunk_size=4, tie_word_embeddings=False, max_position_embeddings=64),
        dict(hidden_size=16, mamba_n_heads=4, mamba_d_state=4, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1),
        Spec([
            (r"model\.embed_tokens\.weight", ("*", "hidden")),
            (r"lm_head\.weight", ("*", "hidden")),
            (r"model\.(?:norm|layers\.\d+\.(?:input_layernorm|post_attention_layernorm))\.weight", ("hidden",)),
            (r"model\.layers\.(\d+)\.self_attn\.q_proj\.weight", ("L{1}.kv * L{1}.grp * L{1}.hd", "hidden")),
            (r"model\.layers\.(\d+)\.self_attn\.[kv]_proj\.weight", ("L{1}.kv * L{1}.hd", "hidden")),
            (r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight", ("hidden", "L{1}.kv * L{1}.grp * L{1}.hd")),
            # the shared MLP: input_linear = [gate | up] (chunk(2)), output_linear back to hidden
            (r"model\.layers\.(\d+)\.shared_mlp\.input_linear\.weight", ("L{1}.ffn | L{1}.ffn", "hidden")),
            (r"model\.layers\.(\d+)\.shared_mlp\.output_linear\.weight", ("hidden", "L{1}.ffn")),
        ] + _mamba2_rules("model", "mamba"), MAMBA2_SIZES | dict(kv=2, grp=2, hd=8, ffn=64))),
}
