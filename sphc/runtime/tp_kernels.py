"""Launcher and index tables for the fused tensor-product kernels of ``templates/kernels/tp.py.j2``.

The efficient generalized layer is a channel-wise CG tensor product followed by GenConv, whose
first step contracts the many product columns with one matrix U per degree (docs/CONVENTIONS.md §7.5). The
fused kernel forms, per output row (l, m) and path, the τ1×τ2 block of products
``Σ_{m1} C^{lm}_{l1 m1, l2 m-m1} f^{l1}_{m1,i} f^{l2}_{m-m1,j}`` in registers and immediately
contracts it with ``W[p, i, j, :] = U[l, col(p, i, j), :]``, so the expanded fragment tensor
(τ²·|P^l| columns per degree) is never written (FlashTP and
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
from sphc.layout import cdiv, next_pow2
from sphc.runtime import launch


def build_tables(L_out: int, width: int, paths, cg: np.ndarray) -> dict[str, torch.Tensor]:
    """Index tables of the kernels, from the layer's paths and its CG values (``cg_pattern`` order).

    ``path_start[l] : path_start[l+1]`` are the paths of output degree l; per path its input
    degrees, the input columns its pairs read (``col1`` / ``col2``, (paths, T1P / T2P), -1 =
    padding), and per output row mm the range of its CG entries (``row_off``); ``colmap`` sends
    (path, i, j) to the row of U (flattened (l, column)) that projects it, or to the appended zero
    row when (i, j) is no pair. Column counts are padded to powers of two (``tl.arange`` sizes).
    """
    M_out = 2 * L_out - 1
    offsets = layout.cg_offsets(paths)  # cg holds every path of the layer, in analysis order
    first_col = dict(zip((p[:3] for p in paths), layout.output_columns(paths)))
    kept = layout.kernel_paths(paths, L_out)
    P = max(len(kept), 1)
    firsts = [sorted({i for i, _ in pairs}) for *_, pairs in kept]
    seconds = [sorted({j for _, j in pairs}) for *_, pairs in kept]
    T1P = next_pow2(max(map(len, firsts), default=1))
    T2P = next_pow2(max(map(len, seconds), default=1))
    path_start = np.zeros(L_out + 1, dtype=np.int32)
    l12 = np.zeros((P, 2), dtype=np.int32)
    col1 = np.full((P, T1P), -1, dtype=np.int32)
    col2 = np.full((P, T2P), -1, dtype=np.int32)
    row_off = np.zeros((P, M_out + 1), dtype=np.int32)
    colmap = np.full((P, T1P, T2P), L_out * width, dtype=np.int64)
    for p, ((l1, l2, l, pairs), fi, se) in enumerate(zip(kept, firsts, seconds)):
        path_start[l + 1 :] += 1
        l12[p] = (l1, l2)
        col1[p, : len(fi)] = fi
        col2[p, : len(se)] = se
        for n, (i, j) in enumerate(pairs):
            colmap[p, fi.index(i), se.index(j)] = l * width + first_col[(l1, l2, l)] + n
        m, _ = layout.cg_pattern(l1, l2, l)
        counts = np.bincount(m + l, minlength=2 * l + 1)
        start = offsets[(l1, l2, l)]
        # rows of |m| > l stay empty: their entry range is [start, start)
        row_off[p, L_out - 1 - l : L_out + l + 1] = start + np.concatenate([[0], np.cumsum(counts)])
        row_off[p, : L_out - 1 - l] = start
        row_off[p, L_out + l + 1 :] = start + len(m)
    arrays = {"path_start": path_start, "path_l12": l12, "col1": col1, "col2": col2, "row_off": row_off}
    tables = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return {
        **tables,
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
    """One layer's fused TP kernels (``fwd``, ``bwd``); every size comes from the call's tensors and tables."""

    fwd: launch.Tunable
    bwd: launch.Tunable

    @staticmethod
    def _sizes(x: torch.Tensor, u: torch.Tensor, tables: dict[str, torch.Tensor]) -> dict[str, int]:
        """The kernels' ``tl.constexpr`` shapes: input (L, T), output (L, U), padded path blocks."""
        P, T1P = tables["col1"].shape
        return {
            "L_IN": x.shape[2], "T_IN": x.shape[4], "L_OUT": u.shape[0], "U": u.shape[2],
            "UP": next_pow2(u.shape[2]), "T1P": T1P, "T2P": tables["col2"].shape[1], "PATHS": P,
        }  # fmt: skip

    @staticmethod
    def _weights(u: torch.Tensor, colmap: torch.Tensor, UP: int) -> torch.Tensor:
        """W[p, i, j, :] = U[l, col(p, i, j), :] padded to UP columns, as a real (…, 2) tensor."""
        U = u.shape[2]
        w = torch.cat([u.reshape(-1, U), u.new_zeros(1, U)])[colmap]
        if UP != U:
            w = torch.cat([w, w.new_zeros(*w.shape[:-1], UP - U)], -1)
        return torch.view_as_real(w.contiguous()).contiguous()

    @staticmethod
    def _check(x: torch.Tensor, u: torch.Tensor, tables: dict[str, torch.Tensor]) -> None:
        L_out, M_out = u.shape[0], 2 * u.shape[0] - 1
        if x.dim() != 5 or x.shape[3] != 2 * x.shape[2] - 1 or tables["row_off"].shape[1] != M_out + 1:
            raise SphcError(
                f"fused TP kernel: x must be (B, C, L, 2L-1, T) and U ({L_out}, …) as built, "
                f"got x {tuple(x.shape)}, U {tuple(u.shape)}"
            )
        out = L_out * M_out * next_pow2(u.shape[2])
        if 2 * x[0].numel() * x.shape[0] >= 2**31 or 2 * out * x.shape[0] * x.shape[1] >= 2**31:
            raise SphcError(
                f"batch {x.shape[0]} is too large for the fused TP kernel's 32-bit offsets "
                f"(input {tuple(x.shape)}): split the batch"
            )

    def _operands(self, x: torch.Tensor, u: torch.Tensor, tables: dict[str, torch.Tensor], io):
        """x batch-last in the accumulation dtype and as the kernel reads it (``io``), W, tables, sizes."""
        self._check(x, u, tables)
        sizes = self._sizes(x, u, tables)
        xt = _to_batch_last(x)
        x_in = xt.to(io) if io is not None else xt
        index = tuple(tables[n] for n in ("path_start", "path_l12", "col1", "col2", "row_off"))
        w = self._weights(u, tables["colmap"], sizes["UP"])
        return xt, x_in, w, (*index, tables["cg"].to(xt.dtype)), {**sizes, "ACC": _acc(xt.dtype)}

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
        xt, x_in, w, index, sizes = self._operands(x, u, tables, io)
        L_out, U = sizes["L_OUT"], sizes["U"]
        out = launch.empty((L_out, 2 * L_out - 1, U, 2, BC), xt)
        self.fwd.run(
            lambda meta: (L_out, cdiv(BC, meta["BLOCK"])), x_in, w, out, *index, BC, config=config, **sizes
        )
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
        xt, x_in, w, index, sizes = self._operands(x, u, tables, io)
        L_out, U, UP = sizes["L_OUT"], sizes["U"], sizes["UP"]
        gt = _to_batch_last(g.contiguous())
        gx = torch.zeros_like(xt)  # accumulated with atomics, in the accumulation dtype
        min_block = min(c.kwargs["BLOCK"] for c in self.bwd.space)
        Q = sizes["T1P"] * sizes["T2P"]
        # per-(block, path) partial sums; blocks a larger BLOCK does not use stay zero
        gw = xt.new_zeros((cdiv(BC, min_block), sizes["PATHS"], Q, UP, 2))
        self.bwd.run(
            lambda meta: (L_out, cdiv(BC, meta["BLOCK"])),
            x_in,
            w,
            gt,
            gx,
            gw,
            *index,
            BC,
            config=config,
            **sizes,
        )
        gw = torch.view_as_complex(gw.sum(0))[..., :U].reshape(-1, U)
        flat = torch.zeros(L_out * u.shape[1] + 1, U, dtype=u.dtype, device=u.device)
        flat.index_add_(0, tables["colmap"].reshape(-1), gw)
        return _from_batch_last(gx, B, C), flat[:-1].reshape(u.shape)


def _acc(dtype: torch.dtype):
    """The kernels' accumulation dtype: float64 for float64 models, float32 otherwise."""
    import triton.language as tl  # not at import: TRITON_INTERPRET must be set before triton loads

    return tl.float64 if dtype == torch.float64 else tl.float32
