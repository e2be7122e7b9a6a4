"""The Triton kernels, installed as ``slicer.kernels`` (this folder; only they import triton).

The folder is never the top-level ``kernels``: PyPI's ``kernels`` (a dependency of
transformers >= 5.25, imported when a model is built) owns that name. ``python -m ...``
from a checkout's root puts the root first on ``sys.path``, where this folder would
shadow the distribution. Imported under that name, it hands over to the distribution
(or, when there is none, stays an empty module that transformers takes for an absent
package), so a checkout never changes what ``import kernels`` means.
"""
if __name__ == "kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _root]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _path)
    if _spec is None or _spec.loader is None:
        # No distribution: an empty module that reads as absent. transformers < 5.25 probes the optional
        # "kernels" by importing it when no metadata names it, and takes a module with neither __file__
        # nor __version__ for a stray namespace package, not an install; raising here broke its import.
        __file__ = None
    else:
        _module = importlib.util.module_from_spec(_spec)
        sys.modules["kernels"] = _module
        _spec.loader.exec_module(_module)
