"""Degree-mixing sets: the rules of docs/CONVENTIONS.md §8 and their measured growth with L."""

from __future__ import annotations

import math

import pytest

from sphc.compiler.ir import Mixing
from sphc.compiler.mixing import mixing_set


def _mean_pairs(mix: Mixing, L: int) -> float:
    sets = mixing_set(mix, range(L), L)
    return sum(len(p) for p in sets.values()) / L


def test_full_is_every_triangle_pair():
    L = 7
    sets = mixing_set(Mixing.FULL, range(L), L)
    for l, pairs in sets.items():
        expect = {(a, b) for a in range(L) for b in range(a, L) if abs(a - b) <= l <= a + b}
        assert set(pairs) == expect


def test_mst_matches_the_reference_rule_at_L8():
    """docs/CONVENTIONS.md §8 lists the MST (+ self pairs) of CGNet's rule for L = 8."""
    sets = mixing_set(Mixing.MST, range(8), 8)
    assert [len(sets[l]) for l in (0, 1, 2, 3, 7)] == [8, 14, 14, 13, 11]
    assert [p for p in sets[2] if p[0] != p[1]] == [(0, 2), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7)]


@pytest.mark.parametrize("mix", list(Mixing))
def test_pairs_obey_the_triangle_rule(mix):
    for l, pairs in mixing_set(mix, range(12), 12).items():
        for a, b in pairs:
            assert a <= b and abs(a - b) <= l <= a + b


def test_mst_spans_every_degree_for_l_ge_1():
    L = 16
    for l, pairs in mixing_set(Mixing.MST, range(L), L).items():
        if l == 0:
            continue
        parent = list(range(L))
        for a, b in pairs:
            parent[_root(parent, a)] = _root(parent, b)
        assert len({_root(parent, n) for n in range(L)}) == 1, (
            f"l={l}: MST does not connect all input degrees"
        )


def _root(parent: list[int], n: int) -> int:
    while parent[n] != n:
        n = parent[n]
    return n


def test_rmst_uses_every_input_degree_somewhere():
    L = 32
    used = {d for pairs in mixing_set(Mixing.RMST, range(L), L).values() for p in pairs for d in p}
    assert used == set(range(L))


def test_measured_growth_of_pairs_per_degree():
    """Pairs per output degree: full O(L²), MST O(L), RMST O(log L) (docs/CONVENTIONS.md §8)."""
    Ls = (8, 16, 32, 64)
    full = [_mean_pairs(Mixing.FULL, L) for L in Ls]
    mst = [_mean_pairs(Mixing.MST, L) for L in Ls]
    rmst = [_mean_pairs(Mixing.RMST, L) for L in Ls]
    slope = lambda ys: math.log(ys[-1] / ys[-2]) / math.log(2)  # noqa: E731 - local fit
    assert 1.8 < slope(full) < 2.2, full
    assert 0.9 < slope(mst) < 1.1, mst
    # logarithmic: each doubling of L adds a bounded number of pairs, and the ratio tends to 1
    steps = [b - a for a, b in zip(rmst, rmst[1:])]
    assert max(steps) < 8 and steps[-1] <= steps[0] + 1, rmst
    assert slope(rmst) < 0.4, rmst
