"""Launcher and index tables for the fused tensor-product kernels of ``templates/triton_tp.py.j2``.

The efficient generalized layer is a channel-wise CG tensor product followed by GenConv, whose
first step contracts the many product columns with one matrix U per degree (PAPER.md §4.2). The
fused kernel forms, per output row (l, m) and path, the τ1×τ2 block of products
``Σ_{m1} C^{lm}_{l1 m1, l2 m-m1} f^{l1}_{m1,i} f^{l2}_{m-m1,j}`` in registers and immediately
contracts it with ``W[p, i, j, :] = U[l, col(p, i, j), :]``, so the expanded fragment tensor
(τ²·|P^l| columns per degree) is never written (ANCHORS.md, "Design takeaways": FlashTP and
OpenEquivariance fuse the same way). Backward recomputes the block instead of storing it.

Kernels work on a batch-last layout ``(L, 2L-1, T, re/im, B*C)``: a tile of one fragment across
BLOCK examples is then one contiguous load.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sphc import layout
from sphc.errors import SphcError
from sphc.kernel_spaces import Config
from sphc.runtime import launch


def build_tables(shape: layout.TPShape, width: int, paths, cg: np.ndarray) -> dict[str, torch.Tensor]:
    """Index tables of the kernels, from the layer's paths and its CG values (``cg_pattern`` order).

    ``path_start[l] : path_start[l+1]`` are the paths of output degree l; per path its input
    degrees, the input columns its pairs read (``col1``/``col2``, -1 = padding), and per output row
    mm the range of its CG entries (``row_off``); ``colmap`` sends (path, i, j) to the row of U
    (flattened (l, column)) that projects it, or to the appended zero row when (i, j) is no pair.
    """
    L_out, M_out = shape.L_out, 2 * shape.L_out - 1
    offsets = layout.cg_offsets(paths)  # cg holds every path of the layer, in analysis order
    kept = layout.kernel_paths(paths, L_out)
    P = len(kept)
    path_start = np.zeros(L_out + 1, dtype=np.int32)
    l12 = np.zeros((max(P, 1), 2), dtype=np.int32)
    col1 = np.full((max(P, 1), shape.T1P), -1, dtype=np.int32)
    col2 = np.full((max(P, 1), shape.T2P), -1, dtype=np.int32)
    row_off = np.zeros((max(P, 1), M_out + 1), dtype=np.int32)
    zero_row = L_out * width
    colmap = np.full((max(P, 1), shape.T1P, shape.T2P), zero_row, dtype=np.int64)
    next_col = [0] * (max(p[2] for p in paths) + 1 if paths else 1)
    # TP output columns are numbered in the analysis order of paths, per output degree
    col_of = {}
    for l1, l2, l, pairs in paths:
        col_of[(l1, l2, l)] = next_col[l]
        next_col[l] += len(pairs)
    for p, (l1, l2, l, pairs) in enumerate(kept):
        path_start[l + 1 :] += 1
        l12[p] = (l1, l2)
        firsts = sorted({i for i, _ in pairs})
        seconds = sorted({j for _, j in pairs})
        col1[p, : len(firsts)] = firsts
        col2[p, : len(seconds)] = seconds
        for n, (i, j) in enumerate(pairs):
            colmap[p, firsts.index(i), seconds.index(j)] = l * width + col_of[(l1, l2, l)] + n
        m, _ = layout.cg_pattern(l1, l2, l)
        counts = np.bincount(m + l, minlength=2 * l + 1)
        start = offsets[(l1, l2, l)]
        # rows of |m| > l stay empty: their entry range is [start, start)
        row_off[p, L_out - 1 - l : L_out + l + 1] = start + np.concatenate([[0], np.cumsum(counts)])
        row_off[p, : L_out - 1 - l] = start
        row_off[p, L_out + l + 1 :] = start + len(m)
    return {
        "path_start": torch.from_numpy(path_start),
        "path_l12": torch.from_numpy(l12.reshape(-1)),
        "col1": torch.from_numpy(col1.reshape(-1)),
        "col2": torch.from_numpy(col2.reshape(-1)),
        "row_off": torch.from_numpy(row_off.reshape(-1)),
        "cg": torch.from_numpy(np.asarray(cg, dtype=np.float64)),
        "colmap": torch.from_numpy(colmap),
    }


TABLE_NAMES = ("path_start", "path_l12", "col1", "col2", "row_off", "cg", "colmap")


def _to_batch_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, L, M, T) complex → (L, M, T, 2, B*C) real, contiguous."""
    B, C = x.shape[:2]
    return torch.view_as_real(x).permute(2, 3, 4, 5, 0, 1).reshape(*x.shape[2:], 2, B * C).contiguous()


def _from_batch_last(y: torch.Tensor, B: int, C: int) -> torch.Tensor:
    """(L, M, T, 2, B*C) real → (B, C, L, M, T) complex, contiguous."""
    y = y.reshape(*y.shape[:4], B, C).permute(4, 5, 0, 1, 2, 3).contiguous()
    return torch.view_as_complex(y)


@dataclass
class TPKernels:
    """One layer's generated fused TP kernels (``fwd``, ``bwd``) and the sizes they were built for."""

    fwd: launch.Tunable
    bwd: launch.Tunable
    L_in: int
    T_in: int
    L_out: int
    U: int
    UP: int
    T1P: int
    T2P: int
    n_paths: int

    def _weights(self, u: torch.Tensor, colmap: torch.Tensor) -> torch.Tensor:
        """W[p, i, j, :] = U[l, col(p, i, j), :] padded to UP columns, as a real (…, 2) tensor."""
        flat = torch.cat([u.reshape(-1, self.U), u.new_zeros(1, self.U)])
        w = flat[colmap]
        if self.UP != self.U:
            w = torch.cat([w, w.new_zeros(*w.shape[:-1], self.UP - self.U)], -1)
        return torch.view_as_real(w.contiguous()).contiguous()

    def _check(self, x: torch.Tensor, u: torch.Tensor) -> None:
        if x.shape[2:] != (self.L_in, 2 * self.L_in - 1, self.T_in) or u.shape[0] != self.L_out:
            raise SphcError(
                f"fused TP kernel built for x (B, C, {self.L_in}, {2 * self.L_in - 1}, {self.T_in}) and "
                f"U ({self.L_out}, …), got x {tuple(x.shape)}, U {tuple(u.shape)}"
            )
        out = self.L_out * (2 * self.L_out - 1) * self.UP
        if 2 * x[0].numel() * x.shape[0] >= 2**31 or 2 * out * x.shape[0] * x.shape[1] >= 2**31:
            raise SphcError(
                f"batch {x.shape[0]} is too large for the fused TP kernel's 32-bit offsets "
                f"(input {tuple(x.shape)}): split the batch"
            )

    def _operands(self, x: torch.Tensor, u: torch.Tensor, tables: dict[str, torch.Tensor], io):
        """x batch-last in the accumulation dtype and as the kernel reads it (``io``), W, CG, ACC."""
        self._check(x, u)
        xt = _to_batch_last(x)
        x_in = xt.to(io) if io is not None else xt
        cg = tables["cg"].to(xt.dtype)
        index = tuple(tables[n] for n in ("path_start", "path_l12", "col1", "col2", "row_off"))
        return xt, x_in, self._weights(u, tables["colmap"]), index, cg, _acc(xt.dtype)

    def forward(
        self,
        x: torch.Tensor,
        u: torch.Tensor,
        tables: dict[str, torch.Tensor],
        config: Config | None = None,
        io: torch.dtype | None = None,
    ) -> torch.Tensor:
        """``io`` (bf16 / fp16): x is stored and read in that dtype, products accumulate in fp32."""
        B, C = x.shape[:2]
        BC = B * C
        xt, x_in, w, index, cg, acc = self._operands(x, u, tables, io)
        out = launch.empty((self.L_out, 2 * self.L_out - 1, self.U, 2, BC), xt)
        self.fwd.run(
            lambda meta: (self.L_out, triton_cdiv(BC, meta["BLOCK"])),
            x_in, w, out, *index, cg, BC, ACC=acc, config=config,
        )  # fmt: skip
        return _from_batch_last(out, B, C)

    def backward(
        self,
        g: torch.Tensor,
        x: torch.Tensor,
        u: torch.Tensor,
        tables: dict[str, torch.Tensor],
        config: Config | None = None,
        io: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, C = x.shape[:2]
        BC = B * C
        xt, x_in, w, index, cg, acc = self._operands(x, u, tables, io)
        gt = _to_batch_last(g.contiguous())
        gx = torch.zeros_like(xt)  # accumulated with atomics, in the accumulation dtype
        min_block = min(c.kwargs["BLOCK"] for c in self.bwd.space)
        Q = self.T1P * self.T2P
        gw = xt.new_zeros(
            (triton_cdiv(BC, min_block), max(self.n_paths, 1), Q, self.UP, 2)
        )  # per-(block, path) partial sums; blocks a larger BLOCK does not use stay zero
        self.bwd.run(
            lambda meta: (self.L_out, triton_cdiv(BC, meta["BLOCK"])),
            x_in, w, gt, gx, gw, *index, cg, BC, ACC=acc, config=config,
        )  # fmt: skip
        gw = torch.view_as_complex(gw.sum(0))[..., : self.U].reshape(-1, self.U)
        flat = torch.zeros(self.L_out * u.shape[1] + 1, self.U, dtype=u.dtype, device=u.device)
        flat.index_add_(0, tables["colmap"].reshape(-1), gw)
        return _from_batch_last(gx, B, C), flat[:-1].reshape(u.shape)


def _acc(dtype: torch.dtype):
    """The kernels' accumulation dtype: float64 for float64 models, float32 otherwise."""
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
