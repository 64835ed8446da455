"""The integer CG engine against sympy's Condon–Shortley CG (docs/CONVENTIONS.md §5.1), on fresh random indices."""

from __future__ import annotations

import random

import numpy as np
import pytest
import sympy
from sympy.physics.quantum.cg import CG

from sphc.cg import cg_block, cg_exact, pattern_values, table_sha256
from sphc.layout import cg_offsets, cg_pattern, cg_pattern_size


@pytest.fixture
def rng() -> random.Random:
    """A fresh seed each run; it is printed so a failure can be replayed."""
    seed = random.SystemRandom().randrange(2**32)
    print(f"random seed: {seed}")
    return random.Random(seed)


def _random_index(rng: random.Random, lmax: int) -> tuple[int, int, int, int, int, int]:
    """(l1, m1, l2, m2, l, m) obeying the triangle rule; m = m1 + m2 for 3 draws in 4, else arbitrary."""
    l1, l2 = rng.randint(0, lmax), rng.randint(0, lmax)
    l = rng.randint(abs(l1 - l2), min(l1 + l2, lmax))
    m1, m2 = rng.randint(-l1, l1), rng.randint(-l2, l2)
    m = m1 + m2 if rng.random() < 0.75 and abs(m1 + m2) <= l else rng.randint(-l, l)
    return l1, m1, l2, m2, l, m


# Zero by a rule (l1 + l2 - l odd at m1 = m2 = 0, or at l1 = l2, m1 = m2) and accidentally (no rule).
RULE_ZEROS = [(1, 0, 1, 0, 1, 0), (2, 0, 2, 0, 3, 0), (1, 0, 2, 0, 2, 0), (2, 1, 2, 1, 3, 2)]
ACCIDENTAL_ZEROS = [(2, -1, 3, 2, 2, 1), (2, 0, 3, 2, 3, 2), (3, 2, 3, -1, 3, 1)]
KNOWN_ZEROS = RULE_ZEROS + ACCIDENTAL_ZEROS


@pytest.mark.parametrize("index", KNOWN_ZEROS)
def test_known_zeros_are_exact(index: tuple[int, ...]) -> None:
    assert CG(*index).doit() == 0
    assert cg_exact(*index) == 0
    l1, m1, l2, m2, l, m = index
    b = cg_block(l1, l2, l)
    assert not np.any((b.m1 == m1) & (b.m == m)), "an exact zero must not be listed"


def test_exact_matches_sympy(rng: random.Random) -> None:
    for _ in range(200):
        index = _random_index(rng, 8)
        ours, ref = cg_exact(*index), CG(*index).doit()
        assert sympy.simplify(ours - ref) == 0, (index, ours, ref)


def test_exact_zero_outside_selection_rules() -> None:
    assert cg_exact(1, 1, 1, 0, 1, 0) == 0  # m != m1 + m2
    assert cg_exact(1, 2, 1, 0, 2, 2) == 0  # |m1| > l1
    assert cg_exact(1, 0, 1, 0, 3, 0) == 0  # triangle rule fails


def _dense_sympy_check(l1: int, l2: int, l: int) -> None:
    """Every (m1, m2) of the triple: listed entries within 1e-15 relative, unlisted ones exactly zero."""
    block = cg_block(l1, l2, l)
    listed = {(int(a), int(b)): v for a, b, v in zip(block.m1, block.m2, block.values, strict=True)}
    for m1 in range(-l1, l1 + 1):
        for m2 in range(-l2, l2 + 1):
            if abs(m1 + m2) > l:
                continue
            ref = float(CG(l1, m1, l2, m2, l, m1 + m2).doit())
            ours = listed.get((m1, m2), 0.0)
            assert ours == pytest.approx(ref, rel=1e-15, abs=0.0), (l1, m1, l2, m2, l)


def test_block_floats_match_sympy(rng: random.Random) -> None:
    for _ in range(4):
        l1, l2 = rng.randint(0, 12), rng.randint(0, 12)
        _dense_sympy_check(l1, l2, rng.randint(abs(l1 - l2), l1 + l2))


def test_block_floats_match_sympy_edges() -> None:
    # includes odd l1 + l2 - l, where the m < 0 half carries the phase (-1)^(l1+l2-l)
    for triple in [(0, 0, 0), (0, 5, 5), (5, 0, 5), (6, 6, 0), (6, 6, 12), (7, 3, 4), (4, 3, 2), (5, 5, 3)]:
        _dense_sympy_check(*triple)


def _dense_cg_matrix(l1: int, l2: int) -> np.ndarray:
    """Rows (l, m) for all l, columns (m1, m2): the unitary change of basis the CG coefficients form."""
    n1, n2 = 2 * l1 + 1, 2 * l2 + 1
    rows = []
    for l in range(abs(l1 - l2), l1 + l2 + 1):
        b = cg_block(l1, l2, l)
        mat = np.zeros((2 * l + 1, n1 * n2))
        mat[b.m + l, (b.m1 + l1) * n2 + (b.m2 + l2)] = b.values
        rows.append(mat)
    return np.vstack(rows)


@pytest.mark.parametrize("l1", range(7))
def test_orthogonality(l1: int) -> None:
    for l2 in range(7):
        mat = _dense_cg_matrix(l1, l2)
        eye = np.eye(mat.shape[0])
        np.testing.assert_allclose(mat @ mat.T, eye, rtol=0, atol=1e-13)
        np.testing.assert_allclose(mat.T @ mat, eye, rtol=0, atol=1e-13)


def test_swap_symmetry(rng: random.Random) -> None:
    for _ in range(30):
        l1, l2 = rng.randint(0, 15), rng.randint(0, 15)
        l = rng.randint(abs(l1 - l2), l1 + l2)
        a, b = cg_block(l1, l2, l), cg_block(l2, l1, l)
        ours = {(int(x), int(y), int(m)): v for x, y, m, v in zip(a.m1, a.m2, a.m, a.values, strict=True)}
        swapped = {(int(y), int(x), int(m)): v for x, y, m, v in zip(b.m1, b.m2, b.m, b.values, strict=True)}
        assert ours.keys() == swapped.keys()
        phase = (-1) ** (l1 + l2 - l)
        for k, v in ours.items():
            assert phase * swapped[k] == pytest.approx(v, rel=1e-15, abs=0.0), (l1, l2, l, k)


def test_canonical_order(rng: random.Random) -> None:
    for _ in range(30):
        l1, l2 = rng.randint(0, 15), rng.randint(0, 15)
        l = rng.randint(abs(l1 - l2), l1 + l2)
        b = cg_block(l1, l2, l)
        for a in (b.m1, b.m2, b.m):
            assert a.dtype == np.int64
        assert b.values.dtype == np.float64
        assert np.all(b.m == b.m1 + b.m2)
        assert np.all(np.abs(b.m1) <= l1) and np.all(np.abs(b.m2) <= l2) and np.all(np.abs(b.m) <= l)
        assert np.all(b.values != 0)
        key = b.m * (4 * max(l1, 1) + 1) + b.m1  # m major, m1 minor
        assert np.all(np.diff(key) > 0), "entries must be strictly sorted by (m, m1)"
        assert set(np.unique(b.m)) <= set(range(-l, l + 1))


def test_pattern_values_place_every_entry_on_the_pattern(rng: random.Random) -> None:
    """pattern_values puts each nonzero C^{lm}_{l1 m1, l2 m2} at its (m, m1) slot of layout.cg_pattern
    (m ascending, then m1) and zeros elsewhere; checked entry by entry against the exact engine."""
    paths = [(4, 5, 3), (2, 2, 2), (0, 3, 3), (3, 1, 4)]
    values = pattern_values(paths)
    assert len(values) == sum(cg_pattern_size(*p) for p in paths)
    offsets = cg_offsets(paths)
    for p in paths:
        m, m1 = cg_pattern(*p)
        assert len(m) == cg_pattern_size(*p) and np.all(np.diff(m * 100 + m1) > 0)
        got = values[offsets[p] : offsets[p] + len(m)]
        want = [float(cg_exact(p[0], a, p[1], b - a, p[2], b)) for b, a in zip(m.tolist(), m1.tolist())]
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)
    assert table_sha256(values) == table_sha256(values.copy()) != table_sha256(values[::-1])


def test_blocks_are_memoised_and_read_only() -> None:
    b = cg_block(3, 4, 5)
    assert cg_block(3, 4, 5) is b
    with pytest.raises(ValueError):
        b.values[0] = 1.0


@pytest.mark.parametrize("triple", [(1, 1, 3), (2, 0, 1), (0, 3, 2), (5, 1, 7), (-1, 0, 1), (0, 0, -1)])
def test_triangle_violations_raise(triple: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        cg_block(*triple)


def test_pattern_values_concatenate_and_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SPHC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SPHC_NO_CACHE", raising=False)
    paths = [(1, 1, 2), (0, 3, 3), (2, 3, 1)]
    want = np.concatenate([pattern_values([p]) for p in paths])
    np.testing.assert_array_equal(pattern_values(paths), want)
    assert len(list(tmp_path.rglob("*.npz"))) == 4
    np.testing.assert_array_equal(pattern_values(paths), want)  # now from disk
    assert pattern_values([]).shape == (0,)


def test_pattern_values_without_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SPHC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SPHC_NO_CACHE", "1")
    assert np.count_nonzero(pattern_values([(2, 2, 2)])) == len(cg_block(2, 2, 2).values)
    assert not list(tmp_path.rglob("*.npz"))
