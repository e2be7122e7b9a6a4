"""Which teachers a rotated hidden axis is offered for, and the role of each tensor (pure).

The roles, for a pre-norm RMSNorm decoder (``h = x + f(g * x / rms(x))``):
- ``embed``: writes the residual stream (its columns are hidden): ``E @ Q``;
- ``reader``: a linear that reads a norm's output (its input dimension is hidden):
  ``W @ diag(g_site) @ Q``, the site's gain folded in;
- ``writer``: a linear (or its bias) whose output is added to the residual stream: ``Q^T @ W``;
- ``norm``: a norm gain; the student's is one value per site (``statistics.site_gains``);
- ``other``: untouched (q/k norms, biases of readers, anything not bound to the hidden axis).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SlicerError

# model_type -> the prefix of the decoder (embeddings, layers, final norm) in checkpoint names.
OFFERED = {"llama": "model", "mistral": "model", "qwen2": "model", "qwen3": "model", "phi3": "model"}

# Why the others are refused: a rotation commutes with RMSNorm's division by rms, but not with
# LayerNorm's mean subtraction, nor with a gain applied after a norm on the branch output.
WHY_NOT = {
    "bert": "it is post-norm with LayerNorm (the norm acts on the sum, and LayerNorm subtracts the mean, "
            "which no rotation of the hidden axis commutes with)",
    "roberta": "it is post-norm with LayerNorm",
    "distilbert": "it is post-norm with LayerNorm",
    "gpt2": "its LayerNorm subtracts the mean, which no rotation of the hidden axis commutes with",
    "vit": "its LayerNorm subtracts the mean, which no rotation of the hidden axis commutes with",
    "clip": "its LayerNorm subtracts the mean, which no rotation of the hidden axis commutes with",
    "gemma3_text": "its post-attention and post-FFN norms apply their gains to the branch outputs in the "
                   "teacher's basis, which no rotation of the hidden axis commutes with",
    "gemma3": "its post-attention and post-FFN norms apply their gains to the branch outputs in the "
              "teacher's basis, which no rotation of the hidden axis commutes with",
}

READERS = {"input_layernorm": ("self_attn", ("q_proj", "k_proj", "v_proj", "qkv_proj")),
           "post_attention_layernorm": ("mlp", ("gate_proj", "up_proj", "gate_up_proj"))}
WRITERS = (("self_attn", "o_proj"), ("mlp", "down_proj"))


@dataclass(frozen=True)
class Role:
    kind: str  # embed | reader | writer | norm | other
    site: str | None = None  # reader/norm: the norm module whose gain (or output) it is


def check_offered(config: dict, where: str) -> str:
    """The decoder prefix of an offered teacher; a one-line refusal for any other."""
    model_type = config.get("model_type", "?")
    if model_type in OFFERED:
        if config.get("num_local_experts") or config.get("num_experts"):
            raise SlicerError(f"{where}: --hidden rotate does not handle experts yet ({model_type} with experts); "
                              "use --method importance for the hidden axis")
        return OFFERED[model_type]
    why = WHY_NOT.get(model_type, "rotation is implemented for pre-norm RMSNorm decoders only")
    raise SlicerError(f"{where}: --hidden rotate is not offered for {model_type} teachers: {why}; offered: "
                      f"{', '.join(sorted(OFFERED))}")


def norm_sites(prefix: str, layers: int) -> list[str]:
    """Module names of every norm whose input is the residual stream, in forward order."""
    out = []
    for i in range(layers):
        out += [f"{prefix}.layers.{i}.input_layernorm", f"{prefix}.layers.{i}.post_attention_layernorm"]
    return out + [f"{prefix}.norm"]


def roles(prefix: str, names: list[str]) -> dict[str, Role]:
    """The role of each checkpoint tensor (``lm_head.weight`` included when present)."""
    p = re.escape(prefix)
    layer = re.compile(rf"^({p}\.layers\.\d+)\.(\w+)\.(\w+)\.(weight|bias)$")
    norm = re.compile(rf"^({p}\.layers\.\d+\.(?:input_layernorm|post_attention_layernorm)|{p}\.norm)\.weight$")
    out: dict[str, Role] = {}
    for name in names:
        if name == f"{prefix}.embed_tokens.weight":
            out[name] = Role("embed")
        elif name == "lm_head.weight":
            out[name] = Role("reader", f"{prefix}.norm")
        elif (m := norm.match(name)):
            out[name] = Role("norm", m.group(1))
        elif (m := layer.match(name)):
            base, block, linear, kind = m.groups()
            if (block, linear) in WRITERS:
                out[name] = Role("writer")
            else:
                site = next((s for s, (b, ls) in READERS.items() if b == block and linear in ls), None)
                out[name] = Role("reader", f"{base}.{site}") if site and kind == "weight" else Role("other")
        else:
            out[name] = Role("other")
    return out
