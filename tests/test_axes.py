"""The axes algebra: layouts composed from one index set per leaf axis (no model needed).

Expected indices are written out from the spec (docs: "Attention heads", "Axes"), not with
slicer's formulas; ``uniform`` below is the reference from tests/helpers.py.
"""
from __future__ import annotations

import pytest

from helpers import ref_uniform as uniform
from slicer import SlicerError
from slicer.axes import Axis, AxisTable, Chooser, axis, compose, concat, format_layout, parse_layout, product


def heads_table(heads, kv, dim, heads_s, kv_s, dim_s, rotary=None):
    """kv-heads, group, q-heads = kv-heads * group, head-dim (rotary: 2 * pairs or pairs * 2)."""
    t = AxisTable()
    t.add(Axis("kv", "kv-heads", kv, kv_s))
    t.add(Axis("group", "group", heads // kv, heads_s // kv_s))
    t.add(Axis("q", "q-heads", heads, heads_s, product("kv", "group")))
    if rotary and dim != dim_s:
        t.add(Axis("pairs", "rotary-pairs", dim // 2, dim_s // 2))
        t.add(Axis("dim", "head-dim", dim, dim_s, product(2, "pairs") if rotary == "halves" else product("pairs", 2)))
    else:
        t.add(Axis("dim", "head-dim", dim, dim_s))
    return t


def rows(table, layout, method="uniform", seed=0):
    return Chooser(method, seed).dim(table, layout).indices()


def test_fused_qkv_rows_keep_whole_heads_in_each_block():
    # [q | k | v] of 4 heads of 4 -> 2 heads of 4, uniform: heads [0, 2] in every block
    t = heads_table(4, 4, 4, 2, 2, 4)
    qkv = concat(product("q", "dim"), product("kv", "dim"), product("kv", "dim"))
    assert rows(t, qkv) == [b * 16 + h * 4 + i for b in range(3) for h in (0, 2) for i in range(4)]


def test_grouped_query_heads_are_whole_heads_of_the_kept_groups():
    # 12 heads in 4 groups of 3 -> 4 heads in 2 groups of 2: K = [0, 2], Q = round(linspace(0, 2, 2)) = [0, 2]
    t = heads_table(12, 4, 2, 4, 2, 2)
    assert rows(t, product("q", "dim")) == [h * 2 + i for h in (0, 2, 6, 8) for i in range(2)]
    assert rows(t, product("kv", "dim")) == [h * 2 + i for h in (0, 2) for i in range(2)]


def test_interleaved_query_key_value_keeps_each_heads_q_k_v():
    # GPT-NeoX query_key_value: rows per head [q, k, v]; 4 heads of 2 -> 2 heads: heads [0, 2]
    t = heads_table(4, 4, 2, 2, 2, 2)
    assert rows(t, product("q", 3, "dim")) == [h * 6 + part * 2 + i for h in (0, 2) for part in range(3) for i in range(2)]


@pytest.mark.parametrize("rotary, want", [("halves", [0, 2, 4, 6]), ("interleaved", [0, 1, 4, 5])])
def test_a_smaller_rotary_head_keeps_each_rotary_pair(rotary, want):
    # head size 8 -> 4, uniform over the 4 pairs keeps pairs [0, 2]: halves pair i with i + 4, interleaved 2i with 2i + 1
    t = heads_table(2, 2, 8, 2, 2, 4, rotary=rotary)
    assert rows(t, product("dim")) == want


def test_gate_and_up_halves_and_interleaved_pairs_keep_the_same_neurons():
    t = AxisTable()
    t.add(Axis("ffn", "ffn", 12, 5))
    kept = uniform(12, 5)
    assert rows(t, concat(axis("ffn"), axis("ffn"))) == kept + [12 + i for i in kept]
    assert rows(t, product("ffn", 2)) == [2 * i + j for i in kept for j in range(2)]


def test_random_method_keeps_the_same_heads_in_every_layout():
    t = heads_table(8, 4, 4, 2, 2, 4)
    c = Chooser("random", 7)
    q = c.dim(t, product("q", "dim")).indices()
    k = c.dim(t, product("kv", "dim")).indices()
    kept_kv = c.leaf(t["kv"]).indices()
    within = c.leaf(t["group"]).indices()
    heads = [kv * 2 + g for kv in kept_kv for g in within]
    assert q == [h * 4 + i for h in heads for i in range(4)]
    assert k == [h * 4 + i for h in kept_kv for i in range(4)]


def test_a_leaf_under_a_consistent_method_has_the_reference_key_and_indices():
    # the flat rule of the paper: one set per (t, s), whatever the axis is called
    t = AxisTable()
    t.add(Axis("a:ffn", "ffn", 11, 4))
    t.add(Axis("b:ffn", "ffn", 11, 4))
    c = Chooser("uniform")
    assert c.dim(t, (("a:ffn",),)).key == c.dim(t, (("b:ffn",),)).key == "uniform:11->4"
    assert c.dim(t, (("a:ffn",),)).indices() == uniform(11, 4)


def test_the_inconsistent_ablation_draws_per_dimension():
    t = AxisTable()
    t.add(Axis("ffn", "ffn", 50, 10))
    c = Chooser("random-inconsistent", 3)
    a, b = c.dim(t, (("ffn",),), "x/0").indices(), c.dim(t, (("ffn",),), "y/1").indices()
    assert a != b and len(a) == len(b) == 10 and a == sorted(a)


def test_positions_keep_the_first_members_whatever_the_method():
    t = AxisTable()
    t.add(Axis("pos", "positions", 32, 8))
    assert rows(t, (("pos",),), "uniform") == list(range(8))


def test_an_axis_named_twice_with_other_sizes_is_refused():
    t = AxisTable()
    t.add(Axis("hidden", "hidden", 64, 32))
    with pytest.raises(SlicerError, match="hidden is 64 -> 32 hidden in one tensor and 48 -> 32"):
        t.add(Axis("hidden", "hidden", 48, 32))


def test_derived_axes_must_hold_their_parts():
    t = AxisTable()
    t.add(Axis("kv", "kv-heads", 4, 2))
    with pytest.raises(SlicerError, match="parts"):
        t.add(Axis("q", "q-heads", 8, 4, product("kv", 3)))


def test_layouts_round_trip_through_their_manifest_form():
    layout = concat(product("a:q", "a:dim"), product("a:kv", 2))
    assert parse_layout(format_layout(layout)) == layout
    assert format_layout(layout) == "a:q * a:dim | a:kv * 2"


def test_compose_is_the_row_major_product_of_leaf_members():
    t = AxisTable()
    t.add(Axis("x", "x", 3, 2))
    t.add(Axis("y", "y", 4, 2))
    members = {"x": [0, 2], "y": [1, 3]}
    assert compose(t, product("x", "y"), lambda ax: members[ax.name]) == [1, 3, 9, 11]
    assert compose(t, concat(axis("x"), axis("y")), lambda ax: members[ax.name]) == [0, 2, 4, 6]
