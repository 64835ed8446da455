"""The fast torch path of ``Pointwise``: inverse transform → σ → forward transform as five GEMMs.

The reference (``layers.Pointwise``) zero-pads the coefficients to the oversampled bandlimits
(L_os, N_os), runs the full transforms there and truncates the result: most of its work is on
coefficients that are zero on the way in or thrown away on the way out, and on layout copies
between FFTs and the β step. Here the maps are restricted to what the layer reads and keeps:

* inverse (coefficients l < L, |n| < N → samples on the (L_os, N_os) MW grid): per column (n ≥ 0, m)
  a β table ``(2l+1)/(8π²) d^l_mn(β_t)`` (S²: ``inverse_table``), then the α and γ syntheses as
  real DFT matrices of only the |m| < L and 0 ≤ n < N frequencies;
* forward (grid → l < L, |n| < N): γ and α analyses restricted to those frequencies, then per column
  the MW quadrature folded into the d table (``Σ_t' d^l_mn(β_t') Q[t', t]``; S²: ``forward_table``).

The samples are real (real signals, see ``layers.Pointwise``): synthesis uses only n ≥ 0 and takes
the real part — i.e. it synthesises the real-signal part (f_mn + (−1)^{m+n} conj f_{−m,−n}) / 2, as
``transforms.so3_inverse(real=True)`` does — and analysis fills n < 0 from f^l_{−m,−n} =
(−1)^{m+n} conj f^l_mn. Every step is a plain matmul on contiguous data in the layout the next one
reads (no FFT on prime lengths 2L−1, no permute between steps); autograd's backward is the
transposed matmuls. Same function as the reference for any input (``tests/test_fast_path.py``).
Tables are float64 numpy (cached per sizes), cast per dtype and device.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from sphc.runtime.transforms import _Tables, forward_table, inverse_table, mw_thetas, so3_quadrature
from sphc.runtime.wigner import wigner_d


@functools.lru_cache(maxsize=16)
def grid_tables(L: int, N: int, L_os: int, N_os: int, so3: bool) -> dict[str, np.ndarray]:
    """Float64 tables of the restricted transforms (see the module docstring); read-only.

    ``inv_beta`` (N, 2L−1, L, L_os) [n, m, l, t], ``fwd_beta`` (N, 2L−1, L_os, L) [n, m, t, l],
    ``inv_alpha`` (2(2L_os−1), 2(2L−1)) [(c', a), (m, c)], ``fwd_alpha`` (2(2L−1), 2(2L_os−1))
    [(m, c'), (c, a)], ``inv_gamma`` (2N_os−1, 2N) [g, (n, c)], ``fwd_gamma`` (2N, 2N_os−1); c = re/im.
    Entries of orders |m| > l or |n| > l are zero, so the maps never read or write them.
    """
    M, A, G = 2 * L - 1, 2 * L_os - 1, 2 * N_os - 1
    m = np.arange(-(L - 1), L)
    inv_beta = np.zeros((N, M, L, L_os))
    fwd_beta = np.zeros((N, M, L_os, L))
    if so3:
        d = np.stack([wigner_d(L, float(b)) for b in mw_thetas(L_os)])  # [t, l, L-1+m, L-1+n]
        d = d[:, :, :, L - 1 : L - 1 + N].transpose(3, 2, 1, 0)  # [n, m, l, t]
        inv_beta = d * ((2 * np.arange(L) + 1) / (8 * np.pi**2))[None, None, :, None]
        q = so3_quadrature(L_os)  # [parity, t', t]
        parity = (m[None, :] + np.arange(N)[:, None]) % 2
        fwd_beta = np.einsum("nmlu,nmut->nmtl", d, q[parity])
    else:
        inv_beta[0] = inverse_table(L_os)[L_os - L : L_os - 1 + L, :, :L].transpose(0, 2, 1)
        fwd_beta[0] = forward_table(L_os)[L_os - L : L_os - 1 + L, :L, :].transpose(0, 2, 1)
    alpha = 2 * np.pi * np.arange(A) / A
    c, s = np.cos(np.outer(m, alpha)), np.sin(np.outer(m, alpha))  # [m, a]
    # synthesis e^{i m α}: (re, im)[a] = Σ_m (G_re cos − G_im sin, G_re sin + G_im cos)
    inv_alpha = np.stack([np.stack([c, -s], 1), np.stack([s, c], 1)])  # [c', m, c, a]
    inv_alpha = inv_alpha.transpose(0, 3, 1, 2).reshape(2 * A, 2 * M)
    # analysis (1/A) Σ_a e^{−i m α}: re = Σ (F_re cos + F_im sin), im = Σ (F_im cos − F_re sin)
    fwd_alpha = np.stack([np.stack([c, s], 1), np.stack([-s, c], 1)], 1) / A  # [m, c', c, a]
    fwd_alpha = fwd_alpha.reshape(2 * M, 2 * A)
    gamma = 2 * np.pi * np.arange(G) / G
    n = np.arange(N)
    gc, gs = np.cos(np.outer(gamma, n)), np.sin(np.outer(gamma, n))  # [g, n]
    inv_gamma = np.stack([gc, -gs], 2).reshape(G, 2 * N)  # f = Σ_n Re(H_n e^{i n γ})
    fwd_gamma = np.stack([gc, -gs], 2).reshape(G, 2 * N).T / G  # F_n = (1/G) Σ_g f e^{−i n γ}
    tables = {
        "inv_beta": np.ascontiguousarray(inv_beta),
        "fwd_beta": np.ascontiguousarray(fwd_beta),
        "inv_alpha": np.ascontiguousarray(inv_alpha),
        "fwd_alpha": np.ascontiguousarray(fwd_alpha),
        "inv_gamma": np.ascontiguousarray(inv_gamma),
        "fwd_gamma": np.ascontiguousarray(fwd_gamma),
        # (−1)^{m+n} for n ≥ 0 (0 at n = 0: that column is read as it is)
        "mirror_sign": np.where(n[:, None] > 0, (-1.0) ** (m[None, :] + n[:, None]), 0.0),
    }
    for t in tables.values():
        t.flags.writeable = False
    return tables


class GridTables(_Tables):
    """``grid_tables`` as non-persistent buffers of the layer that owns them (``Pointwise.fast``):
    they follow ``.to()`` / ``.double()`` (recast from the float64 masters), stay out of
    ``state_dict``, and the call path reads them as attributes, so ``torch.compile`` traces it."""

    def __init__(self, L: int, N: int, L_os: int, N_os: int, so3: bool, dtype: torch.dtype | None = None):
        super().__init__()
        self.sizes = (L, N, L_os, N_os, so3)
        for name, master in self._masters().items():
            self._add(name, master(), dtype or torch.get_default_dtype(), None)

    def _masters(self):
        tables = grid_tables(*self.sizes)
        return {name: (lambda name=name: tables[name]) for name in tables}

    def extra_repr(self) -> str:
        return "L={}, N={}, L_os={}, N_os={}, so3={}".format(*self.sizes)


#: Samples per chunk of ``_Grid``: its (2N_os−1) × (2L_os−1) × columns samples stay in cache.
CHUNK = 16384


class _Grid(torch.autograd.Function):
    """α, γ synthesis → σ on the samples → γ, α analysis, in chunks of (b, c, t) columns.

    The samples are the one large tensor of a pointwise layer (k³ times the coefficients for
    oversampling k); computing, activating and analysing them chunk by chunk keeps every
    intermediate in cache and allocates nothing grid-sized. The backward recomputes each chunk's
    samples from the saved ring coefficients instead of saving the samples or the activation.
    """

    @staticmethod
    def forward(ctx, g_rows, inv_alpha, inv_gamma, fwd_gamma, fwd_alpha, act):
        ctx.save_for_backward(g_rows, inv_alpha, inv_gamma, fwd_gamma, fwd_alpha)
        ctx.act = act
        N, X = g_rows.shape[0], g_rows.shape[2]
        A2 = inv_alpha.shape[0]
        out = g_rows.new_empty(N, fwd_alpha.shape[0], X)
        step = max(1, CHUNK // (A2 // 2))
        for s in range(0, X, step):
            h = torch.matmul(inv_alpha, g_rows[:, :, s : s + step])  # n, (c', a), cols
            f = act(inv_gamma @ h.view(2 * N, -1))  # g, (a, cols): the samples
            F = (fwd_gamma @ f).view(N, A2, -1)
            torch.matmul(fwd_alpha, F, out=out[:, :, s : s + step])
        return out

    @staticmethod
    def backward(ctx, grad):
        g_rows, inv_alpha, inv_gamma, fwd_gamma, fwd_alpha = ctx.saved_tensors
        N, X = g_rows.shape[0], g_rows.shape[2]
        A2 = inv_alpha.shape[0]
        out = torch.empty_like(g_rows)
        step = max(1, CHUNK // (A2 // 2))
        for s in range(0, X, step):
            f = inv_gamma @ torch.matmul(inv_alpha, g_rows[:, :, s : s + step]).view(2 * N, -1)
            gF = torch.matmul(fwd_alpha.T, grad[:, :, s : s + step])
            gf = _act_backward(ctx.act, f, fwd_gamma.T @ gF.view(2 * N, -1))
            torch.matmul(inv_alpha.T, (inv_gamma.T @ gf).view(N, A2, -1), out=out[:, :, s : s + step])
        return out, None, None, None, None, None


def _act_backward(act, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """grad of ``act`` at ``f`` times ``g`` (ReLU and identity directly, others through autograd)."""
    if isinstance(act, torch.nn.ReLU):
        return torch.ops.aten.threshold_backward(g, f, 0)  # what ReLU's own backward computes
    if isinstance(act, torch.nn.Identity):
        return g
    with torch.enable_grad():
        f = f.detach().requires_grad_(True)
        return torch.autograd.grad(act(f), f, g)[0]


def pointwise(x: torch.Tensor, act, t: GridTables) -> torch.Tensor:
    """``act`` on the (L_os, N_os) MW samples of the real signal ``x`` (B, C, L, 2L−1, 2N−1), back to x's bandlimits."""
    B, C, L, M, T = x.shape
    N = (T + 1) // 2
    L_os = t.sizes[2]
    A = 2 * L_os - 1
    # columns n >= 0 of the real-signal part, as (n, m, re/im, b, c, l) real rows
    mirror = _mirror_factor(t, N)
    z = _fold(x, mirror) if torch.compiler.is_compiling() else _Fold.apply(x, mirror)
    z = z.view(N * M, 2 * B * C, L)
    bc = B * C
    g_rows = torch.bmm(z, t.inv_beta.view(N * M, L, L_os))  # (n, m), (c, bc), t
    g_rows = g_rows.view(N, 2 * M, bc * L_os)
    tabs = (t.inv_alpha, t.inv_gamma, t.fwd_gamma, t.fwd_alpha)
    if torch.compiler.is_compiling():  # the same maps unchunked: traceable
        h = torch.matmul(tabs[0], g_rows).view(2 * N, -1)  # n, (c', a), (bc, t)
        F = torch.matmul(tabs[3], (tabs[2] @ act(tabs[1] @ h)).view(N, 2 * A, -1))
    else:
        F = _Grid.apply(g_rows, *tabs, act)  # n, (m, c'), (bc, t)
    y = torch.bmm(F.view(N * M, 2 * bc, L_os), t.fwd_beta.view(N * M, L_os, L))  # (n, m), (c, bc), l
    y = y.view(N, M, 2, B, C, L)
    # n < 0 from f^l_{-m,-n} = (-1)^{m+n} conj f^l_{mn}
    return _unfold(y, mirror) if torch.compiler.is_compiling() else _Unfold.apply(y, mirror)


def _mirror_factor(t: GridTables, N: int) -> torch.Tensor:
    """(N−1, M, 2, 1, 1, 1): (−1)^{m+n} times conj's (1, −1) on (re, im), for the columns n = 1 … N−1."""
    conj = torch.tensor([1.0, -1.0], dtype=t.mirror_sign.dtype, device=t.mirror_sign.device)
    return (t.mirror_sign[1:, :, None] * conj)[..., None, None, None]


def _fold(x: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
    """(B, C, L, M, 2N−1) complex → (N, M, re/im, B, C, L) real: the columns n ≥ 0, plus for n ≥ 1 the
    mirrored column (−n, −m) times ``mirror`` (the real-signal part, see ``pointwise``); the adjoint
    of ``_unfold``. The layout change is one 2-D transpose ((B, C, L) × (M, T, re/im): torch's blocked
    copy, ~5× faster than a strided permute of these small inner axes) and copies of whole
    (re/im, B, C, L) blocks."""
    N = mirror.shape[0] + 1
    B, C, L, M, T = x.shape
    xt = torch.view_as_real(x.contiguous()).view(B * C * L, M * T * 2).t().contiguous()
    xt = xt.view(M, T, 2, B, C, L).transpose(0, 1)  # (T, M, 2, B, C, L) view
    z = xt[N - 1 :].contiguous()
    if N > 1:
        z[1:] += xt[: N - 1].flip(0, 1) * mirror
    return z


def _unfold(z: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
    """(N, M, re/im, B, C, L) real → (B, C, L, M, 2N−1) complex: the columns n ≥ 0 as they are, the
    columns −n from (n, −m) times ``mirror``; the adjoint of ``_fold``, with the same copies."""
    N, M, _, B, C, L = z.shape
    T = 2 * N - 1
    zt = torch.cat([(z[1:] * mirror).flip(0, 1), z]) if N > 1 else z  # (T, M, 2, B, C, L)
    out = zt.transpose(0, 1).contiguous().view(M * T * 2, B * C * L).t().contiguous()
    return torch.view_as_complex(out.view(B, C, L, M, T, 2))


class _Fold(torch.autograd.Function):
    """``_fold`` with ``_unfold`` as its backward (one strided pass each way, no autograd graph of
    permutes, flips and sums)."""

    @staticmethod
    def forward(ctx, x, mirror):
        ctx.save_for_backward(mirror)
        return _fold(x, mirror)

    @staticmethod
    def backward(ctx, grad):
        return _unfold(grad, ctx.saved_tensors[0]), None


class _Unfold(torch.autograd.Function):
    """``_unfold`` with ``_fold`` as its backward."""

    @staticmethod
    def forward(ctx, z, mirror):
        ctx.save_for_backward(mirror)
        return _unfold(z, mirror)

    @staticmethod
    def backward(ctx, grad):
        return _fold(grad.contiguous(), ctx.saved_tensors[0]), None
