"""Wigner d- and D-matrices in the ssht / so3 / s2fft convention (docs/CONVENTIONS.md §3.2).

Convention: ZYZ Euler angles (alpha, beta, gamma), R = Rz(alpha) Ry(beta) Rz(gamma), and
D^l_{mn}(alpha, beta, gamma) = exp(-i m alpha) d^l_{mn}(beta) exp(-i n gamma), so that rotating a
signal, (R f)(w) = f(R^-1 w), acts on its coefficients as (R f)_lm = sum_n D^l_{mn} f_ln.  This is
the convention of ``pyssht.rotate_flms`` and of the transforms in ``sphc.transforms``; using it
everywhere means pyssht can serve as the test oracle for every layer.

Arrays use pyssht's ``generate_dl`` layout: shape (L, 2L-1, 2L-1), indexed [l, L-1+m, L-1+n], zero
where |m| > l or |n| > l.  d is computed with Risbo's recursion (the one pyssht uses): each
half-integer step couples spin j-1/2 with spin 1/2, which is a contraction of unitary matrices and
therefore numerically stable (errors ~1e-14 at L=256).
"""

from __future__ import annotations

import functools
import math

import numpy as np


def _risbo_step(d_prev: np.ndarray, p: float, q: float) -> np.ndarray:
    """d^j from d^(j-1/2) (matrix sizes 2j and 2j+1, index i = j+m).

    d^j = C (d^(j-1/2) (x) d^(1/2)) C^T restricted to spin j, with the stretched Clebsch-Gordan
    coefficients C(m, +-1/2) = sqrt((j +- m) / 2j) and d^(1/2)_{++} = d^(1/2)_{--} = q = cos(beta/2),
    d^(1/2)_{+-} = -p, d^(1/2)_{-+} = p = sin(beta/2).
    """
    n = d_prev.shape[0]  # = 2j
    padded = np.zeros((n + 2, n + 2))
    padded[1:-1, 1:-1] = d_prev
    a = np.sqrt(np.arange(n + 1.0))  # sqrt(j + m)
    b = a[::-1]  # sqrt(j - m)
    up = q * a * padded[:-1, :-1] - p * b * padded[:-1, 1:]  # sigma = +1/2: d^(j-1/2)[i-1, .]
    down = p * a * padded[1:, :-1] + q * b * padded[1:, 1:]  # sigma = -1/2: d^(j-1/2)[i, .]
    return (a[:, None] * up + b[:, None] * down) / n


def wigner_d(L: int, beta: float) -> np.ndarray:
    """All d^l(beta), l < L, as a float64 array of shape (L, 2L-1, 2L-1) in pyssht's layout."""
    if L < 1:
        raise ValueError(f"wigner_d: L must be >= 1, got {L}")
    p, q = math.sin(beta / 2.0), math.cos(beta / 2.0)
    out = np.zeros((L, 2 * L - 1, 2 * L - 1))
    d = np.ones((1, 1))
    out[0, L - 1, L - 1] = 1.0
    for l in range(1, L):
        d = _risbo_step(_risbo_step(d, p, q), p, q)
        out[l, L - 1 - l : L + l, L - 1 - l : L + l] = d
    return out


@functools.lru_cache(maxsize=8)
def half_pi_d(L: int) -> np.ndarray:
    """Cached read-only Delta^l = d^l(pi/2), the table every MW transform factorises through."""
    delta = wigner_d(L, math.pi / 2.0)
    delta.flags.writeable = False
    return delta


def wigner_D(L: int, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """All D^l(alpha, beta, gamma), l < L, complex128 of shape (L, 2L-1, 2L-1), layout [l, L-1+m, L-1+n]."""
    m = np.arange(-(L - 1), L)
    phase_m = np.exp(-1j * m * alpha)
    phase_n = np.exp(-1j * m * gamma)
    return phase_m[None, :, None] * wigner_d(L, beta) * phase_n[None, None, :]
