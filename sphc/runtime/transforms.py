"""Exact harmonic transforms on the McEwen-Wiaux (MW) grids of S^2 and SO(3), in torch.

S^2 (spin 0), conventions of pyssht (Method='MW'; docs/CONVENTIONS.md §1.1, §2):

* samples f[..., t, p] at theta_t = pi (2t+1) / (2L-1), phi_p = 2 pi p / (2L-1), an L x (2L-1) grid;
* Y_lm(theta, phi) = sqrt((2l+1) / 4pi) d^l_{m0}(theta) e^{i m phi} (Condon-Shortley phase, orthonormal
  under the unnormalised measure sin(theta) dtheta dphi);
* coefficients either in pyssht's 1-D layout (..., L*L) indexed l^2 + l + m, or in s2fft's 2-D layout
  (..., L, 2L-1) indexed [l, L-1+m] with zeros where |m| > l.  The model runtime uses the 2-D layout
  because it keeps m on its own axis, which the 1-D one scatters.

SO(3), bandlimits (L, N) with 1 <= N <= L, conventions of the ``so3`` package and s2fft (docs/CONVENTIONS.md §1.2,
§4):

* samples f[..., g, b, a] at gamma_g = 2 pi g / (2N-1), beta_b = pi (2b+1) / (2L-1), alpha_a = 2 pi a / (2L-1),
  a (2N-1) x L x (2L-1) grid, gamma outermost;
* D^l_{mn}(alpha, beta, gamma) = e^{-i m alpha} d^l_{mn}(beta) e^{-i n gamma} (``sphc.wigner``), measure
  drho = sin(beta) dalpha dbeta dgamma (volume 8 pi^2);
* analysis f^l_{mn} = int f D^l_{mn} drho, synthesis f = sum_lmn (2l+1)/(8 pi^2) f^l_{mn} conj(D^l_{mn});
  coefficients (..., 2N-1, L, 2L-1) indexed [N-1+n, l, L-1+m], zero where |m| > l or |n| > l (s2fft's
  flmn layout);
* rotation (R_rho f)(rho') = f(rho^-1 rho') acts as f^l -> D^l(rho) f^l (left multiplication, rows m).

MW sampling is used because its sampling theorem needs only (L-1)(2L-1)+1 ~ 2L^2 distinct samples for
bandlimit L on S^2 (and ~4L^3 on SO(3) for N = L), half of the other equiangular schemes, which halves
the cost of every pointwise layer.

Algorithm (separation of variables): FFTs along phi (and gamma) give ring coefficients F_m(theta_t)
(F_{nm}(beta_t)); theta is then a dense per-column contraction.  The S^2 forward matrix is the MW
quadrature itself (docs/CONVENTIONS.md §2.3: periodic extension in theta, FFT, convolution with the sin(theta)
weights, d(pi/2) factorisation) applied to unit vectors, so the transform equals ``pyssht.forward`` for
any samples, bandlimited or not.  SO(3) applies the same quadrature as two L x L matrices (one per
parity of m+n) followed by a table of d^l_{mn}(beta_t) shared with the inverse, so it equals the MW
forward transform of ``so3`` (a spin -n ssht transform per n) for any samples; the d table is compressed
by the symmetries of d and its triangular support (see the SO(3) section).  Tables are built once in
float64 and cached per L or (L, N) (numpy); their torch copies are modules of buffers (``S2Tables``,
``SO3Tables``) that a model layer owns and passes as ``tables=`` (so ``.to()`` moves them and
``torch.compile`` traces the call), or that the table-less calls cache per dtype and device.  A
transform is FFTs plus batched matmuls, O(L^3) (S^2) or O(N L^3) (SO(3)) per signal, with no Python
loop over its data.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from sphc.runtime.wigner import half_pi_d, wigner_d

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

    With x[m', t] = e^{i m' theta_t} this is d^l_{m0}(theta_t) (docs/CONVENTIONS.md §3.3).  The result is real by
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


class _Tables(nn.Module):
    """Constant tables of a transform, held as non-persistent buffers: ``.to()`` / ``.cuda()`` /
    ``.double()`` move and convert them with the module that owns them, ``state_dict`` leaves them
    out, and the transform reads them as module attributes (no cache look-up on the call path, so
    ``torch.compile`` traces it).

    Floating tables are casts of float64 masters (``_masters``, from the cached numpy builders): after a
    dtype conversion they are cast again from the master rather than from the previous copy, so
    ``.double()`` of a float32 model transforms exactly like a model built in float64.  Integer index
    tables only move.
    """

    def _masters(self) -> dict[str, Callable[[], np.ndarray]]:
        """Buffer name -> a call returning the float64 numpy master of that floating table."""
        raise NotImplementedError

    def _add(self, name: str, value: np.ndarray, dtype: torch.dtype, device: torch.device | None) -> None:
        kind = dtype if np.issubdtype(value.dtype, np.floating) else torch.long
        self.register_buffer(name, torch.tensor(value, dtype=kind, device=device), persistent=False)

    def _apply(self, fn, recurse=True):
        before = {name: b.dtype for name, b in self._buffers.items() if b is not None}
        super()._apply(fn, recurse)
        masters = self._masters()
        for name, b in self._buffers.items():
            if b is not None and b.is_floating_point() and b.dtype != before[name] and name in masters:
                self._buffers[name] = torch.tensor(masters[name](), dtype=b.dtype, device=b.device)
        return self


def _s2_parity(L: int) -> tuple[np.ndarray, np.ndarray]:
    """(-1)^m (re, -im) as real pairs, for m = 0 .. L-1 and for m = L-1 .. 1 (the reality symmetry
    f_{l,-m} = (-1)^m conj(f_lm) applied to (re, im) pairs)."""
    pos = ((-1.0) ** np.arange(L))[:, None] * np.array([1.0, -1.0])
    return pos, pos[1:][::-1].copy()


class S2Tables(_Tables):
    """The S² tables of bandlimit L for ``s2_forward_2d`` / ``s2_inverse_2d(..., tables=)``.

    Buffers: ``fwd`` = ``forward_table(L)`` [m, l, t] and/or ``inv`` = ``inverse_table(L)`` [m, t, l]
    (float, (2L-1, L, L) each), ``conj_pos`` (L, 2) and ``conj_neg`` (L-1, 2), the reality signs of
    ``_s2_parity``.  Built in ``dtype`` (default: torch's default dtype) on ``device``.
    """

    def __init__(
        self,
        L: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        forward: bool = True,
        inverse: bool = True,
    ):
        super().__init__()
        _check_L("S2Tables", L)
        self.L = int(L)
        self.sizes = (self.L,)
        dtype = dtype or torch.get_default_dtype()
        names = ["conj_pos", "conj_neg"] + ["fwd"] * forward + ["inv"] * inverse
        masters = self._masters()
        for name in names:
            self._add(name, masters[name](), dtype, device)

    def _masters(self) -> dict[str, Callable[[], np.ndarray]]:
        return {
            "fwd": functools.partial(forward_table, self.L),
            "inv": functools.partial(inverse_table, self.L),
            "conj_pos": lambda: _s2_parity(self.L)[0],
            "conj_neg": lambda: _s2_parity(self.L)[1],
        }

    def extra_repr(self) -> str:
        return f"L={self.L}, " + ", ".join(n for n in ("fwd", "inv") if n in self._buffers)


@functools.lru_cache(maxsize=16)
def _torch_forward_table(L: int, dtype: torch.dtype, device: torch.device) -> S2Tables:
    """The tables the table-less ``s2_forward_2d`` uses, one set per (L, dtype, device)."""
    return S2Tables(L, dtype, device, inverse=False)


@functools.lru_cache(maxsize=16)
def _torch_inverse_table(L: int, dtype: torch.dtype, device: torch.device) -> S2Tables:
    return S2Tables(L, dtype, device, forward=False)


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


def _check_tensor(
    fn: str, x: torch.Tensor, what: str, shape: str, params: str, layout: str, ok: bool
) -> None:
    """Type, trailing shape and finiteness checks, with messages that name the expected shape."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: expected {what} as a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _REAL_OF:
        raise TypeError(f"{fn}: {what} must be float32/float64/complex64/complex128, got {x.dtype}")
    if not ok:
        raise ValueError(
            f"{fn}: expected {what} of shape {shape} for {params} ({layout}), got {tuple(x.shape)}"
        )
    tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
    if not tracing and not _all_finite(x):
        raise ValueError(f"{fn}: {what} contain NaN or Inf")


def _all_finite(x: torch.Tensor) -> bool:
    """One reduction pass: min and max propagate NaN, and are infinite iff some entry is."""
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(torch.view_as_real(x) if x.is_complex() else x)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _check_grid(fn: str, x: torch.Tensor, L: int, what: str, layout: str) -> None:
    _check_L(fn, L)
    ok = isinstance(x, torch.Tensor) and x.ndim >= 2 and tuple(x.shape[-2:]) == (L, 2 * L - 1)
    _check_tensor(fn, x, what, f"(..., {L}, {2 * L - 1})", f"L={L}", layout, ok)


def _check_flat(fn: str, x: torch.Tensor, L: int) -> None:
    _check_L(fn, L)
    ok = isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[-1] == L * L
    _check_tensor(fn, x, "coefficients", f"(..., {L * L})", f"L={L}", "1-D layout l^2+l+m, length L*L", ok)


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


def _theta_matmul(table: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The per-m dense theta step, y[b, :, m] = table[m] @ x[b, :, m], as one batched matmul.

    ``table`` is real (m, out, in) and ``x`` complex (b, in, m): the data go through as real pairs
    (half the multiplies of a complex matmul). Returns a real-pair view (b, out, m, 2).
    """
    M, n_out, n_in = table.shape
    nb = x.shape[0]
    rows = torch.view_as_real(x).permute(2, 1, 0, 3).reshape(M, n_in, nb * 2)
    return torch.bmm(table, rows).view(M, n_out, nb, 2).permute(2, 1, 0, 3)


def _forward_2d(f: torch.Tensor, L: int, tables: S2Tables) -> torch.Tensor:
    lead, f = f.shape[:-2], f.reshape(-1, L, 2 * L - 1)
    table = tables.fwd  # [m, l, t]
    if f.is_complex():
        rings = torch.fft.fftshift(torch.fft.fft(f, dim=-1, norm="forward"), dim=-1)  # [b, t, L-1+m]
        out = torch.view_as_complex(_theta_matmul(table, rings).contiguous())
        return out.view(*lead, L, 2 * L - 1)
    # real samples: only m >= 0 is computed (rfft, half the table); m < 0 follows by symmetry.  The data are
    # the left operand, (m, (b, re/im), t) with t contiguous, and the table a transposed view (BLAS reads it
    # in place), so the bmm output (m, b, re/im, l) lands in the output through one strided copy per half.
    nb = f.shape[0]
    rings = torch.fft.rfft(f, dim=-1, norm="forward")  # [b, t, m >= 0]
    x = torch.view_as_real(rings).permute(2, 0, 3, 1).reshape(L, 2 * nb, L)
    half = torch.bmm(x, table[L - 1 :].transpose(1, 2)).view(L, nb, 2, L)  # [m >= 0, b, re/im, l]
    out = f.new_empty(nb, L, 2 * L - 1, 2)
    cols = out.permute(2, 0, 3, 1)  # [m, b, re/im, l] view of the output
    cols[L - 1 :] = half
    cols[: L - 1] = half[1:].flip(0) * tables.conj_neg[:, None, :, None]  # f_{l,-m} = (-1)^m conj f_lm
    return torch.view_as_complex(out).view(*lead, L, 2 * L - 1)


def _inverse_2d(flm2d: torch.Tensor, L: int, real: bool, tables: S2Tables) -> torch.Tensor:
    precision = _REAL_OF[flm2d.dtype]
    lead = flm2d.shape[:-2]
    flm2d = flm2d.to(_COMPLEX_OF[precision]).reshape(-1, L, 2 * L - 1)
    table = tables.inv  # [m, t, l]
    if not real:
        rings = torch.view_as_complex(_theta_matmul(table, flm2d).contiguous())
        f = torch.fft.ifft(torch.fft.ifftshift(rings, dim=-1), dim=-1, norm="forward")  # Σ_m F_m e^{i m phi}
        return f.view(*lead, L, 2 * L - 1)
    # Re(synthesis) = irfft of the Hermitian part: g_lm = (f_lm + (-1)^m conj f_{l,-m}) / 2, m >= 0,
    # formed directly in the bmm's layout (m >= 0, (b, re/im), l); the 1/2 is applied to the bmm output.
    nb = flm2d.shape[0]
    cols = torch.view_as_real(flm2d).permute(2, 0, 3, 1)  # [m, b, re/im, l] view
    sign = tables.conj_pos  # (-1)^m (re, -im), m = 0 .. L-1
    g = cols.new_empty(L, nb, 2, L)
    g[...] = torch.addcmul(cols[L - 1 :], cols[:L].flip(0), sign[:, None, :, None])  # 2 g, m = 0 .. L-1
    y = torch.bmm(g.view(L, 2 * nb, L), table[L - 1 :].transpose(1, 2))  # [m >= 0, (b, re/im), t]
    rings = torch.view_as_complex((0.5 * y).view(L, nb, 2, L).permute(1, 3, 0, 2).contiguous())  # [b, t, m]
    return torch.fft.irfft(rings, n=2 * L - 1, dim=-1, norm="forward").view(*lead, L, 2 * L - 1)


# ---------------------------------------------------------------------------------- public API


def flm_2d_to_1d(flm2d: torch.Tensor, L: int) -> torch.Tensor:
    """(..., L, 2L-1) [l, L-1+m] -> (..., L*L) [l^2+l+m] (pyssht's layout); entries |m| > l are dropped."""
    _check_grid("flm_2d_to_1d", flm2d, L, "coefficients", _LAYOUT_2D)
    return _to_1d(flm2d, L)


def flm_1d_to_2d(flm: torch.Tensor, L: int) -> torch.Tensor:
    """(..., L*L) [l^2+l+m] -> (..., L, 2L-1) [l, L-1+m], zero where |m| > l (a gather, so differentiable)."""
    _check_flat("flm_1d_to_2d", flm, L)
    return _to_2d(flm, L)


def _check_tables(
    fn: str, tables: _Tables, kind: type, sizes: tuple[int, ...], x: torch.Tensor, need: str
) -> None:
    """Tables passed to a transform must be of its kind and bandlimits, hold ``need``, and match the
    data's precision and device (a module's tables follow its ``.double()`` / ``.to()``)."""
    if not isinstance(tables, kind):
        raise TypeError(f"{fn}: tables must be {kind.__name__}, got {type(tables).__name__}")
    if tables.sizes != sizes:
        raise ValueError(f"{fn}: tables are for {tables.sizes} but the transform is for {sizes}")
    table = getattr(tables, need, None)
    if table is None:
        raise ValueError(f"{fn}: the {kind.__name__} passed were built without the {need!r} table")
    if table.dtype != _REAL_OF[x.dtype] or table.device != x.device:
        raise ValueError(
            f"{fn}: tables are {table.dtype} on {table.device} but the data are {x.dtype} on {x.device}"
        )


def s2_forward_2d(f: torch.Tensor, L: int, tables: S2Tables | None = None) -> torch.Tensor:
    """Samples (..., L, 2L-1), real or complex -> complex coefficients (..., L, 2L-1) in the 2-D layout.

    Equals ``pyssht.forward(f, L, Method='MW')`` for any samples (exact for bandlimit L).  ``tables``
    (an ``S2Tables(L)`` of the data's precision and device, e.g. a module's buffers) replaces the
    per-(L, dtype, device) cache, so the call traces under ``torch.compile``.
    """
    _check_grid("s2_forward_2d", f, L, "samples", _MW_GRID)
    if tables is None:
        tables = _torch_forward_table(L, _REAL_OF[f.dtype], f.device)
    _check_tables("s2_forward_2d", tables, S2Tables, (L,), f, "fwd")
    return _forward_2d(f, L, tables)


def s2_inverse_2d(
    flm2d: torch.Tensor, L: int, real: bool = False, tables: S2Tables | None = None
) -> torch.Tensor:
    """Coefficients (..., L, 2L-1) in the 2-D layout -> samples (..., L, 2L-1) on the MW grid.

    Entries with |m| > l are ignored.  ``real=True`` returns the real part of the synthesis as a float
    tensor, which is the signal itself when flm obeys f_{l,-m} = (-1)^m conj(f_lm).  ``tables`` as for
    ``s2_forward_2d``.
    """
    _check_grid("s2_inverse_2d", flm2d, L, "coefficients", _LAYOUT_2D)
    if tables is None:
        tables = _torch_inverse_table(L, _REAL_OF[flm2d.dtype], flm2d.device)
    _check_tables("s2_inverse_2d", tables, S2Tables, (L,), flm2d, "inv")
    return _inverse_2d(flm2d, L, real, tables)


def s2_forward(f: torch.Tensor, L: int) -> torch.Tensor:
    """Samples (..., L, 2L-1) -> complex coefficients (..., L*L) in pyssht's layout l^2+l+m."""
    _check_grid("s2_forward", f, L, "samples", _MW_GRID)
    return _to_1d(_forward_2d(f, L, _torch_forward_table(L, _REAL_OF[f.dtype], f.device)), L)


def s2_inverse(flm: torch.Tensor, L: int, real: bool = False) -> torch.Tensor:
    """Coefficients (..., L*L) in pyssht's layout -> samples (..., L, 2L-1); see ``s2_inverse_2d``."""
    _check_flat("s2_inverse", flm, L)
    return _inverse_2d(_to_2d(flm, L), L, real, _torch_inverse_table(L, _REAL_OF[flm.dtype], flm.device))


# ===================================================================================== SO(3)
#
# Forward: f^l_{mn} = sum_t' d^l_{mn}(beta_t') (Q_{m+n} F_{nm})(beta_t'), F_{nm}(beta_t) the gamma/alpha FFT
# of the samples.  Inverse: F_{nm}(beta_t) = sum_l (2l+1)/(8 pi^2) d^l_{mn}(beta_t) f^l_{mn}, then an
# unnormalised inverse FFT.  One table of d values serves both directions; Q (two L x L matrices) is
# the MW beta quadrature.  Because d^l_{-n,-m} = d^l_{mn} and d^l_{nm} = d^l_{-m,-n} = (-1)^{m+n} d^l_{mn},
# one stored (t, l) matrix serves an orbit of up to four (n, m) columns, and each lmin = max(|m|, |n|)
# bucket stores only degrees l >= its first lmin: for N = L about an eighth of the dense d^l_{mn}(beta_t).
#
# Data layout inside the beta step: "slots" (n, m columns grouped by orbit, in table order) x (batch,
# re/im) x (t or l), real, so every contraction is a plain batched matmul against a real table.  One
# permuting copy and one index_select bring the FFT output into slot order (the FFT shifts are folded
# into the indices); index_copy_ and one permuting copy bring the result back.

_SO3_BUCKETS = 4  # number of lmin buckets (one batched matmul each per parity and orbit size)


@dataclasses.dataclass(frozen=True)
class _SO3Path:
    """Slot bookkeeping for one set of (n, m) columns: all of them ("full") or n >= 0 ("half").

    Slots are sorted by parity of m+n (the first ``n_even`` are even), then bucket and orbit size.  A
    block is a run of orbits sharing parity, bucket and slot count, which one bmm handles:
    (bucket, c0, c1, slots per orbit, first slot, parity).
    """

    blocks: tuple[tuple[int, int, int, int, int, int], ...]
    n_even: int
    target: np.ndarray  # (2, slots): [N-1+n (full) or n (half), L-1+m]
    natural: np.ndarray  # (2, slots): the same column in FFT order [n mod 2N-1, m mod 2L-1]
    nm: np.ndarray  # (2, slots): the column's (n, m)
    sign: np.ndarray  # (slots,): d^l_{mn} = sign * stored entry


@dataclasses.dataclass(frozen=True)
class _SO3Plan:
    L: int
    N: int
    l0: tuple[int, ...]  # first stored degree of each bucket
    pairs: tuple[np.ndarray, ...]  # (m, n) whose d values each bucket stores, shape (C_b, 2)
    full: _SO3Path
    half: _SO3Path


def _bucket_starts(counts: np.ndarray, k_max: int) -> list[int]:
    """Split lmin = 0..L-1 into <= k_max runs minimising sum(count * (L - run start)) (a small DP)."""
    L = len(counts)
    prefix = np.concatenate([[0], np.cumsum(counts)])
    k_max = min(k_max, L)
    best = np.full((k_max + 1, L + 1), np.inf)
    arg = np.zeros((k_max + 1, L + 1), dtype=int)
    best[0, 0] = 0.0
    for k in range(1, k_max + 1):
        for j in range(1, L + 1):
            costs = [best[k - 1, i] + (L - i) * (prefix[j] - prefix[i]) for i in range(j)]
            arg[k, j] = int(np.argmin(costs))
            best[k, j] = costs[arg[k, j]]
    starts, j = [], L
    for k in range(k_max, 0, -1):
        starts.append(arg[k, j])
        j = arg[k, j]
    return sorted(set(starts))


def _so3_path(L: int, N: int, orbits: list, half: bool) -> _SO3Path:
    blocks: list[list[int]] = []
    cols: list[tuple[int, int, int]] = []
    for parity, bucket, c, members in orbits:
        chosen = [mem for mem in members if mem[0] >= 0 or not half]
        last = blocks[-1] if blocks else None
        if last and (last[0], last[3], last[5]) == (bucket, len(chosen), parity) and last[2] == c:
            last[2] = c + 1
        else:
            blocks.append([bucket, c, c + 1, len(chosen), len(cols), parity])
        cols.extend(chosen)
    n, m, sign = (np.array(v, dtype=np.int64) for v in zip(*cols))
    n_cols = (N if half else 2 * N - 1) * (2 * L - 1)
    assert len(set(zip(n.tolist(), m.tolist()))) == len(cols) == n_cols
    return _SO3Path(
        blocks=tuple(tuple(b) for b in blocks),
        n_even=int(((n + m) % 2 == 0).sum()),
        target=np.stack([n if half else N - 1 + n, L - 1 + m]),
        natural=np.stack([n % (2 * N - 1), m % (2 * L - 1)]),
        nm=np.stack([n, m]),
        sign=sign.astype(np.float64),
    )


@functools.lru_cache(maxsize=16)
def _so3_plan(L: int, N: int) -> _SO3Plan:
    """Orbits of the (n, m) columns under d^l_{mn} = d^l_{-n,-m} = (-1)^{m+n} d^l_{nm}, their lmin
    buckets and the slot layout of both paths (complex signals: all columns; real: n >= 0)."""
    seen: set[tuple[int, int]] = set()
    raw = []
    for n in range(-(N - 1), N):
        for m in range(-(L - 1), L):
            if (n, m) in seen:
                continue
            alt = 1 - 2 * ((m + n) % 2)
            # members (n', m', sign) with d^l_{m'n'} = sign * d^l_{mn}; the swap needs |m| < N
            cand = [(n, m, 1), (-n, -m, alt)] + ([(m, n, alt), (-m, -n, 1)] if abs(m) < N else [])
            members = []
            for mem in cand:
                if mem[:2] not in seen:
                    seen.add(mem[:2])
                    members.append(mem)
            s_half = sum(1 for mem in members if mem[0] >= 0)
            raw.append(((m + n) % 2, max(abs(m), abs(n)), len(members), s_half, (m, n), members))
    counts = np.bincount([r[1] for r in raw], minlength=L)
    starts = _bucket_starts(counts, _SO3_BUCKETS)
    bucket_of = np.searchsorted(starts, np.arange(L), side="right") - 1
    raw.sort(key=lambda r: (r[0], bucket_of[r[1]], r[2], r[3], r[1], r[4]))
    pairs: list[list[tuple[int, int]]] = [[] for _ in starts]
    orbits = []
    for parity, lmin, _, _, rep, members in raw:
        b = int(bucket_of[lmin])
        orbits.append((parity, b, len(pairs[b]), members))
        pairs[b].append(rep)
    return _SO3Plan(
        L=L,
        N=N,
        l0=tuple(int(s) for s in starts),
        pairs=tuple(np.array(p, dtype=np.int64).reshape(-1, 2) for p in pairs),
        full=_so3_path(L, N, orbits, half=False),
        half=_so3_path(L, N, orbits, half=True),
    )


@functools.lru_cache(maxsize=2)
def _so3_d_tables_cached(L: int, N: int) -> tuple[np.ndarray, ...]:
    """``_so3_d_tables`` of (L, N), float64, read-only: built once, cast per dtype and device."""
    tables = tuple(_so3_d_tables(_so3_plan(L, N)))
    for t in tables:
        t.flags.writeable = False
    return tables


def _so3_d_table(L: int, N: int, bucket: int) -> np.ndarray:
    return _so3_d_tables_cached(L, N)[bucket]


def _so3_d_tables(plan: _SO3Plan) -> list[np.ndarray]:
    """Per bucket b: D_b[c, t, l - l0_b] = d^l_{m_c n_c}(beta_t), float64 (C_b, L, L - l0_b)."""
    L = plan.L
    tables = [np.zeros((len(p), L, L - l0)) for p, l0 in zip(plan.pairs, plan.l0)]
    for t, beta in enumerate(mw_thetas(L)):
        d = wigner_d(L, float(beta))  # [l, L-1+m, L-1+n]
        for table, p, l0 in zip(tables, plan.pairs, plan.l0):
            table[:, t, :] = d[l0:, L - 1 + p[:, 0], L - 1 + p[:, 1]].T
    return tables


@functools.lru_cache(maxsize=4)
def so3_quadrature(L: int) -> np.ndarray:
    """Q[p, t', t], float64 (2, L, L), read-only: the MW beta quadrature for columns with m+n = p mod 2.

    int_0^pi F(beta) g(beta) sin(beta) dbeta = sum_{t',t} g(beta_t') Q[p, t', t] F(beta_t), for F sampled on
    the MW grid and extended to the circle by F(2pi - beta) = (-1)^p F(beta) (the pole ring once), as the
    MW forward transforms do (docs/CONVENTIONS.md §2.3, §4.3), and any trigonometric polynomial g of degree < L with
    the same parity, e.g. d^l_{mn}.  Scaled by 4 pi^2, the alpha and gamma weights of the FFTs.
    """
    n = 2 * L - 1
    theta = mw_thetas(L)
    mp = np.arange(-(L - 1), L)
    phases = np.exp(-1j * mp[:, None] * theta[None, :])
    mirrored = np.conj(phases) * (np.arange(L) < L - 1)
    conv = _sin_weights(L)[(mp[:, None] + mp[None, :]) + (2 * L - 2)]  # w(m' + m'')
    out = np.zeros((2, L, L))
    for p, e in enumerate(((phases + mirrored) / n, (phases - mirrored) / n)):
        q = e.T @ conv @ e  # g's Fourier coefficients are e @ g, F's are e @ F
        if np.abs(q.imag).max() > _IMAG_TOL * max(1.0, np.abs(q.real).max()):
            raise RuntimeError(f"MW beta quadrature left an imaginary part at L={L}")
        out[p] = 4 * np.pi**2 * q.real
    out.flags.writeable = False
    return out


class _SO3PathTensors(nn.Module):
    """One path's slot bookkeeping as buffers: flat column indices (row * (2L-1) + column) of each slot
    and its signs, with the block list and ``n_even`` of its ``_SO3Path`` as plain attributes."""

    def __init__(self, path: _SO3Path, L: int, N: int, dtype: torch.dtype, device: torch.device | None):
        super().__init__()
        self.blocks, self.n_even = path.blocks, path.n_even
        n, m = path.nm
        alt = 1.0 - 2.0 * ((n + m) % 2)  # (-1)^{m+n}
        buffers = {
            "natural": (path.natural, True),  # into the FFT-ordered (n, m) columns of this path
            "target": (path.target, True),  # into the output columns of this path (n >= 0 rows for "half")
            "source": ((N - 1 + n, L - 1 + m), True),  # into the full coefficient layout [N-1+n, L-1+m]
            "mirror": ((N - 1 - n, L - 1 - m), True),  # (-n, -m) in the full coefficient layout
            "sign": (path.sign[:, None, None], False),  # (slots, 1, 1)
            # (slots, 1, 2, 1): (-1)^{m+n} (1, -1), i.e. conj times the reality sign
            "mirror_sign": (alt[:, None, None, None] * np.array([1.0, -1.0])[:, None], False),
        }
        for name, (value, index) in buffers.items():
            if index:
                t = torch.tensor(value[0] * (2 * L - 1) + value[1], dtype=torch.long, device=device)
            else:  # signs: +-1, exact in every dtype
                t = torch.tensor(value, dtype=dtype, device=device)
            self.register_buffer(name, t, persistent=False)


class SO3Tables(_Tables):
    """The SO(3) tables of bandlimits (L, N) for ``so3_forward`` / ``so3_inverse(..., tables=)``.

    Buffers: ``d0``, ``d1``, ... (``d``: per lmin bucket, (C_b, L, L - l0_b)), ``quad_t`` (2, L, L) (the
    beta quadrature Q[p] transposed, for right multiplication), ``synth_l`` (L,) = (2l+1) / (8 pi^2),
    ``neg_sign`` (N-1, 1, 2L-1) = (-1)^{m+n} for n = -(N-1) .. -1; submodules ``full_path`` and
    ``half_path`` (``_SO3PathTensors``: the complex and the real-signal paths).  Built in ``dtype``
    (default: torch's default dtype) on ``device``; ``so3_table_nbytes`` gives their size.
    """

    def __init__(
        self, L: int, N: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ):
        super().__init__()
        _check_L("SO3Tables", L)
        if isinstance(N, bool) or not isinstance(N, numbers.Integral) or not 1 <= N <= L:
            raise ValueError(f"SO3Tables: N must be an integer with 1 <= N <= L, got N={N!r} for L={L}")
        self.L, self.N = int(L), int(N)
        self.sizes = (self.L, self.N)
        dtype = dtype or torch.get_default_dtype()
        plan = _so3_plan(self.L, self.N)
        self.n_buckets = len(plan.l0)
        for name, master in self._masters().items():
            self._add(name, master(), dtype, device)
        self.full_path = _SO3PathTensors(plan.full, self.L, self.N, dtype, device)
        self.half_path = _SO3PathTensors(
            plan.half, self.L, self.N, dtype, device
        )  # (``half`` is Module.half)

    def _masters(self) -> dict[str, Callable[[], np.ndarray]]:
        L, N = self.L, self.N
        m = np.arange(-(L - 1), L)
        n = np.arange(-(N - 1), 0)
        masters = {f"d{b}": functools.partial(_so3_d_table, L, N, b) for b in range(len(_so3_plan(L, N).l0))}
        masters["quad_t"] = lambda: so3_quadrature(L).transpose(0, 2, 1)
        masters["synth_l"] = lambda: (2 * np.arange(L) + 1) / (8 * np.pi**2)
        masters["neg_sign"] = lambda: 1.0 - 2.0 * ((n[:, None, None] + m) % 2)
        return masters

    @property
    def d(self) -> tuple[torch.Tensor, ...]:
        """The d^l_{mn}(beta_t) tables, one per lmin bucket."""
        return tuple(getattr(self, f"d{b}") for b in range(self.n_buckets))

    def extra_repr(self) -> str:
        return f"L={self.L}, N={self.N}"


@functools.lru_cache(maxsize=8)
def _so3_tables(L: int, N: int, dtype: torch.dtype, device: torch.device) -> SO3Tables:
    """The tables the table-less ``so3_forward`` / ``so3_inverse`` use, one set per (L, N, dtype, device)."""
    return SO3Tables(L, N, dtype, device)


def so3_table_nbytes(L: int, N: int, dtype: torch.dtype = torch.float64) -> int:
    """Bytes held by one ``SO3Tables(L, N, dtype)`` (the buffers): d values, quadrature, indices, signs."""
    plan = _so3_plan(L, N)
    item = torch.empty((), dtype=dtype).element_size()
    d = sum(len(p) * L * (L - l0) for p, l0 in zip(plan.pairs, plan.l0))
    slots = (3 * N - 1) * (2 * L - 1)
    return (d + 2 * L * L + L + (N - 1) * (2 * L - 1) + 3 * slots) * item + 4 * slots * 8


# ------------------------------------------------------------------------------ SO(3) kernels


def _to_cols(x: torch.Tensor) -> torch.Tensor:
    """Complex (B, n, k, m) -> real (n*m, 2B, k): one copy into the layout of the beta step."""
    b, n, k, m = x.shape
    return torch.view_as_real(x).permute(1, 3, 0, 4, 2).reshape(n * m, 2 * b, k)


def _from_cols(y: torch.Tensor, n: int) -> torch.Tensor:
    """Real (n*m, 2B, k) -> a (B, n, k, m, 2) view; ``.contiguous()`` makes it complex-viewable."""
    cols, b2, k = y.shape
    return y.reshape(n, cols // n, b2 // 2, 2, k).permute(2, 0, 4, 1, 3)


def _so3_beta_forward(x: torch.Tensor, tables: SO3Tables, pt: _SO3PathTensors, n_out: int) -> torch.Tensor:
    """x (slots, 2B, t) in slot order -> (n_out * (2L-1), 2B, l) in target order: sign * sum_t' d (Q x)."""
    L = x.shape[-1]
    n_even = pt.n_even
    by_parity = (x[:n_even] @ tables.quad_t[0], x[n_even:] @ tables.quad_t[1])
    out = x.new_zeros(n_out * (2 * L - 1), x.shape[1], L)
    d, sign, target = tables.d, pt.sign, pt.target  # module attributes, read once
    for bucket, c0, c1, s, first, parity in pt.blocks:
        table = d[bucket][c0:c1]  # (C, t, L - l0)
        rows = slice(first, first + (c1 - c0) * s)
        start = first - (n_even if parity else 0)
        block = by_parity[parity][start : start + (c1 - c0) * s].reshape(c1 - c0, s * x.shape[1], L)
        vals = torch.bmm(block, table).reshape((c1 - c0) * s, x.shape[1], -1)
        if parity:  # orbits with m+n even have sign +1 throughout
            vals = vals * sign[rows]
        out[..., L - table.shape[-1] :].index_copy_(0, target[rows], vals)
    return out


def _so3_beta_inverse(z: torch.Tensor, tables: SO3Tables, pt: _SO3PathTensors) -> torch.Tensor:
    """z (slots, 2B, l) scaled, in slot order -> (slots, 2B, t) in FFT column order: sum_l d z."""
    L = z.shape[-1]
    out = torch.empty_like(z)
    d, natural = tables.d, pt.natural
    for bucket, c0, c1, s, first, _ in pt.blocks:
        table = d[bucket][c0:c1]
        rows = slice(first, first + (c1 - c0) * s)
        block = z[rows].reshape(c1 - c0, s * z.shape[1], L)[..., L - table.shape[-1] :]
        vals = torch.bmm(block, table.transpose(1, 2)).reshape((c1 - c0) * s, z.shape[1], L)
        out.index_copy_(0, natural[rows], vals)
    return out


def _so3_forward(f: torch.Tensor, L: int, N: int, tables: SO3Tables) -> torch.Tensor:
    lead, g, a = f.shape[:-3], 2 * N - 1, 2 * L - 1
    if f.numel() == 0:  # MKL's FFT rejects empty batches
        return f.new_zeros(f.shape, dtype=_COMPLEX_OF[_REAL_OF[f.dtype]])
    f = f.reshape(-1, g, L, a)
    if f.is_complex():
        rings = torch.fft.fftn(f, dim=(-3, -1), norm="forward")  # FFT order in n and m
        x = _to_cols(rings).index_select(0, tables.full_path.natural)
        flmn = torch.view_as_complex(
            _from_cols(_so3_beta_forward(x, tables, tables.full_path, g), g).contiguous()
        )
    else:
        rings = torch.fft.fft(torch.fft.rfft(f, dim=-3, norm="forward"), dim=-1, norm="forward")  # n >= 0
        x = _to_cols(rings).index_select(0, tables.half_path.natural)
        out = x.new_empty(x.shape[1] // 2, g, L, a, 2)
        out[:, N - 1 :] = _from_cols(_so3_beta_forward(x, tables, tables.half_path, N), N)
        flmn = torch.view_as_complex(out)
        # real signals: f^l_{-m,-n} = (-1)^{m+n} conj(f^l_{mn})
        flmn[:, : N - 1] = torch.conj(torch.flip(flmn[:, N:], dims=(1, 3))) * tables.neg_sign
    return flmn.reshape(*lead, g, L, a)


def _so3_inverse(flmn: torch.Tensor, L: int, N: int, real: bool, tables: SO3Tables) -> torch.Tensor:
    lead, g, a = flmn.shape[:-3], 2 * N - 1, 2 * L - 1
    precision = _REAL_OF[flmn.dtype]
    if flmn.numel() == 0:
        return flmn.new_zeros(flmn.shape, dtype=precision if real else _COMPLEX_OF[precision])
    flmn = flmn.to(_COMPLEX_OF[precision]).reshape(-1, g, L, a)
    pt = tables.half_path if real else tables.full_path
    cols = _to_cols(flmn)
    scale = pt.sign * tables.synth_l
    if real:
        # Re(synthesis of f) = synthesis of its real-signal part (f^l_{mn} + (-1)^{m+n} conj f^l_{-m,-n}) / 2,
        # which is Hermitian, so the columns n >= 0 and an inverse real FFT along gamma suffice.
        z = cols.index_select(0, pt.source).unflatten(1, (-1, 2))
        z = torch.addcmul(z, cols.index_select(0, pt.mirror).unflatten(1, (-1, 2)), pt.mirror_sign).flatten(
            1, 2
        )
        scale = scale * 0.5
    else:
        z = cols.index_select(0, pt.source)
    rings = _from_cols(_so3_beta_inverse(z * scale, tables, pt), N if real else g)
    rings = torch.view_as_complex(rings.contiguous())
    if real:
        f = torch.fft.irfft(torch.fft.ifft(rings, dim=-1, norm="forward"), n=g, dim=-3, norm="forward")
    else:
        f = torch.fft.ifftn(rings, dim=(-3, -1), norm="forward")
    return f.reshape(*lead, g, L, a)


# ------------------------------------------------------------------------------ SO(3) public API

_SO3_GRID = "MW SO(3) grid: (2N-1) x L x (2L-1), gamma, beta, alpha"
_SO3_LAYOUT = "flmn layout [N-1+n, l, L-1+m]: (2N-1) x L x (2L-1)"


def _check_so3(fn: str, x: torch.Tensor, L: int, N: int, what: str, layout: str) -> None:
    _check_L(fn, L)
    if isinstance(N, bool) or not isinstance(N, numbers.Integral) or not 1 <= N <= L:
        raise ValueError(f"{fn}: N must be an integer with 1 <= N <= L, got N={N!r} for L={L}")
    shape = (2 * N - 1, L, 2 * L - 1)
    ok = isinstance(x, torch.Tensor) and x.ndim >= 3 and tuple(x.shape[-3:]) == shape
    _check_tensor(fn, x, what, "(..., {}, {}, {})".format(*shape), f"L={L}, N={N}", layout, ok)


def so3_forward(f: torch.Tensor, L: int, N: int, tables: SO3Tables | None = None) -> torch.Tensor:
    """Samples (..., 2N-1, L, 2L-1) on the MW SO(3) grid, real or complex -> complex flmn (..., 2N-1, L, 2L-1).

    flmn[..., N-1+n, l, L-1+m] = f^l_{mn} = int f(rho) D^l_{mn}(rho) drho by the MW quadrature: equal to
    the MW forward transform of ``so3`` for any samples, exact for signals with bandlimits (L, N); zero
    where |m| > l or |n| > l.  Real input takes a half-size path and fills n < 0 from
    f^l_{-m,-n} = (-1)^{m+n} conj(f^l_{mn}).  ``tables`` (an ``SO3Tables(L, N)`` of the data's precision and
    device, e.g. a module's buffers) replaces the per-(L, N, dtype, device) cache, so the call traces under
    ``torch.compile``.
    """
    _check_so3("so3_forward", f, L, N, "samples", _SO3_GRID)
    if tables is None:
        tables = _so3_tables(L, N, _REAL_OF[f.dtype], f.device)
    _check_tables("so3_forward", tables, SO3Tables, (L, N), f, "quad_t")
    return _so3_forward(f, L, N, tables)


def so3_inverse(
    flmn: torch.Tensor, L: int, N: int, real: bool = False, tables: SO3Tables | None = None
) -> torch.Tensor:
    """flmn (..., 2N-1, L, 2L-1) -> samples (..., 2N-1, L, 2L-1) of sum_lmn (2l+1)/(8pi^2) f^l_{mn} conj(D^l_{mn}).

    Entries with |m| > l or |n| > l are ignored.  ``real=True`` returns the real part of the synthesis
    as a float tensor (the signal itself when f^l_{-m,-n} = (-1)^{m+n} conj(f^l_{mn})), at half the cost.
    ``tables`` as for ``so3_forward``.
    """
    _check_so3("so3_inverse", flmn, L, N, "coefficients", _SO3_LAYOUT)
    if tables is None:
        tables = _so3_tables(L, N, _REAL_OF[flmn.dtype], flmn.device)
    _check_tables("so3_inverse", tables, SO3Tables, (L, N), flmn, "quad_t")
    return _so3_inverse(flmn, L, N, real, tables)
