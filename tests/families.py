"""Tiny transformers teachers per family, a shrink of each, and the spec of what each
teacher tensor dimension holds (for tests/consistency.py). No slicer import.

A family entry: config class, teacher config, the student's --set edits, and the spec
rules + axis sizes. Specs are written from the model's documented structure (transformers'
modeling code), independently of slicer's bindings: they are the oracle.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from consistency import Spec, coded_teacher

VOCAB = 96


@dataclass
class Family:
    config_class: str
    config: dict
    edits: dict  # the student: --set edits of width, depth, heads (and experts where there are some)
    spec: Spec
    inputs: str | Callable[[dict], dict] = "text"  # "text", "image", or config.json -> forward kwargs
    extra: dict = field(default_factory=dict)


def _llama_like(prefix: str = "model", q_norm: str | None = None, extra_norms: tuple[str, ...] = ()) -> list:
    L = rf"{prefix}\.layers\.(\d+)\."
    rules = [
        (rf"{prefix}\.embed_tokens\.weight", ("*", "hidden")),
        (r"lm_head\.weight", ("*", "hidden")),
        (rf"{prefix}\.norm\.weight", ("hidden",)),
        (L + r"(?:input_layernorm|post_attention_layernorm" + "".join("|" + n for n in extra_norms) + r")\.weight",
         ("hidden",)),
        (L + r"self_attn\.q_proj\.weight", ("L{1}.kv * L{1}.grp * L{1}.hd", "hidden")),
        (L + r"self_attn\.[kv]_proj\.weight", ("L{1}.kv * L{1}.hd", "hidden")),
        (L + r"self_attn\.q_proj\.bias", ("L{1}.kv * L{1}.grp * L{1}.hd",)),
        (L + r"self_attn\.[kv]_proj\.bias", ("L{1}.kv * L{1}.hd",)),
        (L + r"self_attn\.o_proj\.weight", ("hidden", "L{1}.kv * L{1}.grp * L{1}.hd")),
        (L + r"mlp\.(?:gate|up)_proj\.weight", ("L{1}.ffn", "hidden")),
        (L + r"mlp\.down_proj\.weight", ("hidden", "L{1}.ffn")),
    ]
    if q_norm == "head":
        rules.append((L + r"self_attn\.[qk]_norm\.weight", ("L{1}.hd",)))
    return rules


LLAMA_SIZES = dict(hidden=64, kv=4, grp=2, hd=8, ffn=128)
LLAMA_EDITS = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2)

FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaConfig", dict(architectures=["LlamaForCausalLM"], hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, head_dim=8,
                                        vocab_size=VOCAB, tie_word_embeddings=False),
                    LLAMA_EDITS, Spec(_llama_like(), LLAMA_SIZES)),
    "qwen3": Family("Qwen3Config", dict(architectures=["Qwen3ForCausalLM"], hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, head_dim=8,
                                        vocab_size=VOCAB, tie_word_embeddings=False),
                    LLAMA_EDITS, Spec(_llama_like(q_norm="head"), LLAMA_SIZES)),
    "mistral": Family("MistralConfig", dict(architectures=["MistralForCausalLM"], hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                                            head_dim=8, vocab_size=VOCAB, tie_word_embeddings=False),
                      LLAMA_EDITS, Spec(_llama_like(), LLAMA_SIZES)),
    "gemma3_text": Family("Gemma3TextConfig", dict(architectures=["Gemma3ForCausalLM"], hidden_size=64,
                                                   intermediate_size=128, num_hidden_layers=4, num_attention_heads=8,
                                                   num_key_value_heads=4, head_dim=8, vocab_size=VOCAB,
                                                   sliding_window=16, max_position_embeddings=64),
                          LLAMA_EDITS, Spec(_llama_like(q_norm="head", extra_norms=("pre_feedforward_layernorm",
                                                                                    "post_feedforward_layernorm")),
                                            LLAMA_SIZES)),
    "gpt2": Family("GPT2Config", dict(architectures=["GPT2LMHeadModel"], n_embd=64, n_layer=4, n_head=4, n_positions=32,
                                      vocab_size=VOCAB, bos_token_id=0, eos_token_id=0),
                   dict(n_embd=32, n_layer=2, n_head=2),
                   Spec([
                       (r"transformer\.wte\.weight", ("*", "hidden")),
                       (r"transformer\.wpe\.weight", ("*", "hidden")),
                       (r"transformer\.(?:ln_f|h\.\d+\.ln_[12])\.(?:weight|bias)", ("hidden",)),
                       # Conv1D stores [in, out]; c_attn's out is [q | k | v], each heads x head dim
                       (r"transformer\.h\.(\d+)\.attn\.c_attn\.weight",
                        ("hidden", "L{1}.h * L{1}.hd | L{1}.h * L{1}.hd | L{1}.h * L{1}.hd")),
                       (r"transformer\.h\.(\d+)\.attn\.c_attn\.bias", ("L{1}.h * L{1}.hd | L{1}.h * L{1}.hd | L{1}.h * L{1}.hd",)),
                       (r"transformer\.h\.(\d+)\.attn\.c_proj\.weight", ("L{1}.h * L{1}.hd", "hidden")),
                       (r"transformer\.h\.\d+\.attn\.c_proj\.bias", ("hidden",)),
                       (r"transformer\.h\.(\d+)\.mlp\.c_fc\.weight", ("hidden", "L{1}.ffn")),
                       (r"transformer\.h\.(\d+)\.mlp\.c_fc\.bias", ("L{1}.ffn",)),
                       (r"transformer\.h\.(\d+)\.mlp\.c_proj\.weight", ("L{1}.ffn", "hidden")),
                       (r"transformer\.h\.\d+\.mlp\.c_proj\.bias", ("hidden",)),
                   ], dict(hidden=64, h=4, hd=16, ffn=256))),
    "bert": Family("BertConfig", dict(architectures=["BertForMaskedLM"], hidden_size=64, num_hidden_layers=4,
                                      num_attention_heads=4, intermediate_size=128, vocab_size=VOCAB,
                                      max_position_embeddings=32),
                   dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48),
                   Spec([
                       (r"bert\.embeddings\.(?:word|position|token_type)_embeddings\.weight", ("*", "hidden")),
                       (r"bert\.embeddings\.LayerNorm\.(?:weight|bias)", ("hidden",)),
                       (r"bert\.encoder\.layer\.(\d+)\.attention\.self\.(?:query|key|value)\.weight",
                        ("L{1}.h * L{1}.hd", "hidden")),
                       (r"bert\.encoder\.layer\.(\d+)\.attention\.self\.(?:query|key|value)\.bias", ("L{1}.h * L{1}.hd",)),
                       (r"bert\.encoder\.layer\.(\d+)\.attention\.output\.dense\.weight", ("hidden", "L{1}.h * L{1}.hd")),
                       (r"bert\.encoder\.layer\.\d+\.(?:attention\.)?output\.(?:dense\.bias|LayerNorm\.weight|LayerNorm\.bias)",
                        ("hidden",)),
                       (r"bert\.encoder\.layer\.(\d+)\.intermediate\.dense\.weight", ("L{1}.ffn", "hidden")),
                       (r"bert\.encoder\.layer\.(\d+)\.intermediate\.dense\.bias", ("L{1}.ffn",)),
                       (r"bert\.encoder\.layer\.(\d+)\.output\.dense\.weight", ("hidden", "L{1}.ffn")),
                       (r"cls\.predictions\.transform\.dense\.weight", ("hidden", "hidden")),
                       (r"cls\.predictions\.transform\.(?:dense\.bias|LayerNorm\.weight|LayerNorm\.bias)", ("hidden",)),
                       (r"cls\.predictions\.(?:bias|decoder\.bias)", ("*",)),
                       (r"cls\.predictions\.decoder\.weight", ("*", "hidden")),
                   ], dict(hidden=64, h=4, hd=16, ffn=128))),
    "vit": Family("ViTConfig", dict(architectures=["ViTForImageClassification"], hidden_size=64, num_hidden_layers=4,
                                    num_attention_heads=4, intermediate_size=128, image_size=16, patch_size=4,
                                    num_labels=3),
                  dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48),
                  Spec([
                      (r"vit\.embeddings\.cls_token", ("*", "*", "hidden")),
                      (r"vit\.embeddings\.position_embeddings", ("*", "*", "hidden")),
                      (r"vit\.embeddings\.patch_embeddings\.projection\.weight", ("hidden", "*", "*", "*")),
                      (r"vit\.(?:embeddings\.patch_embeddings\.projection\.bias|layernorm\.(?:weight|bias))", ("hidden",)),
                      (r"vit\.encoder\.layer\.\d+\.(?:layernorm_before|layernorm_after)\.(?:weight|bias)", ("hidden",)),
                      (r"vit\.encoder\.layer\.(\d+)\.attention\.attention\.(?:query|key|value)\.weight",
                       ("L{1}.h * L{1}.hd", "hidden")),
                      (r"vit\.encoder\.layer\.(\d+)\.attention\.attention\.(?:query|key|value)\.bias", ("L{1}.h * L{1}.hd",)),
                      (r"vit\.encoder\.layer\.(\d+)\.attention\.output\.dense\.weight", ("hidden", "L{1}.h * L{1}.hd")),
                      (r"vit\.encoder\.layer\.\d+\.(?:attention\.)?output\.dense\.bias", ("hidden",)),
                      (r"vit\.encoder\.layer\.(\d+)\.intermediate\.dense\.weight", ("L{1}.ffn", "hidden")),
                      (r"vit\.encoder\.layer\.(\d+)\.intermediate\.dense\.bias", ("L{1}.ffn",)),
                      (r"vit\.encoder\.layer\.(\d+)\.output\.dense\.weight", ("hidden", "L{1}.ffn")),
                      (r"classifier\.weight", ("*", "hidden")),
                      (r"classifier\.bias", ("*",)),
                  ], dict(hidden=64, h=4, hd=16, ffn=128)), inputs="image"),
}


# Family groups live in their own modules (families_moe.py, ...): each adds its FAMILIES here,
# so tests/test_consistency.py checks every family of every group.
for _group in ("families_moe", "families_attention", "families_multimodal", "families_quant", "families_bindings"):
    try:
        FAMILIES |= importlib.import_module(_group).FAMILIES
    except ModuleNotFoundError as _e:
        if _e.name != _group:
            raise


def build(folder: Path, fam: Family, *, coded: bool, config: dict | None = None, seed: int = 0) -> Path:
    """save_pretrained of a tiny teacher: random weights (every tensor distinct), or codes."""
    import transformers

    cfg = getattr(transformers, fam.config_class)(**(config or fam.config))
    cls = getattr(transformers, (config or fam.config)["architectures"][0])
    torch.manual_seed(seed)
    model = cls(cfg)
    if coded:
        coded_teacher(model)
    else:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder, max_shard_size="200KB")
    return folder


def example_inputs(fam: Family, config: dict) -> dict:
    gen = torch.Generator().manual_seed(1)
    if callable(fam.inputs):
        return fam.inputs(config)
    if fam.inputs == "image":
        size = config.get("image_size", 16)
        return {"pixel_values": torch.randn(2, config.get("num_channels", 3), size, size, generator=gen)}
    return {"input_ids": torch.randint(0, min(VOCAB, config.get("vocab_size", VOCAB)), (2, 7), generator=gen)}
