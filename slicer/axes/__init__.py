"""Axes: every tensor dimension bound to named axis instances, one index set per axis.

``layout`` is the algebra (axes, layouts, composition), ``choose`` gives every leaf axis its
index set by the run's method, ``binding`` is what the plan asks of a model's structure
(the flat binder knows nothing; ``slicer.hf.bindings`` derives it from transformers).
"""
from .binding import Binder, complete, flat_axis
from .choose import Chooser, Ranking
from .layout import Axis, AxisTable, Layout, axis, compose, concat, format_layout, parse_layout, product

__all__ = ["Axis", "AxisTable", "Binder", "Chooser", "Layout", "Ranking", "axis", "complete", "compose", "concat",
           "flat_axis", "format_layout", "parse_layout", "product"]
