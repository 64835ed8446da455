"""Launcher for the generated per-degree complex linear kernels (``templates/triton_linear.py.j2``).

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
from sphc.runtime import launch

_DTYPES = (torch.complex64, torch.complex128)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _bucket(n: int) -> int:
    """Power-of-two bucket of the row count: the tuning key, so ragged last batches reuse a config."""
    return 1 << max(0, n - 1).bit_length()


def _planes(t: torch.Tensor) -> torch.Tensor:
    """The (..., 2) real view of a complex tensor, without copying unless a conj/neg bit is pending."""
    return torch.view_as_real(t.resolve_conj().resolve_neg())


@dataclass
class LinearKernels:
    """The three kernels of one layer's linear map, with the sizes they were specialised to."""

    name: str
    L: int
    C: int
    T: int
    K: int
    V: int
    fwd: launch.Tunable
    dgrad: launch.Tunable
    wgrad: launch.Tunable
    #: signal rows (b, m) per split of the weight-gradient reduction: more rows, more parallel partials
    rows_per_split: int = 512
    max_split: int = 32
    #: complex elements all partials may hold together (large weights have enough tiles anyway)
    split_budget: int = 1 << 22

    # ---- checks -------------------------------------------------------------------------------

    def _fail(self, what: str, hint: str | None = None) -> SphcError:
        return SphcError(f"linear kernels {self.name}: {what}", hint=hint)

    def _check_signal(self, t: torch.Tensor, arg: str, ch: int, cols: int, B: int | None = None) -> int:
        M = 2 * self.L - 1
        want = ("B" if B is None else B, ch, self.L, M, cols)
        if t.dim() != 5 or tuple(t.shape[1:]) != want[1:] or (B is not None and t.shape[0] != B):
            raise self._fail(
                f"{arg} has shape {tuple(t.shape)}, expected (B, {ch}, {self.L}, {M}, {cols}) = {want}",
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

    def _check_weight(self, w: torch.Tensor) -> None:
        want = (self.L, self.C, self.T, self.K, self.V)
        if tuple(w.shape) != want:
            raise self._fail(f"w has shape {tuple(w.shape)}, expected (L, C, T, K, V) = {want}")

    # ---- launches -----------------------------------------------------------------------------

    def _rowgemm(self, kernel: launch.Tunable, a: torch.Tensor, w: torch.Tensor, out_shape, config):
        """Launch the fwd / dgrad kernel: out (B, N1, L, 2L−1, N2) from a (B, J1, L, 2L−1, J2)."""
        B = a.shape[0]
        y = launch.empty(out_shape, like=a)
        if B == 0:
            return y
        ar, wr, yr = _planes(a), _planes(w.contiguous()), torch.view_as_real(y)
        N = out_shape[1] * out_shape[4]
        rows = B * (2 * self.L - 1)

        def grid(meta: dict) -> tuple[int, int, int]:
            return (_cdiv(rows, meta["BLOCK_M"]), _cdiv(N, meta["BLOCK_N"]), self.L)

        kernel.run(grid, ar, wr, yr, B, *ar.stride()[:5], _bucket(rows), config=config)
        return y

    def forward(self, x: torch.Tensor, w: torch.Tensor, *, config: Config | None = None) -> torch.Tensor:
        """``y`` (B, K, L, 2L−1, V), contiguous, zero where |m| > l; ``x`` may be any strided view."""
        self._check_common({"x": x, "w": w})
        B = self._check_signal(x, "x", self.C, self.T)
        self._check_weight(w)
        return self._rowgemm(self.fwd, x, w, (B, self.K, self.L, 2 * self.L - 1, self.V), config)

    def split_for(self, B: int) -> int:
        """Number of weight-gradient partials for batch ``B`` (fixed per B, so results are reproducible)."""
        by_budget = self.split_budget // (self.L * self.C * self.T * self.K * self.V)
        return max(1, min(self.max_split, by_budget, B * (2 * self.L - 1) // self.rows_per_split))

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
        B = self._check_signal(x, "x", self.C, self.T)
        self._check_signal(g, "g", self.K, self.V, B)
        self._check_weight(w)
        M = 2 * self.L - 1
        grad_x = self._rowgemm(self.dgrad, g, w, (B, self.C, self.L, M, self.T), dgrad_config)
        S = self.split_for(B) if split is None else split
        if S < 1:
            raise self._fail(f"split must be >= 1, got {S}")
        part = launch.empty((S, self.L, self.C, self.T, self.K, self.V), like=w)
        if B == 0:
            return grad_x, part[0].zero_()
        xr, gr, pr = _planes(x), _planes(g), torch.view_as_real(part)
        J, N = self.C * self.T, self.K * self.V

        def grid(meta: dict) -> tuple[int, int, int]:
            return (_cdiv(J, meta["BLOCK_J"]), _cdiv(N, meta["BLOCK_N"]), S * self.L)

        self.wgrad.run(
            grid, xr, gr, pr, B, *xr.stride()[:5], *gr.stride()[:5], S, _bucket(B * M), config=wgrad_config
        )
        return grad_x, part[0] if S == 1 else part.sum(0)
