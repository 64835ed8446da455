"""Launcher for the generated per-degree complex linear kernels (``templates/kernels/linear.py.j2``).

One op serves S2Conv (T = 1), SO3Conv, ZonalConv, FullGenConv and GenConv's mixing step:

    y[b,k,l,m,v] = Σ_{c,t} x[b,c,l,m,t] w[l,c,t,k,v]      for l < L, |m| <= l (0 elsewhere)

with x (B, C, L, 2L−1, T) complex (any strides: it may be a view of a larger signal), w
(L, C, T, K, V) and y (B, K, L, 2L−1, V). Backward follows PyTorch's complex convention,
grad_x = g w^H and grad_w = x^H g. Each direction is one launch for all degrees; the kernels work on
``torch.view_as_real`` planes with fp32/fp64 accumulation and IEEE products (no TF32), and the
weight gradient sums fixed split partials instead of using atomics, so it is deterministic.
:func:`sphc.runtime.ops.degree_linear_reference` is the plain torch version, used on CPU and as the tests' oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sphc.errors import SphcError
from sphc.kernel_spaces import Config
from sphc.layout import cdiv, next_pow2
from sphc.runtime import launch

_DTYPES = (torch.complex64, torch.complex128)


def _planes(t: torch.Tensor) -> torch.Tensor:
    """The (..., 2) real view of a complex tensor, without copying unless a conj/neg bit is pending."""
    return torch.view_as_real(t.resolve_conj().resolve_neg())


@dataclass
class LinearKernels:
    """The three kernels of one layer's linear map; every size comes from the tensors of a call.

    ``fwd`` and ``dgrad`` launch the module's ``degree_gemm``, ``wgrad`` its ``degree_wgrad``
    (``templates/kernels/linear.py.j2``); their shapes are ``tl.constexpr`` arguments, so Triton
    compiles one specialisation per layer shape from one emitted source.
    """

    fwd: launch.Tunable
    dgrad: launch.Tunable
    wgrad: launch.Tunable
    #: signal rows (b, m) per split of the weight-gradient reduction: more rows, more parallel partials
    rows_per_split: int = 512
    max_split: int = 32
    #: complex elements all partials may hold together (large weights have enough tiles anyway)
    split_budget: int = 1 << 22

    @property
    def name(self) -> str:
        return self.fwd.name.removesuffix("_fwd")

    # ---- checks -------------------------------------------------------------------------------

    def _fail(self, what: str, hint: str | None = None) -> SphcError:
        return SphcError(f"linear kernels {self.name}: {what}", hint=hint)

    def _check_signal(
        self, t: torch.Tensor, arg: str, ch: int, L: int, cols: int, B: int | None = None
    ) -> int:
        M = 2 * L - 1
        want = ("B" if B is None else B, ch, L, M, cols)
        if t.dim() != 5 or tuple(t.shape[1:]) != want[1:] or (B is not None and t.shape[0] != B):
            raise self._fail(
                f"{arg} has shape {tuple(t.shape)}, expected (B, {ch}, {L}, {M}, {cols}) = {want}",
                hint="harmonic signals are (batch, channels, L, 2L-1, columns)",
            )
        return t.shape[0]

    def _check_common(self, named: dict[str, torch.Tensor]) -> None:
        first_name, first = next(iter(named.items()))
        for arg, t in named.items():
            if not isinstance(t, torch.Tensor):
                raise self._fail(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype not in _DTYPES:
                raise self._fail(f"{arg} has dtype {t.dtype}, expected complex64 or complex128")
            if t.dtype != first.dtype:
                raise self._fail(f"{arg} has dtype {t.dtype} but {first_name} has {first.dtype}")
            if t.device != first.device:
                raise self._fail(f"{arg} is on {t.device} but {first_name} is on {first.device}")
        if first.device.type != "cuda" and not launch.interpreting():
            raise self._fail(
                f"tensors are on {first.device}; the Triton kernels need a CUDA device",
                hint="use backend='torch' on CPU, or set TRITON_INTERPRET=1 before the model is loaded",
            )

    def _weight(self, w: torch.Tensor) -> tuple[int, int, int, int, int]:
        if not isinstance(w, torch.Tensor) or w.dim() != 5:
            raise self._fail(f"w must be a 5-d tensor (L, C, T, K, V), got {getattr(w, 'shape', type(w))}")
        return tuple(w.shape)

    # ---- launches -----------------------------------------------------------------------------

    def _rowgemm(self, kernel: launch.Tunable, a: torch.Tensor, w: torch.Tensor, dims, conj: bool, config):
        """Launch ``degree_gemm``: out (B, N1, L, 2L−1, N2) = a (B, J1, L, 2L−1, J2) op(w).

        ``dims`` = (J1, J2, N1, N2) and which weight axes are reduced: forward reduces (c, t) of
        w (L, C, T, K, V), the input gradient reduces (k, v) and reads w conjugated.
        """
        J1, J2, N1, N2 = dims
        B, L = a.shape[0], w.shape[0]
        y = launch.empty((B, N1, L, 2 * L - 1, N2), like=a)
        if B == 0:
            return y
        ar, wr, yr = _planes(a), _planes(w.contiguous()), torch.view_as_real(y)
        sw_l, sw_c, sw_t, sw_k, sw_v = wr.stride()[:5]
        sw_j, sw_n = (sw_v, sw_t) if conj else (sw_t, sw_v)  # (k, v) flattened reads w transposed
        J, N, rows = J1 * J2, N1 * N2, B * (2 * L - 1)

        def grid(meta: dict) -> tuple[int, int, int]:
            return (cdiv(rows, meta["BLOCK_M"]), cdiv(N, meta["BLOCK_N"]), L)

        kernel.run(
            grid, ar, wr, yr, B, *ar.stride()[:5], sw_l, sw_j, sw_n, *yr.stride()[:5], next_pow2(rows),
            L=L, J=J, J2=J2, N=N, N2=N2, CONJ=conj, extents={"BLOCK_N": N, "BLOCK_K": J}, config=config,
        )  # fmt: skip
        return y

    def forward(self, x: torch.Tensor, w: torch.Tensor, *, config: Config | None = None) -> torch.Tensor:
        """``y`` (B, K, L, 2L−1, V), contiguous, zero where |m| > l; ``x`` may be any strided view."""
        self._check_common({"x": x, "w": w})
        L, C, T, K, V = self._weight(w)
        self._check_signal(x, "x", C, L, T)
        return self._rowgemm(self.fwd, x, w, (C, T, K, V), False, config)

    def split_for(self, B: int, L: int, J: int, N: int) -> int:
        """Number of weight-gradient partials for batch ``B`` (fixed per B, so results are reproducible)."""
        by_budget = self.split_budget // (L * J * N)
        return max(1, min(self.max_split, by_budget, B * (2 * L - 1) // self.rows_per_split))

    def backward(
        self,
        g: torch.Tensor,
        x: torch.Tensor,
        w: torch.Tensor,
        *,
        dgrad_config: Config | None = None,
        wgrad_config: Config | None = None,
        split: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(grad_x, grad_w)`` for upstream gradient ``g`` of ``y = forward(x, w)``.

        grad_x is contiguous (B, C, L, 2L−1, T), zero where |m| > l; grad_w is (L, C, T, K, V).
        """
        self._check_common({"g": g, "x": x, "w": w})
        L, C, T, K, V = self._weight(w)
        B = self._check_signal(x, "x", C, L, T)
        self._check_signal(g, "g", K, L, V, B)
        grad_x = self._rowgemm(self.dgrad, g, w, (K, V, C, T), True, dgrad_config)
        J, N = C * T, K * V
        S = self.split_for(B, L, J, N) if split is None else split
        if S < 1:
            raise self._fail(f"split must be >= 1, got {S}")
        part = launch.empty((S, L, C, T, K, V), like=w)
        if B == 0:
            return grad_x, part[0].zero_()
        xr, gr, pr = _planes(x), _planes(g), torch.view_as_real(part)

        def grid(meta: dict) -> tuple[int, int, int]:
            return (cdiv(J, meta["BLOCK_J"]), cdiv(N, meta["BLOCK_N"]), S * L)

        self.wgrad.run(
            grid, xr, gr, pr, B, *xr.stride()[:5], *gr.stride()[:5], pr.stride(1), pr.stride(3), S,
            next_pow2(B * (2 * L - 1)), L=L, J=J, T=T, N=N, V=V, extents={"BLOCK_J": J, "BLOCK_N": N},
            config=wgrad_config,
        )  # fmt: skip
        return grad_x, part[0] if S == 1 else part.sum(0)
