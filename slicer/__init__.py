"""slicer: initialize a small model from a large checkpoint by weight selection.

Streaming and bit-exact: ``plan`` reads headers only; ``shrink`` writes the student
with bounded memory. See README.md.
"""
from .version import __version__
from .api import Request, Summary, plan, shrink, stream  # noqa: E402
from .errors import SlicerError  # noqa: E402
from .importance import score  # noqa: E402
from .plan.build import Plan  # noqa: E402
from .verify import VerifyReport, verify  # noqa: E402

__all__ = ["Plan", "Request", "SlicerError", "Summary", "VerifyReport", "plan", "score", "shrink", "stream", "verify",
           "__version__"]
