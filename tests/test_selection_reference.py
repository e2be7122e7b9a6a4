"""slicer.selection index sets against the spec's formulas (tests/helpers.py reference)."""

from __future__ import annotations

import pytest

from helpers import exact_uniform, ref_consecutive, ref_uniform

T_MAX = 160  # brute-force range: every (t, s) with 1 <= s <= t <= T_MAX


def _all_pairs():
    return [(t, s) for t in range(1, T_MAX + 1) for s in range(1, t + 1)]


@pytest.fixture(scope="module")
def float32_vs_exact_disagreements():
    """(t, s) pairs where float32 torch.linspace rounding differs from exact rational rounding."""
    found = [(t, s) for t, s in _all_pairs() if ref_uniform(t, s) != exact_uniform(t, s)]
    # Known ones from the spec and from a brute force run.
    for pair in ((8934, 2686), (48, 23), (48, 45), (62, 27)):
        assert ref_uniform(*pair) != exact_uniform(*pair), pair
        found.append(pair)
    return found


def test_reference_finds_pairs_where_float32_linspace_and_exact_rounding_disagree(
        float32_vs_exact_disagreements):
    # Without such pairs the next test would not distinguish the two formulas.
    assert len(float32_vs_exact_disagreements) >= 50


def test_uniform_follows_float32_linspace_where_exact_rounding_disagrees(float32_vs_exact_disagreements):
    from slicer.selection import uniform_indices
    bad = [(t, s) for t, s in float32_vs_exact_disagreements if uniform_indices(t, s) != ref_uniform(t, s)]
    assert not bad, f"uniform_indices differs from float32 torch.linspace for {bad[:10]} ({len(bad)} pairs)"


def test_uniform_matches_reference_for_every_pair_up_to_160():
    from slicer.selection import uniform_indices
    bad = [(t, s) for t, s in _all_pairs() if uniform_indices(t, s) != ref_uniform(t, s)]
    assert not bad, f"{len(bad)} pairs differ, e.g. {bad[:10]}"


@pytest.mark.parametrize("t,s", [
    (8934, 2686),      # spec's float32-vs-exact example
    (384, 192), (768, 384), (1152, 576), (1536, 768),  # t % s == 0: ViT-S -> ViT-T
    (197, 197), (4096, 4096), (1, 1),                  # s == t: identity
    (1000, 1), (7, 1), (50257, 1),                     # s == 1
    (3072, 1000), (11008, 5504), (4097, 1025), (32000, 32000),
    (100003, 77777), (65536, 50000),                   # large, t % s != 0
])
def test_uniform_matches_reference_on_model_sized_pairs(t, s):
    from slicer.selection import uniform_indices
    got = uniform_indices(t, s)
    assert isinstance(got, list) and all(isinstance(i, int) for i in got), type(got)
    assert got == ref_uniform(t, s)


def test_uniform_is_identity_when_sizes_are_equal():
    from slicer.selection import uniform_indices
    for t in (1, 2, 3, 17, 197, 1000):
        assert uniform_indices(t, t) == list(range(t))


def test_uniform_with_divisible_sizes_is_strided_from_zero_and_never_reaches_the_end():
    from slicer.selection import uniform_indices
    for t, s in ((8, 4), (12, 3), (384, 192), (100, 25), (9, 3)):
        got = uniform_indices(t, s)
        assert got == [i * (t // s) for i in range(s)]
        assert got[-1] != t - 1


def test_uniform_with_non_divisible_sizes_spans_first_to_last():
    from slicer.selection import uniform_indices
    for t, s in ((10, 4), (197, 100), (8934, 2686), (5, 3)):
        got = uniform_indices(t, s)
        assert got[0] == 0 and got[-1] == t - 1
        assert got == sorted(set(got)) and len(got) == s


def test_uniform_rounds_ties_half_to_even():
    from slicer.selection import uniform_indices
    # linspace(0, 3, 3) = [0, 1.5, 3] -> [0, 2, 3]; linspace(0, 5, 3) = [0, 2.5, 5] -> [0, 2, 5]
    assert uniform_indices(4, 3) == [0, 2, 3]
    assert uniform_indices(6, 3) == [0, 2, 4]  # 6 % 3 == 0: stride 2, not linspace
    assert uniform_indices(6, 4) == [0, 2, 3, 5]  # [0, 1.667, 3.333, 5]


def test_consecutive_is_the_first_s_for_every_pair_up_to_160():
    from slicer.selection import consecutive_indices
    bad = [(t, s) for t, s in _all_pairs() if consecutive_indices(t, s) != ref_consecutive(t, s)]
    assert not bad, bad[:10]


def test_consecutive_on_model_sized_pairs():
    from slicer.selection import consecutive_indices
    for t, s in ((8934, 2686), (4096, 4096), (1000, 1), (1152, 576)):
        got = consecutive_indices(t, s)
        assert isinstance(got, list) and all(isinstance(i, int) for i in got)
        assert got == list(range(s))
