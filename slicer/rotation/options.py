"""The CLI's rotation options (``slicer shrink --hidden rotate``): defined once, here."""
from __future__ import annotations

HIDDEN_CHOICES = ("select", "rotate")
WEIGHTING_CHOICES = ("normalized", "raw")


def add_arguments(parser) -> None:
    group = parser.add_argument_group("rotated hidden axis (Llama, Mistral, Qwen2/3, Phi-3, Qwen3-MoE, Mixtral, DeepSeek-V3, "
                                      "Llava teachers)")
    group.add_argument("--hidden", choices=HIDDEN_CHOICES, default="select",
                       help="select: the hidden axis keeps a subset of the teacher's channels (by --method); rotate: it "
                            "keeps the top principal components of the residual stream measured on the calibration "
                            "data (--calibration, --samples, --seq-len), norm gains folded, the head untied; the other "
                            "axes are still chosen by --method (default select)")
    group.add_argument("--rotation-weighting", choices=WEIGHTING_CHOICES, default="normalized",
                       help="rotate: sum the residual stream's covariance over norm sites with each token scaled to "
                            "unit rms first, as the norm sees it (normalized), or as is (raw: dominated by the late "
                            "layers' large activations; measured far worse) (default normalized)")
    group.add_argument("--save-rotation", action="store_true",
                       help="rotate: also write the d x d rotation into OUT as rotation.safetensors")


def kwargs(args) -> dict:
    if args.hidden == "select":
        return {}
    return {"hidden": args.hidden, "rotation_weighting": args.rotation_weighting, "save_rotation": args.save_rotation}
