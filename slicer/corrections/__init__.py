"""Corrections for what is cut: after a student is written, refit some of its linear maps so
that, fed the student's own inputs, they reproduce the teacher's outputs (ridge least squares,
layer by layer, streamed). Values change, never which members are kept."""
from .refit import CORRECTIONS, check_request, correct, parse, ridge

__all__ = ["CORRECTIONS", "check_request", "correct", "parse", "ridge"]
