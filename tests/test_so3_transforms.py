"""MW SO(3) transforms against two references: so3's algorithm rebuilt from pyssht's spin transforms
(docs/CONVENTIONS.md §4.3) and direct Wigner-D synthesis; plus round trips, rotation convention, autograd and
input checks."""

from __future__ import annotations

import math

import numpy as np
import pyssht
import pytest
import torch

from sphc.runtime.transforms import _so3_plan, _so3_tables, so3_forward, so3_inverse, so3_table_nbytes
from sphc.runtime.wigner import wigner_D

rng = np.random.default_rng()
SWEEP = [
    (1, 1),
    (2, 1),
    (2, 2),
    (3, 2),
    (5, 1),
    (5, 3),
    (5, 5),
    (8, 4),
    (9, 9),
    (11, 6),
    (16, 1),
    (16, 9),
    (16, 16),
]


# ------------------------------------------------------------------------------------- helpers


def _shape(L: int, N: int) -> tuple[int, int, int]:
    return (2 * N - 1, L, 2 * L - 1)


def _mask(L: int, N: int) -> np.ndarray:
    """True where (n, l, m) is a coefficient: |m| <= l and |n| <= l."""
    n = np.arange(-(N - 1), N)[:, None, None]
    l = np.arange(L)[None, :, None]
    m = np.arange(-(L - 1), L)[None, None, :]
    return (np.abs(m) <= l) & (np.abs(n) <= l)


def _alt(L: int, N: int) -> np.ndarray:
    """(-1)^{m+n} on the flmn layout."""
    n = np.arange(-(N - 1), N)[:, None, None]
    m = np.arange(-(L - 1), L)[None, None, :]
    return (-1.0) ** ((m + n) % 2)


def _random_flmn(L: int, N: int, real: bool, lead: tuple[int, ...] = ()) -> np.ndarray:
    """Random bandlimited flmn; real=True projects onto f^l_{-m,-n} = (-1)^{m+n} conj(f^l_{mn})."""
    shape = lead + _shape(L, N)
    flmn = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * _mask(L, N)
    if real:
        flmn = (flmn + _alt(L, N) * np.conj(np.flip(flmn, axis=(-3, -1)))) / 2
    return flmn


def _random_samples(L: int, N: int, real: bool, lead: tuple[int, ...] = ()) -> np.ndarray:
    """Arbitrary (not bandlimited) samples, e.g. distinct values on the repeated beta = pi ring."""
    f = rng.standard_normal(lead + _shape(L, N))
    return f if real else f + 1j * rng.standard_normal(lead + _shape(L, N))


def _ref_forward(f: np.ndarray, L: int, N: int) -> np.ndarray:
    """so3's MW forward from pyssht: gamma FFT weighted 2pi/(2N-1), spin -n forward per n, then
    (-1)^n sqrt(4pi/(2l+1)) (docs/CONVENTIONS.md §4.3)."""
    g = 2 * N - 1
    rings = np.fft.fft(f, axis=0) * (2 * np.pi / g)  # index n mod 2N-1
    out = np.zeros(_shape(L, N), dtype=np.complex128)
    for n in range(-(N - 1), N):
        flm = pyssht.forward(np.ascontiguousarray(rings[n % g]), L, Spin=-n, Method="MW")
        for l in range(abs(n), L):
            out[N - 1 + n, l, L - 1 - l : L + l] = (
                (-1) ** n * math.sqrt(4 * np.pi / (2 * l + 1)) * flm[l * l : (l + 1) ** 2]
            )
    return out


def _ref_inverse(flmn: np.ndarray, L: int, N: int) -> np.ndarray:
    """so3's MW inverse from pyssht: scale by (-1)^n sqrt((2l+1)/(16pi^3)), spin -n inverse per n, then an
    unnormalised inverse FFT along gamma."""
    g = 2 * N - 1
    rings = np.zeros(_shape(L, N), dtype=np.complex128)
    for n in range(-(N - 1), N):
        flm = np.zeros(L * L, dtype=np.complex128)
        for l in range(abs(n), L):
            flm[l * l : (l + 1) ** 2] = (
                (-1) ** n * math.sqrt((2 * l + 1) / (16 * np.pi**3)) * flmn[N - 1 + n, l, L - 1 - l : L + l]
            )
        rings[n % g] = pyssht.inverse(flm, L, Spin=-n, Method="MW")
    return np.fft.ifft(rings, axis=0) * g


def _synthesis_at(flmn: np.ndarray, L: int, N: int, alpha: float, beta: float, gamma: float) -> complex:
    """f(rho) = sum (2l+1)/(8pi^2) f^l_{mn} conj(D^l_{mn}(rho)), D from sphc.wigner (docs/CONVENTIONS.md §4.1)."""
    D = wigner_D(L, alpha, beta, gamma)[:, :, L - N : L + N - 1]  # [l, L-1+m, N-1+n]
    c = (2 * np.arange(L) + 1) / (8 * np.pi**2)
    return complex(np.einsum("l,nlm,lmn->", c, flmn, np.conj(D)))


def _grid_angles(L: int, N: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    alpha = 2 * np.pi * np.arange(2 * L - 1) / (2 * L - 1)
    beta = np.pi * (2 * np.arange(L) + 1) / (2 * L - 1)
    gamma = 2 * np.pi * np.arange(2 * N - 1) / (2 * N - 1)
    return alpha, beta, gamma


def _rel(got: torch.Tensor | np.ndarray, ref: np.ndarray) -> float:
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else got
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-300))


def _rotation(alpha: float, beta: float, gamma: float) -> np.ndarray:
    def rz(a: float) -> np.ndarray:
        return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])

    ry = np.array([[math.cos(beta), 0, math.sin(beta)], [0, 1, 0], [-math.sin(beta), 0, math.cos(beta)]])
    return rz(alpha) @ ry @ rz(gamma)


def _euler_zyz(R: np.ndarray) -> tuple[float, float, float]:
    """(alpha, beta, gamma) with R = Rz(alpha) Ry(beta) Rz(gamma), for beta away from 0 and pi."""
    beta = math.acos(np.clip(R[2, 2], -1.0, 1.0))
    return math.atan2(R[1, 2], R[0, 2]), beta, math.atan2(R[2, 1], -R[2, 0])


# ------------------------------------------------------------------------------- references


@pytest.mark.parametrize("real", [True, False])
def test_forward_matches_pyssht_reference_on_arbitrary_samples(real: bool) -> None:
    for L, N in SWEEP:
        f = _random_samples(L, N, real)
        got = so3_forward(torch.from_numpy(f), L, N)
        assert got.dtype == torch.complex128 and got.shape == _shape(L, N)
        assert _rel(got, _ref_forward(f, L, N)) <= 1e-12, (L, N)


@pytest.mark.parametrize("real", [True, False])
def test_inverse_matches_pyssht_reference(real: bool) -> None:
    for L, N in SWEEP:
        flmn = _random_flmn(L, N, real)
        ref = _ref_inverse(flmn, L, N)
        got = so3_inverse(torch.from_numpy(flmn), L, N, real=real)
        assert got.dtype == (torch.float64 if real else torch.complex128)
        assert _rel(got, ref.real if real else ref) <= 1e-12, (L, N)
        if real:
            assert np.abs(ref.imag).max() <= 1e-12 * np.abs(ref).max()


def test_large_bandlimit_matches_pyssht_reference() -> None:
    L = N = 32
    f = _random_samples(L, N, real=False)
    flmn = so3_forward(torch.from_numpy(f), L, N)
    assert _rel(flmn, _ref_forward(f, L, N)) <= 1e-12
    assert _rel(so3_inverse(flmn, L, N), _ref_inverse(flmn.numpy(), L, N)) <= 1e-12


@pytest.mark.parametrize(("L", "N"), [(5, 3), (4, 4), (3, 1)])
def test_inverse_equals_direct_wigner_synthesis(L: int, N: int) -> None:
    """f(alpha_a, beta_b, gamma_g) = sum (2l+1)/(8pi^2) f^l_{mn} e^{i m alpha} d^l_{mn}(beta) e^{i n gamma}."""
    flmn = _random_flmn(L, N, real=False)
    alpha, beta, gamma = _grid_angles(L, N)
    m = np.arange(-(L - 1), L)
    n = np.arange(-(N - 1), N)
    c = (2 * np.arange(L) + 1) / (8 * np.pi**2)
    dl = np.stack([pyssht.generate_dl(b, L)[:, :, L - N : L + N - 1] for b in beta])  # [b, l, L-1+m, N-1+n]
    e_alpha = np.exp(1j * np.outer(alpha, m))  # [a, m]
    e_gamma = np.exp(1j * np.outer(gamma, n))  # [g, n]
    ref = np.einsum("l,nlm,blmn,am,gn->gba", c, flmn, dl, e_alpha, e_gamma)
    assert _rel(so3_inverse(torch.from_numpy(flmn), L, N), ref) <= 1e-12
    # and at a few off-grid points, through sphc.wigner
    for _ in range(3):
        angles = (rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi))
        dl = pyssht.generate_dl(angles[1], L)[:, :, L - N : L + N - 1]
        direct = np.einsum(
            "l,nlm,lmn,m,n->", c, flmn, dl, np.exp(1j * m * angles[0]), np.exp(1j * n * angles[2])
        )
        assert abs(_synthesis_at(flmn, L, N, *angles) - direct) <= 1e-12 * np.abs(flmn).max()


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize(("L", "N"), [(1, 1), (6, 1), (7, 4), (12, 12), (13, 5)])
def test_round_trips(L: int, N: int) -> None:
    flmn = _random_flmn(L, N, real=False)
    back = so3_forward(so3_inverse(torch.from_numpy(flmn), L, N), L, N)
    assert _rel(back, flmn) <= 1e-12
    flmn_real = _random_flmn(L, N, real=True)
    f = so3_inverse(torch.from_numpy(flmn_real), L, N, real=True)
    assert f.dtype == torch.float64
    assert _rel(so3_forward(f, L, N), flmn_real) <= 1e-12  # the real-input path
    assert _rel(so3_forward(f.to(torch.complex128), L, N), flmn_real) <= 1e-12  # the complex path
    assert _rel(so3_inverse(so3_forward(f, L, N), L, N, real=True), f.numpy()) <= 1e-12


def test_forward_is_zero_outside_the_triangle_and_inverse_ignores_it() -> None:
    L, N = 9, 5
    outside = torch.from_numpy(~_mask(L, N))
    for real in (True, False):
        flmn = so3_forward(torch.from_numpy(_random_samples(L, N, real)), L, N)
        assert bool((flmn[outside] == 0).all())
    flmn = torch.from_numpy(_random_flmn(L, N, real=False))
    junk = flmn + torch.randn(_shape(L, N), dtype=torch.complex128) * outside
    for real in (True, False):
        torch.testing.assert_close(
            so3_inverse(junk, L, N, real=real), so3_inverse(flmn, L, N, real=real), rtol=0, atol=0
        )


def test_real_inverse_is_the_real_part_for_any_coefficients() -> None:
    L, N = 7, 3
    flmn = torch.from_numpy(_random_flmn(L, N, real=False))  # no reality symmetry
    assert _rel(so3_inverse(flmn, L, N, real=True), so3_inverse(flmn, L, N).real.numpy()) <= 1e-12


# ----------------------------------------------------------------------- rotation convention


def test_left_multiplication_by_D_rotates_the_signal() -> None:
    """(R_rho g)(rho') = g(rho^-1 rho') has coefficients D^l(rho) g^l (docs/CONVENTIONS.md §3.4): rotated coefficients,
    synthesised on the grid and off it, equal g evaluated at rho^-1 rho'."""
    L, N = 5, 5  # N = L: a rotated signal has all |n| <= l
    flmn = _random_flmn(L, N, real=False)
    rho = (rng.uniform(0, 2 * np.pi), rng.uniform(0.2, np.pi - 0.2), rng.uniform(0, 2 * np.pi))
    D = wigner_D(L, *rho)  # [l, L-1+m, L-1+k]
    rotated = np.einsum("lmk,nlk->nlm", D, flmn)  # (D^l g^l)_{mn} = sum_k D^l_{mk} g^l_{kn}
    on_grid = so3_inverse(torch.from_numpy(rotated), L, N).numpy()
    R_inv = _rotation(*rho).T
    alpha, beta, gamma = _grid_angles(L, N)
    for _ in range(6):
        g_i, b_i, a_i = rng.integers(2 * N - 1), rng.integers(L - 1), rng.integers(2 * L - 1)  # off the pole
        moved = _euler_zyz(R_inv @ _rotation(alpha[a_i], beta[b_i], gamma[g_i]))
        expected = _synthesis_at(flmn, L, N, *moved)
        assert abs(on_grid[g_i, b_i, a_i] - expected) <= 1e-12 * np.abs(on_grid).max()
        off = (rng.uniform(0, 2 * np.pi), rng.uniform(0.2, np.pi - 0.2), rng.uniform(0, 2 * np.pi))
        moved = _euler_zyz(R_inv @ _rotation(*off))
        assert (
            abs(_synthesis_at(rotated, L, N, *off) - _synthesis_at(flmn, L, N, *moved))
            <= 1e-12 * np.abs(flmn).max()
        )
    # the transform commutes with the rotation: forward of the rotated samples gives D^l g^l
    assert _rel(so3_forward(torch.from_numpy(on_grid), L, N), rotated) <= 1e-12


# ------------------------------------------------------------------- dtypes, batches, autograd


def test_float32() -> None:
    L, N = 12, 6
    flmn = _random_flmn(L, N, real=True)
    f = so3_inverse(torch.from_numpy(flmn).to(torch.complex64), L, N, real=True)
    assert f.dtype == torch.float32
    assert _rel(f, _ref_inverse(flmn, L, N).real) <= 1e-5
    back = so3_forward(f, L, N)
    assert back.dtype == torch.complex64
    assert _rel(back, flmn) <= 1e-5
    fc = _random_samples(L, N, real=False)
    got = so3_forward(torch.from_numpy(fc).to(torch.complex64), L, N)
    assert got.dtype == torch.complex64
    assert _rel(got, _ref_forward(fc, L, N)) <= 1e-5
    assert so3_inverse(got, L, N).dtype == torch.complex64


def test_batched_leading_dims() -> None:
    L, N = 7, 3
    for real in (True, False):
        f = _random_samples(L, N, real, lead=(2, 3))
        flmn = so3_forward(torch.from_numpy(f), L, N)
        assert flmn.shape == (2, 3, *_shape(L, N))
        back = so3_inverse(flmn, L, N, real=real)
        assert back.shape == f.shape
        for i in range(2):
            for j in range(3):
                ref = _ref_forward(f[i, j], L, N)
                assert _rel(flmn[i, j], ref) <= 1e-12
                inv = _ref_inverse(ref, L, N)
                assert _rel(back[i, j], inv.real if real else inv) <= 1e-12
    empty = so3_forward(torch.zeros(0, *_shape(L, N)), L, N)
    assert empty.shape == (0, *_shape(L, N)) and empty.dtype == torch.complex64
    assert so3_inverse(empty, L, N, real=True).shape == (0, *_shape(L, N))


def test_non_contiguous_input() -> None:
    L, N = 6, 2
    f = torch.from_numpy(_random_samples(L, N, real=True, lead=(3,)))
    strided = f.transpose(0, 1).contiguous().transpose(0, 1)
    assert not strided.is_contiguous()
    torch.testing.assert_close(so3_forward(strided, L, N), so3_forward(f, L, N), rtol=0, atol=0)


def test_gradcheck() -> None:
    L, N = 3, 2
    f_real = torch.randn(2, *_shape(L, N), dtype=torch.float64, requires_grad=True)
    f_cplx = torch.randn(_shape(L, N), dtype=torch.complex128, requires_grad=True)
    flmn = torch.randn(_shape(L, N), dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: so3_forward(x, L, N), (f_real,))
    assert torch.autograd.gradcheck(lambda x: so3_forward(x, L, N), (f_cplx,))
    assert torch.autograd.gradcheck(lambda x: so3_inverse(x, L, N), (flmn,))
    assert torch.autograd.gradcheck(lambda x: so3_inverse(x, L, N, real=True), (flmn,))


# ------------------------------------------------------------------------ tables and errors


def _held_bytes(tables) -> int:
    return sum(t.numel() * t.element_size() for t in tables.buffers())  # an SO3Tables module's buffers


def test_tables_are_cached_and_compact() -> None:
    cpu = torch.device("cpu")
    assert _so3_tables(6, 3, torch.float64, cpu) is _so3_tables(6, 3, torch.float64, cpu)
    for L, N, dtype in [(6, 3, torch.float64), (16, 16, torch.float32), (9, 1, torch.float64)]:
        assert so3_table_nbytes(L, N, dtype) == _held_bytes(_so3_tables(L, N, dtype, cpu))
    for L in (16, 32, 64):  # plans only: no table is built
        plan = _so3_plan(L, L)
        d_entries = sum(len(p) * L * (L - l0) for p, l0 in zip(plan.pairs, plan.l0))
        assert d_entries <= (2 * L - 1) ** 2 * L * L / 6  # vs d^l_{mn}(beta_t) for every (n, m, t, l)


def test_bad_inputs_raise_with_the_expected_shape() -> None:
    expected = r"so3_forward: expected samples of shape \(\.\.\., 5, 8, 15\) for L=8, N=3 \(MW SO\(3\) grid"
    with pytest.raises(ValueError, match=expected + r".* got \(2, 5, 8, 16\)"):
        so3_forward(torch.zeros(2, 5, 8, 16), 8, 3)
    with pytest.raises(ValueError, match=r"\(\.\.\., 5, 8, 15\) for L=8, N=3 .* got \(7, 8, 15\)"):
        so3_forward(torch.zeros(7, 8, 15), 8, 3)  # N mismatch
    with pytest.raises(ValueError, match=r"\(\.\.\., 5, 7, 13\) for L=7, N=3 .* got \(5, 8, 15\)"):
        so3_forward(torch.zeros(5, 8, 15), 7, 3)  # L mismatch
    with pytest.raises(ValueError, match=r"got \(8, 15\)"):
        so3_forward(torch.zeros(8, 15), 8, 1)
    with pytest.raises(
        ValueError, match=r"so3_inverse: expected coefficients of shape \(\.\.\., 3, 4, 7\) for L=4, N=2"
    ):
        so3_inverse(torch.zeros(3, 4, 8, dtype=torch.complex128), 4, 2)
    with pytest.raises(ValueError, match=r"N must be an integer with 1 <= N <= L, got N=5 for L=4"):
        so3_forward(torch.zeros(9, 4, 7), 4, 5)
    with pytest.raises(ValueError, match=r"so3_inverse: N must be an integer with 1 <= N <= L, got N=0"):
        so3_inverse(torch.zeros(1, 4, 7, dtype=torch.complex128), 4, 0)
    with pytest.raises(ValueError, match="L must be an integer >= 1"):
        so3_forward(torch.zeros(1, 0, 0), 0, 1)
    with pytest.raises(ValueError, match="samples contain NaN or Inf"):
        so3_forward(torch.full(_shape(4, 2), float("nan")), 4, 2)
    bad = torch.zeros(_shape(4, 2), dtype=torch.complex128)
    bad[1, 2, 3] = complex(0, float("inf"))
    with pytest.raises(ValueError, match="coefficients contain NaN or Inf"):
        so3_inverse(bad, 4, 2)
    with pytest.raises(TypeError, match="float32/float64/complex64/complex128"):
        so3_forward(torch.zeros(_shape(4, 2), dtype=torch.int64), 4, 2)
    with pytest.raises(TypeError, match="torch.Tensor"):
        so3_forward(np.zeros(_shape(4, 2)), 4, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    L, N = 16, 8
    for real in (True, False):
        f = torch.from_numpy(_random_samples(L, N, real))
        flmn = so3_forward(f.cuda(), L, N)
        assert flmn.device.type == "cuda"
        assert _rel(flmn, so3_forward(f, L, N).numpy()) <= 1e-12
        back = so3_inverse(flmn, L, N, real=real)
        assert _rel(back, so3_inverse(flmn.cpu(), L, N, real=real).numpy()) <= 1e-12
    assert _rel(so3_forward(f.to(torch.complex64).cuda(), L, N), so3_forward(f, L, N).numpy()) <= 1e-5
