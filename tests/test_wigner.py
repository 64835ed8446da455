"""Wigner d/D against pyssht (the oracle for docs/CONVENTIONS.md §3.2's convention), plus group properties."""

from __future__ import annotations

import math

import numpy as np
import pyssht
import pytest

from sphc.runtime.wigner import half_pi_d, wigner_D, wigner_d

rng = np.random.default_rng()


def _random_angles() -> tuple[float, float, float]:
    return (rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi))


def _rotate(D: np.ndarray, flm: np.ndarray, L: int) -> np.ndarray:
    """(R f)_lm = sum_n D^l_{mn} f_ln on pyssht's 1-D layout l^2+l+m."""
    out = np.zeros_like(flm)
    for l in range(L):
        block = slice(L - 1 - l, L + l)
        out[l * l : (l + 1) ** 2] = D[l, block, block] @ flm[l * l : (l + 1) ** 2]
    return out


def _euler_zyz(R: np.ndarray) -> tuple[float, float, float]:
    """(alpha, beta, gamma) with R = Rz(alpha) Ry(beta) Rz(gamma), for beta away from 0 and pi."""
    beta = math.acos(np.clip(R[2, 2], -1.0, 1.0))
    return math.atan2(R[1, 2], R[0, 2]), beta, math.atan2(R[2, 1], -R[2, 0])


@pytest.mark.parametrize("L", [1, 2, 5, 16, 48])
def test_wigner_d_matches_pyssht(L: int) -> None:
    for beta in [0.0, np.pi / 2, np.pi, *rng.uniform(0, np.pi, 4)]:
        d = wigner_d(L, beta)
        assert d.shape == (L, 2 * L - 1, 2 * L - 1) and d.dtype == np.float64
        assert np.abs(d - pyssht.generate_dl(beta, L)).max() <= 1e-12


def test_wigner_d_is_orthogonal_at_high_degree() -> None:
    L = 128
    d = wigner_d(L, rng.uniform(0, np.pi))
    for l in (L - 1, L // 2):
        block = d[l, L - 1 - l : L + l, L - 1 - l : L + l]
        assert np.abs(block @ block.T - np.eye(2 * l + 1)).max() <= 1e-13


def test_half_pi_d_is_cached_and_read_only() -> None:
    delta = half_pi_d(7)
    assert delta is half_pi_d(7)
    assert not delta.flags.writeable
    np.testing.assert_array_equal(delta, wigner_d(7, np.pi / 2))


def test_wigner_d_rejects_bad_L() -> None:
    with pytest.raises(ValueError, match="L must be >= 1"):
        wigner_d(0, 0.3)


@pytest.mark.parametrize("L", [1, 3, 16])
def test_wigner_D_rotation_matches_pyssht(L: int) -> None:
    alpha, beta, gamma = _random_angles()
    flm = rng.standard_normal(L * L) + 1j * rng.standard_normal(L * L)
    expected = pyssht.rotate_flms(flm, alpha, beta, gamma, L)
    got = _rotate(wigner_D(L, alpha, beta, gamma), flm, L)
    assert np.abs(got - expected).max() <= 1e-12 * np.abs(expected).max()


def test_wigner_D_is_unitary() -> None:
    L = 12
    D = wigner_D(L, *_random_angles())
    assert D.dtype == np.complex128
    for l in range(L):
        block = D[l, L - 1 - l : L + l, L - 1 - l : L + l]
        assert np.abs(block @ block.conj().T - np.eye(2 * l + 1)).max() <= 1e-13


def test_wigner_D_is_a_representation() -> None:
    """D(R1) D(R2) = D(R1 R2): rotating by R2 then R1 equals rotating by the composed rotation."""
    L = 10
    a1, a2 = _random_angles(), _random_angles()
    R12 = pyssht.make_rotation_matrix(list(a1)) @ pyssht.make_rotation_matrix(list(a2))
    a12 = _euler_zyz(R12)
    assert np.abs(pyssht.make_rotation_matrix(list(a12)) - R12).max() <= 1e-12
    D1, D2, D12 = wigner_D(L, *a1), wigner_D(L, *a2), wigner_D(L, *a12)
    composed = np.einsum("lmk,lkn->lmn", D1, D2)
    assert np.abs(composed - D12).max() <= 1e-12
