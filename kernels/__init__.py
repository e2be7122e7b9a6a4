"""The Triton kernels, installed as ``slicer.kernels`` (this folder; only they import triton).

The folder is never the top-level ``kernels``: PyPI's ``kernels`` (a dependency of
transformers >= 5.25, imported when a model is built) owns that name. ``python -m ...``
from a checkout's root puts the root first on ``sys.path``, where this folder would
shadow the distribution. Imported under that name, it hands over to the distribution
(or, where there is none, stands in as an empty namespace package, which is what a bare
folder would be), so a checkout never changes what ``import kernels`` means.
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
        # No distribution: stand in as what a bare folder on sys.path would be, an empty
        # namespace package (no __file__, no __version__), which libraries that probe for
        # `kernels` (transformers' is_kernels_available) take for "not installed".
        import types

        _empty = types.ModuleType("kernels")
        _empty.__path__ = []
        sys.modules["kernels"] = _empty
    else:
        _module = importlib.util.module_from_spec(_spec)
        sys.modules["kernels"] = _module
        _spec.loader.exec_module(_module)
