"""Reference torch implementation of every layer: the semantics generated models run.

Generated modules import this file. Every layer works on the padded harmonic layout of
``layout.py`` — ``(batch, C, L, 2L-1, T)`` complex — in float32 or float64 (complex64 /
complex128), on CPU or CUDA, with autograd. All work is vectorised over batch, m and columns;
the only Python loops run once, at construction, to build index tables. Later backends (Triton)
must match these modules numerically.

Weights are stored as real tensors holding only the entries a layer really has (so
``sum(p.numel())`` equals ``sphc explain``'s count and ``Module.double()`` converts them) and
are scattered into the padded complex tensors at call time.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sphc import cg, layout
from sphc.errors import Span, SphcError, SphcInternalError
from sphc.limits import TP_TERM_BYTES, size_limits
from sphc.runtime import fast_pointwise, fast_tp, ops, tp_kernels
from sphc.runtime.transforms import (
    S2Tables,
    SO3Tables,
    s2_forward_2d,
    s2_inverse_2d,
    so3_forward,
    so3_inverse,
)

Where = tuple[str, int, int] | None

_ACTIVATIONS = {
    "none": nn.Identity,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
}


def cg_table(paths: tuple[tuple[int, int, int], ...], sha256: str) -> np.ndarray:
    """A tensor product's CG values, rebuilt from the exact recursion (disk-cached) and checked
    against the SHA-256 the compiler recorded: a model runs only with the table it was compiled for."""
    values = cg.pattern_values(paths)
    if cg.table_sha256(values) != sha256:
        raise SphcError(
            "this model's Clebsch–Gordan table differs from the one it was compiled with",
            hint="recompile the model with this version of sphc (`sphc compile`)",
        )
    return values


class PackedWeight(nn.Module):
    """A complex (or real) weight of a padded shape of which only the ``mask`` entries exist.

    Only free entries are parameters (so ``numel`` counts exactly what is learned); ``forward()``
    gathers them into the padded tensor. ``real_axes`` names axes indexed by a centred n (the
    SO(3) column axes): the weight is then constrained to W[-n] = (-1)^(Σn) conj(W[n]), which is
    what a *real* filter's harmonic coefficients satisfy (docs/CONVENTIONS.md §7.1–§7.2), so real S² / SO(3)
    signals stay real and pointwise activations on their samples are well defined. Each mirror
    pair then stores one complex number and a self-mirrored entry (all n = 0) one real number.
    Initialised normal with standard deviation ``std`` (broadcast against the mask).
    """

    def __init__(
        self,
        mask: np.ndarray,
        std: np.ndarray | float,
        complex_: bool = True,
        real_axes: tuple[int, ...] = (),
    ):
        super().__init__()
        self.shape, self.complex = tuple(mask.shape), complex_
        valid = mask.reshape(-1)
        idx = np.arange(valid.size)
        mirror, sign = idx, np.ones(valid.size)
        if real_axes:
            coords = np.indices(mask.shape)
            flipped = coords.copy()
            for a in real_axes:
                flipped[a] = mask.shape[a] - 1 - coords[a]
            mirror = np.ravel_multi_index(tuple(flipped), mask.shape).reshape(-1)
            nsum = sum(coords[a] - (mask.shape[a] - 1) // 2 for a in real_axes).reshape(-1)
            sign = np.where(nsum % 2, -1.0, 1.0)
        owner = valid & (idx <= mirror)  # entries that carry parameters
        has_imag = owner & (idx < mirror) if real_axes else owner
        if not complex_:
            has_imag = np.zeros_like(owner)
        # parameter slots: 1 + position in the flat parameter vector (slot 0 holds a zero)
        n_re, n_im = int(owner.sum()), int(has_imag.sum())
        re_slot = np.zeros(valid.size, dtype=np.int64)
        im_slot = np.zeros(valid.size, dtype=np.int64)
        re_slot[owner] = 1 + np.arange(n_re)
        im_slot[has_imag] = 1 + n_re + np.arange(n_im)
        re_coef = owner.astype(np.float64)
        im_coef = has_imag.astype(np.float64)
        copy = valid & ~owner  # determined by their mirror: W = sign * conj(W_mirror)
        re_slot[copy], re_coef[copy] = re_slot[mirror[copy]], sign[copy]
        im_slot[copy], im_coef[copy] = im_slot[mirror[copy]], -sign[copy]
        for name, value in (("re_slot", re_slot), ("im_slot", im_slot)):
            self.register_buffer(name, torch.from_numpy(value), persistent=False)
        for name, value in (("re_coef", re_coef), ("im_coef", im_coef)):
            self.register_buffer(name, torch.from_numpy(value).float(), persistent=False)
        std = np.broadcast_to(std, mask.shape).reshape(-1)
        scale = np.concatenate([std[owner], std[has_imag]]) / (math.sqrt(2) if complex_ else 1.0)
        self.weight = nn.Parameter(torch.randn(n_re + n_im) * torch.from_numpy(scale).float())

    def forward(self) -> torch.Tensor:
        theta = torch.cat([self.weight.new_zeros(1), self.weight])
        re = theta[self.re_slot] * self.re_coef.to(theta.dtype)
        if not self.complex:
            return re.view(self.shape)
        im = theta[self.im_slot] * self.im_coef.to(theta.dtype)
        return torch.complex(re, im).view(self.shape)


def _col_mask(cols: layout.Cols, width: int) -> np.ndarray:
    mask = np.zeros((len(cols), width), dtype=bool)
    for l, c in enumerate(cols):
        mask[l, list(c)] = True
    return mask


class Members(NamedTuple):
    """Which elements of a set input are real (``InputSHT(set=True)`` → ``Norm``, ``SetPool``)."""

    mask: torch.Tensor  # (batch · elements,) bool, element-major within each example
    size: int  # examples in the batch


class InputSHT(nn.Module):
    """Check the sampled input and take its exact spherical-harmonic transform (MW grid).

    With ``set=True`` an example is a set of signals (batch, elements, C, L, 2L-1) padded to a common
    size, with a mask (batch, elements) marking the real ones. Every element goes through the
    per-element layers as one batch entry (static shapes: ``torch.compile(fullgraph=True)`` and DDP
    see no data-dependent size); the mask keeps padding out of everything that mixes elements —
    ``Norm``'s batch statistics and the ``SetPool`` — so it contributes exactly nothing.
    """

    def __init__(self, C: int, L: int, where: Where = None, set: bool = False):
        super().__init__()
        self.C, self.L, self.where, self.set = C, L, where, set
        # follows .double()/.float()/.to() like the weights, so the input check knows the precision
        self.register_buffer("precision", torch.zeros(()), persistent=False)
        self.tables = S2Tables(L, inverse=False)  # non-persistent buffers: the call path is pure torch

    def _fail(self, message: str, hint: str) -> SphcError:
        return SphcError(message, Span(*self.where) if self.where else None, hint=hint)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        expect = (self.C, self.L, 2 * self.L - 1)
        lead = ("batch", "elements") if self.set else ("batch",)
        if x.dim() != len(lead) + 3 or tuple(x.shape[len(lead) :]) != expect:
            names = ", ".join(lead)
            raise self._fail(
                f"model input must have shape ({names}, {expect[0]}, {expect[1]}, {expect[2]}) "
                f"= ({names}, channels, L, 2L-1) real MW samples, got {tuple(x.shape)}",
                "m.input_shape gives (channels, L, 2L-1)"
                + (" of one element of the set" if self.set else ""),
            )
        if x.dtype != self.precision.dtype:
            raise self._fail(
                f"model input is {x.dtype} but the model computes in {self.precision.dtype}: pass real "
                f"{self.precision.dtype} samples of shape ({', '.join(lead)}, {expect[0]}, {expect[1]}, {expect[2]})",
                "pass real samples of the model's dtype, or convert the model with .double() / .float()",
            )
        if not self.set:
            if mask is not None:
                raise self._fail("this model's input is not a set: it takes no mask", "call model(x)")
            return s2_forward_2d(x, self.L, tables=self.tables).unsqueeze(-1)
        B, A = x.shape[:2]
        if mask is None:
            mask = torch.ones(B, A, dtype=torch.bool, device=x.device)
        if mask.shape != (B, A) or mask.dtype != torch.bool:
            raise self._fail(
                f"the set mask must be a bool tensor of shape (batch, elements) = {(B, A)}, "
                f"got {mask.dtype} {tuple(mask.shape)}",
                "True where an element is real, False where it is padding",
            )
        flat = mask.reshape(B * A)
        x = torch.where(
            flat[:, None, None, None], x.reshape(B * A, *expect), 0.0
        )  # padding: zeros, never NaN
        return s2_forward_2d(x, self.L, tables=self.tables).unsqueeze(-1), Members(flat, B)


class SetPool(nn.Module):
    """Sum (or mean) over each example's real elements: (batch · elements, F) → (batch, F).

    Padding is selected away (``torch.where``), not multiplied by zero, so it contributes exactly
    nothing; permuting a set changes the result by rounding only; an empty set gives zeros.
    """

    def __init__(self, mean: bool = False):
        super().__init__()
        self.mean = mean

    def forward(self, x: torch.Tensor, members: Members) -> torch.Tensor:
        B = members.size
        mask = members.mask.reshape(B, -1, *([1] * (x.dim() - 1)))
        out = torch.where(mask, x.reshape(B, -1, *x.shape[1:]), 0.0).sum(1)
        if self.mean:
            out = out / mask.sum(1).clamp_min(1).to(out.dtype)
        return out


class S2Conv(nn.Module):
    """S² → SO(3): y^l_{m,n} = f_lm W^l_{c,k,n} summed over input channels (docs/CONVENTIONS.md §7.1).

    ``W^l_n`` stands for 8π²/(2l+1) conj(ψ_ln) of a learned *real* filter ψ on the sphere (learning W
    directly is the same family of maps without the constant), so a real input gives a real SO(3)
    signal whose samples a pointwise activation can act on.
    """

    def __init__(self, C_in: int, C: int, L_in: int, L: int, N: int):
        super().__init__()
        self.L, self.key, self.backend = L, "", "auto"
        mask = np.broadcast_to(_col_mask(layout.so3_cols(L, N), 2 * N - 1), (C_in, C, L, 2 * N - 1))
        self.w = PackedWeight(mask, 1 / math.sqrt(C_in), real_axes=(3,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w().permute(2, 0, 1, 3).unsqueeze(2)  # (l, c, 1, k, n)
        return ops.degree_linear(ops.truncate(x, self.L)[..., :1], w, self.key, self.backend)


class SO3Conv(nn.Module):
    """SO(3) → SO(3): y^l_{m,n} = Σ_{c,n'} f^l_{c,m,n'} W^l_{c,k,n,n'} (W = conj ψ, docs/CONVENTIONS.md §7.2).

    ψ is a real filter on SO(3), so real signals stay real (see ``PackedWeight``).
    """

    def __init__(self, C_in: int, C: int, L_in: int, N_in: int, L: int, N: int):
        super().__init__()
        self.L, self.key, self.backend = L, "", "auto"
        out = _col_mask(layout.so3_cols(L, N), 2 * N - 1)
        inp = _col_mask(layout.so3_cols(L, N_in), 2 * N_in - 1)
        mask = np.broadcast_to(out[:, :, None] & inp[:, None, :], (C_in, C, L, 2 * N - 1, 2 * N_in - 1))
        fan_in = C_in * inp.sum(1)[:, None, None]
        self.w = PackedWeight(mask, 1 / np.sqrt(np.maximum(fan_in, 1)), real_axes=(3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w().permute(2, 0, 4, 1, 3)  # (l, c, n', k, n)
        return ops.degree_linear(ops.truncate(x, self.L), w, self.key, self.backend)


class ZonalConv(nn.Module):
    """S² → S² with axisymmetric filters: y_lm = Σ_c f_lm w^l_{c,k}, one real weight per degree.

    w^l stands for √(4π/(2l+1)) ψ_l0 of a real zonal filter ψ (Esteves et al., docs/CONVENTIONS.md §7.3).
    """

    def __init__(self, C_in: int, C: int, L_in: int, L: int):
        super().__init__()
        self.L, self.key, self.backend = L, "", "auto"
        self.w = PackedWeight(np.ones((C_in, C, L), dtype=bool), 1 / math.sqrt(C_in), complex_=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w().to(x.dtype).permute(2, 0, 1)[:, :, None, :, None]  # (l, c, 1, k, 1)
        return ops.degree_linear(ops.truncate(x, self.L), w, self.key, self.backend)


def _pad(x: torch.Tensor, L: int) -> torch.Tensor:
    """Zero-extend a ``(..., L_in, 2L_in-1)`` coefficient layout to bandlimit ``L`` (inverse of ops.truncate)."""
    L_in = x.shape[-2]
    if L_in == L:
        return x
    out = x.new_zeros(*x.shape[:-2], L, 2 * L - 1)
    out[..., :L_in, L - L_in : L - 1 + L_in] = x
    return out


class S2Pointwise(nn.Module):
    """An activation on the MW samples of an S² signal: inverse transform → σ → forward transform.

    S² signals reaching this layer are real (real input, real filters), so the samples are real.
    With ``oversample`` = k the coefficients are zero-padded to bandlimit kL before synthesis, σ acts
    on the k²-times denser grid, and the result is bandlimited back to L: less aliasing, hence a
    smaller equivariance error (docs/CONVENTIONS.md §7.7).
    """

    def __init__(self, L: int, act: str, oversample: int = 1):
        super().__init__()
        self.L, self.L_os = L, L * oversample
        self.act = _ACTIVATIONS[act]()
        self.backend = "auto"  # "reference": the transforms below; otherwise runtime.fast_pointwise
        self.tables = S2Tables(self.L_os)  # the (oversampled) grid's tables, non-persistent buffers
        self.fast = fast_pointwise.GridTables(L, 1, self.L_os, 1, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend != "reference":
            return fast_pointwise.pointwise(x, self.act, self.fast)
        f = s2_inverse_2d(_pad(x[..., 0], self.L_os), self.L_os, real=True, tables=self.tables)
        y = s2_forward_2d(self.act(f), self.L_os, tables=self.tables)
        return ops.truncate(y, self.L).unsqueeze(-1)


class SO3Pointwise(nn.Module):
    """An activation on the MW samples of a real SO(3) signal, like ``S2Pointwise``; oversampling
    pads both bandlimits (kL, and kN but at most kL), so σ acts on a k³-times denser grid."""

    def __init__(self, L: int, N: int, act: str, oversample: int = 1):
        super().__init__()
        self.L, self.N = L, N
        self.L_os = L * oversample
        self.N_os = min(N * oversample, self.L_os)
        self.act = _ACTIVATIONS[act]()
        self.backend = "auto"  # "reference": the transforms below; otherwise runtime.fast_pointwise
        self.tables = SO3Tables(self.L_os, self.N_os)
        self.fast = fast_pointwise.GridTables(L, N, self.L_os, self.N_os, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend != "reference":
            return fast_pointwise.pointwise(x, self.act, self.fast)
        flmn = x.permute(0, 1, 4, 2, 3)  # runtime (l, m, n) → the transforms' (n, l, m) layout
        T = 2 * self.N - 1
        flmn = _pad(flmn, self.L_os)
        flmn = F.pad(flmn.movedim(2, -1), (self.N_os - self.N, self.N_os - self.N)).movedim(-1, 2)
        f = so3_inverse(flmn, self.L_os, self.N_os, real=True, tables=self.tables)
        y = so3_forward(self.act(f), self.L_os, self.N_os, tables=self.tables)
        y = y[:, :, self.N_os - self.N : self.N_os - self.N + T]
        return ops.truncate(y.permute(0, 1, 3, 4, 2), self.L)


class TensorProduct(nn.Module):
    """Channel-wise Clebsch–Gordan tensor product over the layer's paths (docs/CONVENTIONS.md §7.4).

    For every path (l1, l2, l), column pair (i, j) and CG entry with m = m1 + m2:
    ``out[l, m, col(path, i, j)] += C^{lm}_{l1 m1, l2 m2} x[l1, m1, i] x[l2, m2, j]``.
    ``forward`` returns that expanded tensor (reference op ``sphc::tensor_product``). When the plan
    fuses this layer with the GenConv after it (``project=(L, tau_u)``), ``project`` instead returns
    the product already contracted with GenConv's uniform matrix (op ``sphc::tp_project``, with a
    Triton kernel), and the expanded tensor is never formed. Index tables are built once here.
    With ``cross`` the channels are merged first, so fragments of different channels multiply.
    """

    def __init__(
        self,
        C: int,
        cols_in: layout.Cols,
        L: int,
        paths: tuple[tuple[int, int, int], ...],
        cg_sha256: str,
        cross: bool = False,
        project: tuple[int, int] | None = None,
    ):
        super().__init__()
        L_in, width_in = len(cols_in), layout.width(cols_in)
        cols = layout.merged_cols(cols_in, C) if cross else cols_in
        T_in = layout.width(cols)
        paths = layout.tp_paths(cols, paths)  # (l1, l2, l, column pairs): enumerated here, not embedded
        cg = cg_table(tuple(p[:3] for p in paths), cg_sha256)
        self.L, self.width, self.cross, self.backend = L, layout.output_width(paths), cross, "auto"
        self.key = ""  # the kernel-registry key; set_backend names it after the layer's attribute
        self.in_shape = (C, L_in, width_in)
        self.io = ""  # "bfloat16" / "float16": the fused kernel reads x in that dtype (set_backend)
        self._paths, self._cg, self._T_in = paths, cg, T_in
        fast = fast_tp.build_tables(paths, cg)
        self._fast = self._buffers_from("fast_", {k: fast[k] for k in fast_tp.TABLE_NAMES})
        self._ref: tuple[str, ...] = ()  # the reference's per-term tables: built on its first call
        self._tab: tuple[str, ...] = ()
        if project is not None:
            tables = tp_kernels.build_tables(project[0], self.width, paths, cg)
            self._tab = self._buffers_from("tab_", {k: tables[k].numpy() for k in tp_kernels.TABLE_NAMES})

    def reference_tables(self) -> list[torch.Tensor]:
        """The reference backend's tables (one entry per product term), built on first use: they are
        the one table set that grows with CG entries × column pairs, so they are only built when the
        reference runs, after checking their size against the model-size limit."""
        if not self._ref:
            L_in = self.in_shape[1]
            terms = sum(layout.cg_pattern_size(*p[:3]) * len(p[3]) for p in self._paths)
            need, limit = TP_TERM_BYTES * terms, size_limits().table_bytes
            if need > limit:
                raise SphcError(
                    f"this tensor product's reference tables need {need / 2**30:.1f} GiB "
                    f"({terms:,} product terms); the limit is {limit / 2**30:.1f} GiB",
                    hint="run it with backend='torch' or 'triton' (per-path tables), or raise the limit "
                    "with SPHC_LIMIT_SCALE=K",
                )
            src1, src2, dst, coef = self._terms(L_in, self._T_in, self.L, self.width, self._paths, self._cg)
            # distinct products (src1, src2), as one int64 key each; term k reads product inv[k]
            n_in = L_in * (2 * L_in - 1) * self._T_in
            keys, inv = np.unique(src1 * n_in + src2, return_inverse=True)
            inv = inv.reshape(-1)
            # coalesced COO: rows ascending, then columns ((dst, inv) pairs are unique)
            order = np.argsort(dst * max(len(keys), 1) + inv, kind="stable")
            ref = {
                "src1": keys // n_in,
                "src2": keys % n_in,
                "cg_index": np.stack([dst[order], inv[order]]).astype(np.int64),
                "coef": coef[order],
            }
            device = getattr(self, self._fast[0]).device  # where the layer lives now
            self._ref = self._buffers_from("ref_", ref)
            for name in self._ref:
                setattr(self, name, getattr(self, name).to(device))
        return self._list(self._ref)

    def _buffers_from(self, prefix: str, arrays: dict[str, np.ndarray]) -> tuple[str, ...]:
        """Register index tables as non-persistent buffers (they move with .to(); float ones follow .double())."""
        for name, value in arrays.items():
            self.register_buffer(
                prefix + name, torch.from_numpy(np.ascontiguousarray(value)), persistent=False
            )
        return tuple(prefix + name for name in arrays)

    @staticmethod
    def _terms(L_in, T_in, L, T, paths, cg):
        """Every (input entry, input entry, output entry, CG value) product term, zeros dropped."""
        M_in, M = 2 * L_in - 1, 2 * L - 1
        offsets = layout.cg_offsets(paths)
        parts = []
        for (l1, l2, l, pairs), first in zip(paths, layout.output_columns(paths)):
            m, m1 = layout.cg_pattern(l1, l2, l)
            values = cg[offsets[(l1, l2, l)] : offsets[(l1, l2, l)] + len(m)]
            keep = values != 0
            m, m1, values = m[keep], m1[keep], values[keep]
            i, j = np.asarray(pairs, dtype=np.int64).reshape(-1, 2).T
            cols = first + np.arange(len(pairs))
            r1 = (l1 * M_in + L_in - 1 + m1)[:, None] * T_in + i[None, :]
            r2 = (l2 * M_in + L_in - 1 + (m - m1))[:, None] * T_in + j[None, :]
            ro = (l * M + L - 1 + m)[:, None] * T + cols[None, :]
            parts.append((r1.ravel(), r2.ravel(), ro.ravel(), np.repeat(values, len(pairs))))
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty, np.zeros(0)
        return tuple(np.concatenate(p) for p in zip(*parts))

    def _merged(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cross:
            return x
        B, C, L_in, M_in, T = x.shape  # column c*T + t of one merged channel
        return x.permute(0, 2, 3, 1, 4).reshape(B, 1, L_in, M_in, C * T)

    def _list(self, names: tuple[str, ...]) -> list[torch.Tensor]:
        return [getattr(self, n) for n in names]

    def _tables(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(reference tables — only for the reference backend —, fast-path tables)."""
        ref = self.reference_tables() if self.backend == "reference" else []
        return ref, self._list(self._fast)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ref, fast = self._tables()
        return ops.tensor_product(self._merged(x), ref, fast, self.L, self.width, self.key, self.backend)

    def project(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The tensor product contracted with ``u`` (L', width, tau_u), degrees l < L' only."""
        if not self._tab:
            raise SphcInternalError("TensorProduct.project needs a layer built with project=(L, tau_u)")
        (ref, fast), tab = self._tables(), self._list(self._tab)
        return ops.tp_project(self._merged(x), u, ref, fast, tab, self.L, self.key, self.backend, self.io)


def _fan_std(fan: np.ndarray) -> np.ndarray:
    return 1 / np.sqrt(np.maximum(fan, 1))


class GenConv(nn.Module):
    """Constrained generalized convolution (docs/CONVENTIONS.md §7.5), three linear maps per degree l:

    uniform ``A = X U^l`` (one matrix shared by all channels, shrinks the many TP fragments to
    ``tau_u``), channel-wise ``B_c = A_c V^l_c`` (tau_u → tau), cross-channel
    ``y_k = Σ_c X^l_{c,k} B_c``; plus a bias on the invariant degree-0 fragments. The last two
    run as one per-degree linear op with ``w[l,c,u,k,v] = V[c,l,u,v] X[c,k,l]``; after a
    TensorProduct the uniform step is fused into the product (``after``).
    """

    def __init__(self, C: int, K: int, cols_in: layout.Cols, L: int, tau: int, tau_u: int):
        super().__init__()
        self.L, self.tau, self.backend = L, tau, "auto"
        self.key = self.key_uniform = ""  # kernel-registry keys, set by set_backend
        live = np.array([bool(cols_in[l]) for l in range(L)])
        cm = _col_mask(cols_in[:L], layout.width(cols_in))
        self.u = PackedWeight(np.repeat(cm[:, :, None], tau_u, 2), _fan_std(cm.sum(1))[:, None, None])
        self.v = PackedWeight(
            np.broadcast_to(live[None, :, None, None], (C, L, tau_u, tau)), 1 / math.sqrt(tau_u)
        )
        self.x = PackedWeight(np.broadcast_to(live[None, None, :], (C, K, L)), 1 / math.sqrt(C))
        self.bias = nn.Parameter(torch.zeros(K, tau, 2)) if live[0] else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ops.truncate(x, self.L)
        B, C = x.shape[:2]
        # uniform: the same (width, tau_u) matrix for every channel, so channels join the batch
        u = self.u().unsqueeze(1).unsqueeze(3)  # (l, 1, t, 1, u)
        a = ops.degree_linear(x.reshape(B * C, 1, *x.shape[2:]), u, self.key_uniform, self.backend)
        return self._mix(a.reshape(B, C, *a.shape[2:]))

    def after(self, tp: TensorProduct, x: torch.Tensor) -> torch.Tensor:
        """This layer applied to ``tp(x)``, with the uniform step fused into the tensor product."""
        return self._mix(tp.project(x, self.u()))

    def _mix(self, a: torch.Tensor) -> torch.Tensor:
        w = torch.einsum("cluv,ckl->lcukv", self.v(), self.x())
        return _add_bias(ops.degree_linear(a, w, self.key, self.backend), self.bias)


def _add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Add a bias to the (l=0, m=0) row only: a constant is invariant there and nowhere else."""
    if bias is None:
        return y
    pad = torch.zeros_like(y[0])
    pad[:, 0, y.shape[3] // 2] = torch.view_as_complex(bias)
    return y + pad


class FullGenConv(nn.Module):
    """Unconstrained generalized convolution: y^l = x^l W^l over all (channel, column) pairs."""

    def __init__(self, C: int, K: int, cols_in: layout.Cols, L: int, tau: int):
        super().__init__()
        self.L, self.key, self.backend = L, "", "auto"
        width_in = layout.width(cols_in)
        cm = _col_mask(cols_in[:L], width_in)
        mask = np.broadcast_to(cm[:, None, :, None, None], (L, C, width_in, K, tau))
        self.w = PackedWeight(mask, _fan_std(C * cm.sum(1))[:, None, None, None, None])
        self.bias = nn.Parameter(torch.zeros(K, tau, 2)) if cols_in[0] else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ops.degree_linear(ops.truncate(x, self.L), self.w(), self.key, self.backend)
        return _add_bias(y, self.bias)


def set_backend(
    model: nn.Module, backend: str | None, io_dtype: str | None = None, kernels: str | None = None
) -> str:
    """Point every op-backed layer of ``model`` at ``backend`` (None: ``SPHC_BACKEND`` or "auto").

    ``io_dtype`` "bfloat16" / "float16" makes the fused tensor products read their input in that
    dtype (half the bytes) while accumulating in fp32; None keeps the model's dtype. ``kernels``
    (a generated module's ``__name__``) names each layer's kernel-registry key after its attribute,
    the name under which that module registered the layer's kernels.
    """
    chosen = ops.check_backend(backend)
    io = io_dtype or ""
    if io not in ops.IO_DTYPES:
        raise SphcError(f"unknown io_dtype {io_dtype!r}: expected None, 'bfloat16' or 'float16'")
    for module in model.modules():
        if hasattr(module, "backend") and module is not model:
            module.backend = chosen
        if isinstance(module, TensorProduct):
            module.io = io
    if kernels is not None:
        for attr, layer in model.named_children():
            if hasattr(layer, "key"):
                layer.key = ops.kernel_key(kernels, layout.kernel_name(attr))
            if hasattr(layer, "key_uniform"):
                layer.key_uniform = ops.kernel_key(kernels, layout.kernel_name(attr, "u"))
    # constant tables (every non-persistent buffer) need no per-step DDP broadcast; running stats do
    tables = [
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        for name in module._non_persistent_buffers_set
    ]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, tables)
    return chosen


class Norm(nn.Module):
    """Equivariant fragment normalisation: f^l_{c,t} · γ_{c,l,t} / √(E‖f^l_{c,t}‖² + eps).

    ‖f‖² sums |f_lm|² over m, which rotations leave unchanged, so scaling by any function of it
    is equivariant. E is the batch mean in training and a running mean in evaluation (the
    CGNet normalisation of docs/CONVENTIONS.md §7.8, with a learned scale).
    """

    def __init__(self, C: int, cols: layout.Cols, eps: float, momentum: float, mirror: bool = False):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        width = layout.width(cols)
        # mirror (SO(3) signals): column t and width-1-t (n and -n) share γ, so a real signal stays
        # real (its |f_n|² and |f_-n|² are equal, so the normalisers already agree)
        owner = np.minimum(np.arange(width), width - 1 - np.arange(width)) if mirror else np.arange(width)
        own = np.arange(width) == owner
        mask = np.broadcast_to(_col_mask(cols, width) & own, (C, len(cols), width))
        self.gamma = PackedWeight(mask, 0.0, complex_=False)
        with torch.no_grad():
            self.gamma.weight.fill_(1.0)
        self.register_buffer("gamma_from", torch.from_numpy(owner), persistent=False)
        self.register_buffer("running_sq", torch.ones(C, len(cols), width))

    def forward(self, x: torch.Tensor, members: Members | None = None) -> torch.Tensor:
        """``members``: inside a set, only real elements enter the batch statistics."""
        if self.training:
            sq = (x.real**2 + x.imag**2).sum(3)
            if members is None:
                ms = sq.mean(0)
            else:
                real = members.mask[:, None, None, None]
                ms = torch.where(real, sq, 0.0).sum(0) / members.mask.sum().clamp_min(1).to(sq.dtype)
            with torch.no_grad():
                self.running_sq.lerp_(ms.detach().to(self.running_sq.dtype), self.momentum)
        else:
            ms = self.running_sq.to(x.real.dtype)
        gamma = self.gamma()[..., self.gamma_from]
        scale = gamma.to(x.real.dtype) * torch.rsqrt(ms + self.eps)
        return x * scale[None, :, :, None, :]


class Invariant(nn.Module):
    """Readout: the degree-0 fragments (D^0 = 1, so invariant) as real features (re, im)."""

    def __init__(self, cols: layout.Cols):
        super().__init__()
        self.register_buffer("cols", torch.tensor(list(cols[0]), dtype=torch.int64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x[:, :, 0, x.shape[3] // 2][..., self.cols]
        return torch.view_as_real(z).flatten(1)


class Dense(nn.Sequential):
    """Linear → activation → dropout on invariant real features."""

    def __init__(self, n_in: int, n: int, act: str = "none", dropout: float = 0.0):
        layers = [nn.Linear(n_in, n), _ACTIVATIONS[act]()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)
