"""The command line (``slicer shrink | plan | score | verify | demo | bench``) and what it prints.

``app`` parses arguments and owns the terminal and exit codes; ``report`` formats plans and
summaries; ``demo`` and ``bench`` are the commands of the same names.
"""
from .app import entry, main

__all__ = ["entry", "main"]
