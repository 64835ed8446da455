"""MW transforms against pyssht (Method='MW', spin 0), layouts, batching, autograd and input checks."""

from __future__ import annotations

import numpy as np
import pyssht
import pytest
import torch

from sphc.runtime.transforms import (
    flm_1d_to_2d,
    flm_2d_to_1d,
    s2_forward,
    s2_forward_2d,
    s2_inverse,
    s2_inverse_2d,
)

rng = np.random.default_rng()
SWEEP = [*range(1, 65), 128, 256]  # the sampling issue: every L up to 64, and 128, 256


def _random_flm(L: int, real: bool) -> np.ndarray:
    """Random bandlimited coefficients; with real=True they obey f_{l,-m} = (-1)^m conj(f_lm)."""
    flm = rng.standard_normal(L * L) + 1j * rng.standard_normal(L * L)
    if real:
        for l in range(L):
            flm[l * l + l] = flm[l * l + l].real
            for m in range(1, l + 1):
                flm[l * l + l - m] = (-1) ** m * np.conj(flm[l * l + l + m])
    return flm


def _random_samples(L: int, real: bool) -> np.ndarray:
    """Arbitrary (not bandlimited) samples, e.g. distinct values on the repeated south-pole ring."""
    f = rng.standard_normal((L, 2 * L - 1))
    return f if real else f + 1j * rng.standard_normal((L, 2 * L - 1))


def _rel(got: torch.Tensor | np.ndarray, ref: np.ndarray) -> float:
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else got
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-300))


@pytest.mark.parametrize("real", [True, False])
def test_forward_and_inverse_match_pyssht_on_bandlimited_signals(real: bool) -> None:
    for L in SWEEP:
        flm = _random_flm(L, real)
        f = pyssht.inverse(flm, L, Method="MW", Reality=real)
        got_f = s2_inverse(torch.from_numpy(flm), L, real=real)
        assert got_f.dtype == (torch.float64 if real else torch.complex128)
        assert _rel(got_f, f) <= 1e-12, L
        got_flm = s2_forward(torch.from_numpy(f), L)
        assert got_flm.dtype == torch.complex128
        assert _rel(got_flm, pyssht.forward(f, L, Method="MW", Reality=real)) <= 1e-12, L
        assert _rel(got_flm, flm) <= 1e-12, L


@pytest.mark.parametrize("real", [True, False])
def test_forward_matches_pyssht_on_arbitrary_samples(real: bool) -> None:
    for L in SWEEP:
        f = _random_samples(L, real)
        ref = pyssht.forward(f, L, Method="MW", Reality=real)
        assert _rel(s2_forward(torch.from_numpy(f), L), ref) <= 1e-12, L


def test_round_trips() -> None:
    L = 23
    flm = torch.from_numpy(_random_flm(L, real=False))
    assert _rel(s2_forward(s2_inverse(flm, L), L), flm.numpy()) <= 1e-12
    f = s2_inverse(torch.from_numpy(_random_flm(L, real=True)), L, real=True)
    assert _rel(s2_inverse(s2_forward(f, L), L, real=True), f.numpy()) <= 1e-12


def test_float32() -> None:
    L = 16
    f = pyssht.inverse(_random_flm(L, real=True), L, Method="MW", Reality=True)
    flm = s2_forward(torch.from_numpy(f).float(), L)
    assert flm.dtype == torch.complex64
    assert _rel(flm, pyssht.forward(f, L, Method="MW", Reality=True)) <= 1e-5
    back = s2_inverse(flm, L, real=True)
    assert back.dtype == torch.float32
    assert _rel(back, f) <= 1e-5


def test_batched_leading_dims() -> None:
    L = 9
    f = rng.standard_normal((2, 3, L, 2 * L - 1)) + 1j * rng.standard_normal((2, 3, L, 2 * L - 1))
    flm = s2_forward(torch.from_numpy(f), L)
    assert flm.shape == (2, 3, L * L)
    back = s2_inverse(flm, L)
    for i in range(2):
        for j in range(3):
            ref = pyssht.forward(f[i, j], L, Method="MW")
            assert _rel(flm[i, j], ref) <= 1e-12
            assert _rel(back[i, j], pyssht.inverse(ref, L, Method="MW")) <= 1e-12


def test_2d_layout_matches_1d() -> None:
    L = 11
    f = torch.from_numpy(_random_samples(L, real=False))
    flm2d = s2_forward_2d(f, L)
    assert flm2d.shape == (L, 2 * L - 1)
    l = torch.arange(L)[:, None]
    m = torch.arange(-(L - 1), L)[None, :]
    assert bool((flm2d[m.abs() > l] == 0).all())
    flm = s2_forward(f, L)
    torch.testing.assert_close(flm_2d_to_1d(flm2d, L), flm, rtol=0, atol=0)
    torch.testing.assert_close(flm_1d_to_2d(flm, L), flm2d, rtol=0, atol=0)
    torch.testing.assert_close(s2_inverse_2d(flm2d, L), s2_inverse(flm, L), rtol=0, atol=0)


def test_inverse_2d_ignores_entries_outside_the_triangle() -> None:
    L = 6
    flm2d = torch.randn(L, 2 * L - 1, dtype=torch.complex128)
    l = torch.arange(L)[:, None]
    m = torch.arange(-(L - 1), L)[None, :]
    cleaned = torch.where(m.abs() <= l, flm2d, torch.zeros_like(flm2d))
    torch.testing.assert_close(s2_inverse_2d(flm2d, L), s2_inverse_2d(cleaned, L), rtol=0, atol=0)


def test_gradcheck() -> None:
    L = 4
    f_real = torch.randn(2, L, 2 * L - 1, dtype=torch.float64, requires_grad=True)
    f_cplx = torch.randn(L, 2 * L - 1, dtype=torch.complex128, requires_grad=True)
    flm = torch.randn(2, L * L, dtype=torch.complex128, requires_grad=True)
    flm2d = torch.randn(L, 2 * L - 1, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: s2_forward(x, L), (f_real,))
    assert torch.autograd.gradcheck(lambda x: s2_forward_2d(x, L), (f_cplx,))
    assert torch.autograd.gradcheck(lambda x: s2_inverse(x, L), (flm,))
    assert torch.autograd.gradcheck(lambda x: s2_inverse(x, L, real=True), (flm,))
    assert torch.autograd.gradcheck(lambda x: s2_inverse_2d(x, L, real=True), (flm2d,))


def test_bad_inputs_raise_with_the_expected_shape() -> None:
    with pytest.raises(ValueError, match=r"s2_forward: expected samples of shape \(\.\.\., 8, 15\) for L=8"):
        s2_forward(torch.zeros(3, 8, 16), 8)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4, 7\) .* got \(7,\)"):
        s2_forward_2d(torch.zeros(7), 4)
    with pytest.raises(ValueError, match=r"s2_inverse: expected coefficients of shape \(\.\.\., 64\)"):
        s2_inverse(torch.zeros(2, 63, dtype=torch.complex128), 8)
    with pytest.raises(ValueError, match=r"s2_inverse_2d: expected coefficients of shape \(\.\.\., 8, 15\)"):
        s2_inverse_2d(torch.zeros(8, 16, dtype=torch.complex128), 8)
    with pytest.raises(ValueError, match=r"flm_1d_to_2d: expected coefficients of shape \(\.\.\., 9\)"):
        flm_1d_to_2d(torch.zeros(10, dtype=torch.complex128), 3)
    with pytest.raises(ValueError, match="L must be an integer >= 1"):
        s2_forward(torch.zeros(0, 0), 0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        s2_forward(torch.full((4, 7), float("nan")), 4)
    with pytest.raises(ValueError, match="NaN or Inf"):
        s2_inverse(torch.full((16,), complex("inf")), 4)
    with pytest.raises(TypeError, match="float32/float64/complex64/complex128"):
        s2_forward(torch.zeros(4, 7, dtype=torch.int64), 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    L = 32
    f = torch.from_numpy(_random_samples(L, real=True))
    flm = s2_forward(f.cuda(), L)
    assert flm.device.type == "cuda"
    assert _rel(flm, s2_forward(f, L).numpy()) <= 1e-12
    back = s2_inverse(flm, L, real=True)
    assert _rel(back, s2_inverse(flm.cpu(), L, real=True).numpy()) <= 1e-12
    assert _rel(s2_forward(f.float().cuda(), L), s2_forward(f, L).numpy()) <= 1e-5
