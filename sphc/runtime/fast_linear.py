"""The fast torch path of ``sphc::degree_linear``: one batched complex GEMM over the degrees.

The reference (``ops.degree_linear_reference``) masks the input and lets ``einsum`` choose its
own permutes. Here the data go into the one layout a per-degree GEMM reads, (l, B·m, C·T), in one
copy, the L GEMMs run as one ``bmm`` and the result comes back in one copy. Row (l, m) of the output
reads only row (l, m) of the input, so zeroing the orders |m| > l of the output is the same as
the reference's masking of the input (and the backward masks both factors of grad w).
"""

from __future__ import annotations

import torch


def _mask(L: int, device) -> torch.Tensor:
    l = torch.arange(L, device=device)[:, None]
    m = torch.arange(2 * L - 1, device=device)[None, :] - (L - 1)
    return m.abs() <= l


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(B, C, L, M, T) → (L, B·M, C·T)."""
    B, C, L, M, T = x.shape
    return x.permute(2, 0, 3, 1, 4).reshape(L, B * M, C * T)


def _unrows(y: torch.Tensor, B: int, M: int, K: int, V: int) -> torch.Tensor:
    """(L, B·M, K·V) → (B, K, L, M, V) with orders |m| > l zeroed, contiguous."""
    L = y.shape[0]
    y = y.view(L, B, M, K, V).permute(1, 3, 0, 2, 4)
    keep = _mask(L, y.device)[:, :, None]
    return torch.where(keep, y, torch.zeros((), dtype=y.dtype, device=y.device)).contiguous()


def degree_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """y[b,k,l,m,v] = Σ_{c,t} x[b,c,l,m,t] w[l,c,t,k,v] on |m| <= l, zero elsewhere."""
    B, C, L, M, T = x.shape
    K, V = w.shape[3], w.shape[4]
    y = torch.bmm(_rows(x), w.reshape(L, C * T, K * V))
    return _unrows(y, B, M, K, V)


def degree_linear_backward(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor):
    """(grad x, grad w) of ``degree_linear``; neither reads orders |m| > l."""
    B, C, L, M, T = x.shape
    K, V = w.shape[3], w.shape[4]
    keep = _mask(L, x.device)[None, None, :, :, None]
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    g_rows = _rows(torch.where(keep, g, zero))
    gx = torch.bmm(g_rows, w.reshape(L, C * T, K * V).mH)
    gx = gx.view(L, B, M, C, T).permute(1, 3, 0, 2, 4).contiguous()
    gw = torch.bmm(_rows(torch.where(keep, x, zero)).mH, g_rows)
    return gx, gw.reshape(w.shape)
