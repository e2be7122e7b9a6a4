"""Which teachers a rotated hidden axis is offered for (pure).

Offered where the full-width rotation is tested exact (tests/test_rotation.py): pre-norm
RMSNorm decoders, dense or MoE, and MLA. The role of each tensor is not read from its name
but observed on the teacher's forward (``observe``) and on the plan's bindings (``roles``).
"""
from __future__ import annotations

from ..errors import SlicerError

OFFERED = ("llama", "mistral", "qwen2", "qwen3", "phi3", "qwen3_moe", "mixtral", "deepseek_v3")
# Multimodal models whose language model is rotated (its text_config one of OFFERED); the projector's last
# linear writes the LM's residual stream, the vision tower is selected as usual.
MULTIMODAL = ("llava",)

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

def check_offered(config: dict, where: str) -> str:
    """The teacher's model type where offered; a one-line refusal for any other."""
    model_type = config.get("model_type", "?")
    if model_type in OFFERED:
        return model_type
    if model_type in MULTIMODAL:
        text = (config.get("text_config") or {}).get("model_type", "llama")
        if text in OFFERED:
            return model_type
        raise SlicerError(f"{where}: --hidden rotate is not offered for {model_type} teachers whose language model "
                          f"is {text}; offered: {', '.join(OFFERED)}")
    why = WHY_NOT.get(model_type, "rotation is implemented for pre-norm RMSNorm decoders only")
    raise SlicerError(f"{where}: --hidden rotate is not offered for {model_type} teachers: {why}; offered: "
                      f"{', '.join(sorted(OFFERED + MULTIMODAL))}")
