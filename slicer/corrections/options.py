"""The CLI's correction options (``slicer shrink --correct``): defined once, here."""
from __future__ import annotations

CORRECTIONS = ("writers", "readers", "lm_head", "bias")
DEFAULT_ALPHA = 0.1  # measured best of 0.001, 0.01, 0.1, 1 on SmolLM2 (docs/corrections.md)


def add_arguments(parser) -> None:
    group = parser.add_argument_group("corrections for what is cut (teachers transformers can run; local, not quantized)")
    group.add_argument("--correct", metavar="LIST", default=None,
                       help=f"after writing the student, refit these linear maps, comma-separated from "
                            f"{', '.join(CORRECTIONS)}: each fed the student's own inputs on the calibration data "
                            "(--calibration, --samples, --seq-len), layer by layer, against the teacher's outputs "
                            "(writers: o_proj, down_proj: the teacher's whole output in the student's hidden basis; "
                            "readers: q/k/v, gate/up: the kept members' outputs; lm_head: the teacher's logits; bias: a "
                            "writer's bias alone moved by the mean it misses, FLAP's compensation); ridge least squares, "
                            "which members are kept is unchanged (default: none)")
    group.add_argument("--correct-alpha", type=float, default=DEFAULT_ALPHA, metavar="A",
                       help=f"the ridge's strength relative to the mean diagonal of each Gram (default {DEFAULT_ALPHA:g}; "
                            "larger keeps the written weights)")


def kwargs(args) -> dict:
    if not args.correct:
        return {}
    return {"correct": args.correct, "correct_alpha": args.correct_alpha}
