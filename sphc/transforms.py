"""Exact spin-0 spherical-harmonic transforms on the McEwen-Wiaux (MW) grid, in torch.

Conventions are pyssht's (Method='MW', spin 0; PAPER.md §2.1, §5.1):

* samples f[..., t, p] at theta_t = pi (2t+1) / (2L-1), phi_p = 2 pi p / (2L-1), an L x (2L-1) grid;
* Y_lm(theta, phi) = sqrt((2l+1) / 4pi) d^l_{m0}(theta) e^{i m phi} (Condon-Shortley phase, orthonormal
  under the unnormalised measure sin(theta) dtheta dphi);
* coefficients either in pyssht's 1-D layout (..., L*L) indexed l^2 + l + m, or in s2fft's 2-D layout
  (..., L, 2L-1) indexed [l, L-1+m] with zeros where |m| > l.  The model runtime uses the 2-D layout
  because it keeps m on its own axis, which the 1-D one scatters.

MW sampling is used because its sampling theorem needs only (L-1)(2L-1)+1 ~ 2L^2 distinct samples for
bandlimit L, half of Driscoll-Healy's 2L(2L-1), which halves the cost of every pointwise layer.

Algorithm (separation of variables): an FFT along phi gives the ring coefficients F_m(theta_t); the
theta direction is then a per-m dense L x L matrix.  The forward matrix is the MW quadrature itself
(PAPER.md §5.1: periodic extension in theta, FFT, convolution with the sin(theta) weights,
d(pi/2) factorisation) applied to unit vectors, so the transform equals ``pyssht.forward`` for any
samples, bandlimited or not.  Tables cost O(L^3) memory and are cached per L (numpy, float64) and per
(L, dtype, device) (torch); the transforms themselves are one FFT plus one batched matmul.
"""

from __future__ import annotations

import functools
import numbers

import numpy as np
import torch

from sphc.wigner import half_pi_d

_REAL_OF = {
    torch.float32: torch.float32,
    torch.float64: torch.float64,
    torch.complex64: torch.float32,
    torch.complex128: torch.float64,
}
_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}
# Tolerance on the imaginary part that the d(pi/2) factorisation must cancel.
_IMAG_TOL = 1e-10


# ---------------------------------------------------------------------------- float64 numpy tables


def mw_thetas(L: int) -> np.ndarray:
    """MW colatitudes theta_t = pi (2t+1) / (2L-1), t < L (the last ring is the south pole)."""
    return np.pi * (2 * np.arange(L) + 1) / (2 * L - 1)


def _sin_weights(L: int) -> np.ndarray:
    """w(p) = int_0^pi sin(theta) e^{i p theta} dtheta for p = -(2L-2) .. 2L-2 (closed form)."""
    p = np.arange(-(2 * L - 2), 2 * L - 1)
    w = np.zeros(p.shape, dtype=np.complex128)
    even = p % 2 == 0
    w[even] = 2.0 / (1.0 - p[even] ** 2)
    w[p == 1] = 0.5j * np.pi
    w[p == -1] = -0.5j * np.pi
    return w


def _d_factorisation(L: int, x_even: np.ndarray, x_odd: np.ndarray) -> np.ndarray:
    """P[m, l, :] = i^{-m} sum_{m'} Delta^l_{m'm} Delta^l_{m'0} x[m', :], x = x_even or x_odd by m's parity.

    With x[m', t] = e^{i m' theta_t} this is d^l_{m0}(theta_t) (PAPER.md §2.2).  The result is real by
    symmetry of Delta; the imaginary part is checked and dropped so the tables stay real.
    """
    delta = half_pi_d(L)
    out = np.zeros((2 * L - 1, L, x_even.shape[1]))
    phase = np.array([1, -1j, -1, 1j])  # i^{-m}, indexed by m mod 4
    worst_imag = 0.0
    for l in range(L):
        block = slice(L - 1 - l, L + l)
        dl = delta[l, block, block]  # [m', m]
        coeff = (dl * dl[:, l : l + 1]).T  # [m, m'] = Delta_{m'm} Delta_{m'0}
        m = np.arange(-l, l + 1)
        for parity, x in ((0, x_even), (1, x_odd)):
            rows = slice((l + parity) % 2, 2 * l + 1, 2)  # rows whose m has this parity
            xs = x[block]
            vals = phase[m[rows] % 4, None] * (coeff[rows] @ xs.real + 1j * (coeff[rows] @ xs.imag))
            out[L - 1 - l + rows.start : L + l : 2, l] = vals.real
            worst_imag = max(worst_imag, float(np.abs(vals.imag).max(initial=0.0)))
    if worst_imag > _IMAG_TOL:
        raise RuntimeError(f"d(pi/2) factorisation left an imaginary part {worst_imag:.3g} at L={L}")
    return out


def _l_norm(L: int) -> np.ndarray:
    return np.sqrt((2 * np.arange(L) + 1) / (4 * np.pi))


@functools.lru_cache(maxsize=4)
def forward_table(L: int) -> np.ndarray:
    """A[m, l, t], float64 (2L-1, L, L): f_lm = sum_t A[m, l, t] F_m(theta_t), read-only.

    Built as the MW quadrature acting on ring unit vectors e_t: extend e_t to the full theta circle
    (F_m(2pi - theta) = (-1)^m F_m(theta); the pole ring maps to itself), take its theta-Fourier
    coefficients, convolve with w(p), then contract with the d(pi/2) factorisation.
    """
    n = 2 * L - 1
    theta = mw_thetas(L)
    mp = np.arange(-(L - 1), L)
    phases = np.exp(-1j * mp[:, None] * theta[None, :])  # [m'', t]
    mirrored = np.conj(phases) * (np.arange(L) < L - 1)  # image at 2pi - theta_t, pole excluded
    w = _sin_weights(L)
    conv = w[(mp[:, None] + mp[None, :]) + (2 * L - 2)]  # [m', m''] = w(m' + m'')
    k_even = conv @ (phases + mirrored) / n
    k_odd = conv @ (phases - mirrored) / n
    table = 2 * np.pi * _l_norm(L)[None, :, None] * _d_factorisation(L, k_even, k_odd)
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=4)
def inverse_table(L: int) -> np.ndarray:
    """B[m, t, l] = sqrt((2l+1)/4pi) d^l_{m0}(theta_t), float64 (2L-1, L, L), read-only."""
    x = np.exp(1j * np.arange(-(L - 1), L)[:, None] * mw_thetas(L)[None, :])
    table = np.ascontiguousarray((_l_norm(L)[None, :, None] * _d_factorisation(L, x, x)).transpose(0, 2, 1))
    table.flags.writeable = False
    return table


# --------------------------------------------------------------------------------- torch tables


@functools.lru_cache(maxsize=16)
def _torch_forward_table(L: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(forward_table(L), dtype=dtype, device=device)


@functools.lru_cache(maxsize=16)
def _torch_inverse_table(L: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(inverse_table(L), dtype=dtype, device=device)


@functools.lru_cache(maxsize=32)
def _index_2d_to_1d(L: int, device: torch.device) -> torch.Tensor:
    """For each 1-D slot l^2+l+m, its flat position l(2L-1) + L-1+m in the 2-D layout."""
    idx = [l * (2 * L - 1) + L - 1 + m for l in range(L) for m in range(-l, l + 1)]
    return torch.tensor(idx, dtype=torch.long, device=device)


@functools.lru_cache(maxsize=32)
def _index_1d_to_2d(L: int, device: torch.device) -> torch.Tensor:
    """For each flat 2-D slot, its 1-D index l^2+l+m, or L*L (a zero pad) where |m| > l."""
    l = np.arange(L)[:, None]
    m = np.arange(-(L - 1), L)[None, :]
    idx = np.where(np.abs(m) <= l, l * l + l + m, L * L).reshape(-1)
    return torch.tensor(idx, dtype=torch.long, device=device)


# ------------------------------------------------------------------------------------ validation


def _check_L(fn: str, L: int) -> None:
    if isinstance(L, bool) or not isinstance(L, numbers.Integral) or L < 1:
        raise ValueError(f"{fn}: L must be an integer >= 1, got {L!r}")


def _check_tensor(fn: str, x: torch.Tensor, what: str, shape: str, L: int, layout: str, ok: bool) -> None:
    """Type, trailing shape and finiteness checks, with messages that name the expected shape."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: expected {what} as a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _REAL_OF:
        raise TypeError(f"{fn}: {what} must be float32/float64/complex64/complex128, got {x.dtype}")
    if not ok:
        raise ValueError(f"{fn}: expected {what} of shape {shape} for L={L} ({layout}), got {tuple(x.shape)}")
    tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
    if not tracing and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{fn}: {what} contain NaN or Inf")


def _check_grid(fn: str, x: torch.Tensor, L: int, what: str, layout: str) -> None:
    _check_L(fn, L)
    ok = isinstance(x, torch.Tensor) and x.ndim >= 2 and tuple(x.shape[-2:]) == (L, 2 * L - 1)
    _check_tensor(fn, x, what, f"(..., {L}, {2 * L - 1})", L, layout, ok)


def _check_flat(fn: str, x: torch.Tensor, L: int) -> None:
    _check_L(fn, L)
    ok = isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[-1] == L * L
    _check_tensor(fn, x, "coefficients", f"(..., {L * L})", L, "1-D layout l^2+l+m, length L*L", ok)


_MW_GRID = "MW grid: L x (2L-1)"
_LAYOUT_2D = "2-D layout [l, L-1+m]: L x (2L-1)"


# ------------------------------------------------------------------------- unchecked kernels


def _to_1d(flm2d: torch.Tensor, L: int) -> torch.Tensor:
    flat = flm2d.reshape(*flm2d.shape[:-2], L * (2 * L - 1))
    return flat.index_select(-1, _index_2d_to_1d(L, flm2d.device))


def _to_2d(flm: torch.Tensor, L: int) -> torch.Tensor:
    padded = torch.cat([flm, flm.new_zeros(*flm.shape[:-1], 1)], dim=-1)
    out = padded.index_select(-1, _index_1d_to_2d(L, flm.device))
    return out.reshape(*flm.shape[:-1], L, 2 * L - 1)


def _forward_2d(f: torch.Tensor, L: int) -> torch.Tensor:
    rings = torch.fft.fftshift(torch.fft.fft(f, dim=-1, norm="forward"), dim=-1)  # [..., t, L-1+m]
    table = _torch_forward_table(L, _REAL_OF[f.dtype], f.device)  # [m, l, t]
    out = torch.einsum("mlt,...tmc->...lmc", table, torch.view_as_real(rings))
    return torch.view_as_complex(out.contiguous())


def _inverse_2d(flm2d: torch.Tensor, L: int, real: bool) -> torch.Tensor:
    precision = _REAL_OF[flm2d.dtype]
    flm2d = flm2d.to(_COMPLEX_OF[precision])
    table = _torch_inverse_table(L, precision, flm2d.device)  # [m, t, l]
    rings = torch.einsum("mtl,...lmc->...tmc", table, torch.view_as_real(flm2d))
    rings = torch.fft.ifftshift(torch.view_as_complex(rings.contiguous()), dim=-1)
    f = torch.fft.ifft(rings, dim=-1, norm="forward")  # unnormalised sum over m of F_m e^{i m phi}
    return f.real if real else f


# ---------------------------------------------------------------------------------- public API


def flm_2d_to_1d(flm2d: torch.Tensor, L: int) -> torch.Tensor:
    """(..., L, 2L-1) [l, L-1+m] -> (..., L*L) [l^2+l+m] (pyssht's layout); entries |m| > l are dropped."""
    _check_grid("flm_2d_to_1d", flm2d, L, "coefficients", _LAYOUT_2D)
    return _to_1d(flm2d, L)


def flm_1d_to_2d(flm: torch.Tensor, L: int) -> torch.Tensor:
    """(..., L*L) [l^2+l+m] -> (..., L, 2L-1) [l, L-1+m], zero where |m| > l (a gather, so differentiable)."""
    _check_flat("flm_1d_to_2d", flm, L)
    return _to_2d(flm, L)


def s2_forward_2d(f: torch.Tensor, L: int) -> torch.Tensor:
    """Samples (..., L, 2L-1), real or complex -> complex coefficients (..., L, 2L-1) in the 2-D layout.

    Equals ``pyssht.forward(f, L, Method='MW')`` for any samples (exact for bandlimit L).
    """
    _check_grid("s2_forward_2d", f, L, "samples", _MW_GRID)
    return _forward_2d(f, L)


def s2_inverse_2d(flm2d: torch.Tensor, L: int, real: bool = False) -> torch.Tensor:
    """Coefficients (..., L, 2L-1) in the 2-D layout -> samples (..., L, 2L-1) on the MW grid.

    Entries with |m| > l are ignored.  ``real=True`` returns the real part of the synthesis as a float
    tensor, which is the signal itself when flm obeys f_{l,-m} = (-1)^m conj(f_lm).
    """
    _check_grid("s2_inverse_2d", flm2d, L, "coefficients", _LAYOUT_2D)
    return _inverse_2d(flm2d, L, real)


def s2_forward(f: torch.Tensor, L: int) -> torch.Tensor:
    """Samples (..., L, 2L-1) -> complex coefficients (..., L*L) in pyssht's layout l^2+l+m."""
    _check_grid("s2_forward", f, L, "samples", _MW_GRID)
    return _to_1d(_forward_2d(f, L), L)


def s2_inverse(flm: torch.Tensor, L: int, real: bool = False) -> torch.Tensor:
    """Coefficients (..., L*L) in pyssht's layout -> samples (..., L, 2L-1); see ``s2_inverse_2d``."""
    _check_flat("s2_inverse", flm, L)
    return _inverse_2d(_to_2d(flm, L), L, real)
