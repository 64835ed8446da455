"""The fast torch path of the tensor product (fused with GenConv's uniform projection, or not).

The reference (``ops.tp_reference``) gathers every distinct product x[s1] x[s2] into one
(products, B·C) tensor, applies the CG sums as a sparse matrix and only then the projection: it
moves the whole expanded fragment tensor through memory several times. Here one path
(l1, l2, l) at a time:

* the factor of smaller degree, ``a``, is read in reversed order m_a = l_a − k, the other, ``b``,
  through a strided "skew" view of its zero-padded rows: row (k, m) of the view is
  x_b[m − m_a], so the CG sum over m_a of every output order m is a sum over k of one broadcast
  product ``(C[k, m] x_a[k, i]) · x_b[k, m, j]`` — no index gather, batch (B·C) contiguous last;
* the products of the path's whole (i, j) grid are projected at once onto U (one matmul against
  U's rows of the path's pairs, a zero row where a grid position is no pair: no gather or scatter
  of the products), accumulated in place into the degree's output block, so only one path's
  products exist at a time (never the τ²·|P^l| tensor);
* the backward recomputes the path's products and is written out (custom-op bodies run below
  autograd): grad U from the recomputed products (one matmul), grad x by the same broadcast
  products against the other factor; the skew view's gradient is added into the padded rows one
  skew diagonal at a time (its adjoint without an index scatter).

The plan (per path: degrees, column ranges, pair grid, output columns, CG block) is built once by
the layer (``build_tables``, from its paths and CG values: one entry per column pair and per CG
coefficient, never one per product term) and travels as a few tensors (``TABLE_NAMES``), decoded
into a ``TPPlan`` on first use and cached per table tensor (weakly: it goes with the buffer).
Orders |m| > l of the input are never read.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from sphc import layout


@dataclass(frozen=True)
class PathPlan:
    """One path: output degree ``l``; factor ``a`` (degree ``la``, columns ``a0 .. a0+na-1``) read
    reversed, factor ``b`` (``lb``, ``b0 .. b0+nb-1``) through the skew view; ``grid`` = positions
    of the path's pairs in the (na, nb) grid; ``cols`` = their output columns; ``cg`` = C[k, m+l]."""

    l: int
    la: int
    a0: int
    na: int
    lb: int
    b0: int
    nb: int
    grid: np.ndarray
    cols: np.ndarray
    cg: np.ndarray
    full_grid: bool


@dataclass(frozen=True, eq=False)
class TPPlan:
    L_in: int
    T_in: int
    L: int
    width: int
    pad: int  # zero rows added on each side of the m axis so every skew view stays in bounds
    paths: tuple[PathPlan, ...]


TABLE_NAMES = ("meta", "pair_off", "grid", "cols", "cg_off", "cg")


def build_tables(paths, cg: np.ndarray) -> dict[str, np.ndarray]:
    """The fast path's tables of a tensor product: its ``paths`` (l1, l2, l, column pairs) and CG
    values (``layout.cg_pattern`` order per path, ``layout.cg_offsets``), as flat arrays.

    Per path ``meta`` = (l, la, a0, na, lb, b0, nb, full grid?) with factor a of the smaller degree;
    its pairs as positions ``(i − a0)·nb + (j − b0)`` of the (na, nb) grid, ascending, with their
    output columns; its CG block C[la − m_a, m + l] (K × (2l+1)), flattened.
    """
    offsets = layout.cg_offsets(paths)
    meta, grids, cols, blocks = [], [], [], []
    for (l1, l2, l, pairs), first in zip(paths, layout.output_columns(paths)):
        swap = l2 < l1  # factor a = the one of smaller degree
        la, lb = (l2, l1) if swap else (l1, l2)
        ij = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        ia, ib = (ij[:, 1], ij[:, 0]) if swap else (ij[:, 0], ij[:, 1])
        a0, b0 = int(ia.min()), int(ib.min())
        na, nb = int(ia.max()) - a0 + 1, int(ib.max()) - b0 + 1
        key = (ia - a0) * nb + (ib - b0)
        order = np.argsort(key, kind="stable")
        m, m1 = layout.cg_pattern(l1, l2, l)
        ma = m - m1 if swap else m1
        block = np.zeros((2 * la + 1, 2 * l + 1))
        block[la - ma, m + l] = cg[offsets[(l1, l2, l)] : offsets[(l1, l2, l)] + len(m)]
        meta.append((l, la, a0, na, lb, b0, nb, int(len(key) == na * nb)))
        grids.append(key[order])
        cols.append(first + order)
        blocks.append(block.reshape(-1))
    sizes = [len(g) for g in grids]
    return {
        "meta": np.asarray(meta, dtype=np.int64).reshape(-1, 8),
        "pair_off": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        "grid": np.concatenate(grids) if grids else np.zeros(0, dtype=np.int64),
        "cols": np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64),
        "cg_off": np.concatenate([[0], np.cumsum([len(b) for b in blocks])]).astype(np.int64),
        "cg": np.concatenate(blocks) if blocks else np.zeros(0),
    }


_PLANS: dict[int, tuple] = {}  # id(meta tensor) -> (weak ref to it, sizes, plan)


def plan_of(tables: list[torch.Tensor], L_in: int, T_in: int, L: int, width: int) -> TPPlan:
    """The plan of the tables (``TABLE_NAMES`` order), cached per ``meta`` tensor object while it lives."""
    sizes = (L_in, T_in, L, width)
    cached = _PLANS.get(id(tables[0]))
    if cached is not None and cached[0]() is tables[0] and cached[1] == sizes:
        return cached[2]
    meta, pair_off, grid, cols, cg_off, cg = (t.cpu().numpy() for t in tables)
    paths, pad = [], 0
    for p, (l, la, a0, na, lb, b0, nb, full) in enumerate(meta.tolist()):
        pairs = slice(pair_off[p], pair_off[p + 1])
        block = cg[cg_off[p] : cg_off[p + 1]].reshape(2 * la + 1, 2 * l + 1)
        paths.append(PathPlan(l, la, a0, na, lb, b0, nb, grid[pairs], cols[pairs], block, bool(full)))
        pad = max(pad, l + la - (L_in - 1))
    plan = TPPlan(L_in, T_in, L, width, pad, tuple(sorted(paths, key=lambda q: q.l)))
    _PLANS[id(tables[0])] = (weakref.ref(tables[0]), sizes, plan)
    weakref.finalize(tables[0], _PLANS.pop, id(tables[0]), None)
    return plan


@dataclass(frozen=True)
class PathTensors:
    """A path's tables on one device: CG block (K, 2l+1, 1, 1) and as (K, 1, 2l+1) matrices, and the
    rows of its full (na·nb) pair grid in the flattened projection matrix with a zero row prepended
    (row 0: the grid positions that are not pairs of the path)."""

    cg: torch.Tensor
    cg_rows: torch.Tensor
    gcols: torch.Tensor  # 1 + output column of each grid position, 0 where it is not a pair
    ugrid: torch.Tensor  # gcols + l·width where a pair, else 0


_TENSORS: dict = {}  # (id(plan), dtype, device) -> per-path tensors


def _tensors(plan: TPPlan, dtype: torch.dtype, device: torch.device) -> list[PathTensors]:
    key = (id(plan), dtype, device)
    got = _TENSORS.get(key)
    if got is None:
        got = []
        for p in plan.paths:
            gcols = np.zeros(p.na * p.nb, dtype=np.int64)
            gcols[p.grid] = 1 + p.cols
            ugrid = np.where(gcols > 0, gcols + p.l * plan.width, 0)
            cg = torch.tensor(p.cg, dtype=dtype, device=device)
            got.append(
                PathTensors(
                    cg[:, :, None, None],
                    cg[:, None, :].contiguous(),
                    torch.as_tensor(gcols, device=device),
                    torch.as_tensor(ugrid, device=device),
                )
            )
        _TENSORS[key] = got
        weakref.finalize(plan, _TENSORS.pop, key, None)
    return got


def _rows(x: torch.Tensor, plan: TPPlan) -> torch.Tensor:
    """(B, C, L, 2L−1, T) → zero-padded batch-last rows (L, 2L−1 + 2·pad, T, B·C), orders |m| > l zeroed."""
    B, C, L_in, M_in, T = x.shape
    mask = _order_mask(L_in, x.device)[:, :, None, None, None]
    rows = torch.where(mask, x.permute(2, 3, 4, 0, 1), torch.zeros((), dtype=x.dtype, device=x.device))
    rows = rows.reshape(L_in, M_in, T, B * C)
    if plan.pad:
        rows = torch.nn.functional.pad(rows, (0, 0, 0, 0, plan.pad, plan.pad))
    return rows.contiguous()  # the factors are strided views computed from this layout


def _order_mask(L: int, device) -> torch.Tensor:
    l = torch.arange(L, device=device)[:, None]
    m = torch.arange(2 * L - 1, device=device)[None, :] - (L - 1)
    return m.abs() <= l


def _factors(rows: torch.Tensor, rows_rev: torch.Tensor, plan: TPPlan, p: PathPlan):
    """(x_a reversed (K, 1, na, 1, BC), skew view of x_b (K, 2l+1, 1, nb, BC), first row of the view),
    both views straight into the contiguous rows (broadcast axes of stride 0: few ops per path).

    ``rows_rev`` = ``rows`` with the m axis reversed (the padding is symmetric): x_a is a view of it.
    """
    _, Mp, T, BC = rows.shape
    sl, sm = Mp * T * BC, T * BC
    c = plan.pad + plan.L_in - 1  # padded row of m = 0
    K, Mo = 2 * p.la + 1, 2 * p.l + 1
    xa = rows_rev.as_strided((K, 1, p.na, 1, BC), (sm, 0, BC, 0, 1), p.la * sl + (c - p.la) * sm + p.a0 * BC)
    base = c - p.l - p.la  # row of m_b = m − m_a at k = 0, m = −l
    xb = rows.as_strided((K, Mo, 1, p.nb, BC), (sm, sm, 0, BC, 1), p.lb * sl + base * sm + p.b0 * BC)
    return xa, xb, base


def _products(xa, xb, t: PathTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """(Y = C·x_a (K, 2l+1, na, 1, BC), the products of the path's full pair grid (na·nb, 2l+1, BC)):
    pairs first, so the projection onto U and its gradient are single matrix products."""
    y = t.cg[..., None] * xa
    K, Mo, na, _, BC = y.shape
    nb = xb.shape[3]
    prod = torch.mul(y.permute(0, 2, 3, 1, 4), xb.permute(0, 2, 3, 1, 4), out=y.new_empty(K, na, nb, Mo, BC))
    return y, prod.sum(0).view(na * nb, Mo, BC)


def _projections(u: torch.Tensor, kept: list[PathTensors]) -> list[torch.Tensor]:
    """Each kept path's (na·nb, τ_u) block of u over its full pair grid (zero rows where the grid
    position is not a pair of the path), gathered in one op: the products are projected, and their
    gradients formed, on the full grid, with no gather or scatter of the products."""
    flat = u.reshape(-1, u.shape[-1])
    w = torch.cat([flat.new_zeros(1, flat.shape[1]), flat]).index_select(
        0, torch.cat([t.ugrid for t in kept])
    )
    return list(w.split([len(t.ugrid) for t in kept]))


def _blocks(x: torch.Tensor, plan: TPPlan, L: int, u: torch.Tensor | None) -> torch.Tensor:
    """The forward as (L, τ_u, 2L−1, B·C) (``u`` given) or (L, width, 2L−1, B·C): each path's products
    projected (or placed in their columns) and accumulated in place into their degree's block."""
    rows = _rows(x, plan)
    rows_rev = rows.flip(1)
    kept = [(p, t) for p, t in zip(plan.paths, _tensors(plan, x.real.dtype, x.device)) if p.l < L]
    BC = rows.shape[-1]
    if u is not None:
        ws = _projections(u, [t for _, t in kept])
        out = x.new_zeros(L, u.shape[-1], 2 * L - 1, BC)
    else:  # column 0 collects the grid positions that are no pair, dropped at the end
        out = x.new_zeros(L, plan.width + 1, 2 * L - 1, BC)
    for k, (p, t) in enumerate(kept):
        _, n = _products(*_factors(rows, rows_rev, plan, p)[:2], t)
        blk = out[p.l, :, L - 1 - p.l : L + p.l]  # (τ_u or width + 1, 2l+1, BC)
        if u is not None:
            blk.view(blk.shape[0], -1).addmm_(ws[k].T, n.view(n.shape[0], -1))
        else:
            blk.index_add_(0, t.gcols, n)
    return out if u is not None else out[:, 1:]


def _assemble(out: torch.Tensor, B: int, C: int) -> torch.Tensor:
    """(L, cols, 2L−1, B·C) → the padded layout (B, C, L, 2L−1, cols)."""
    L, cols, M = out.shape[:3]
    return out.view(L, cols, M, B, C).permute(3, 4, 0, 2, 1).contiguous()


def tp_project(x: torch.Tensor, u: torch.Tensor, fast: list[torch.Tensor], L_tp: int) -> torch.Tensor:
    """Same function as ``ops._tp_project_reference``: TP(x) contracted with u (L, width, τ_u), l < L."""
    B, C, L_in, _, T = x.shape
    L, width, tau_u = u.shape
    plan = plan_of(fast, L_in, T, L_tp, width)
    return _assemble(_blocks(x, plan, L, u), B, C)


def tensor_product(x: torch.Tensor, fast: list[torch.Tensor], L: int, width: int) -> torch.Tensor:
    """Same function as ``ops.tp_reference``: the expanded (B, C, L, 2L−1, width) tensor product."""
    B, C, L_in, _, T = x.shape
    plan = plan_of(fast, L_in, T, L, width)
    return _assemble(_blocks(x, plan, L, None), B, C)


def _contract(a: torch.Tensor, b: torch.Tensor, dim: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Σ over ``dim`` (a column axis of a few entries, in both) of a·b, as a chain of in-place
    multiply-adds (measured faster than the broadcast product and a reduction over a middle axis),
    written into ``out`` when given."""
    out = torch.mul(a.select(dim, 0), b.select(dim, 0), out=out)
    for k in range(1, a.shape[dim]):
        out.addcmul_(a.select(dim, k), b.select(dim, k))
    return out


def _grad_rows(g: torch.Tensor, lead_zero: bool) -> torch.Tensor:
    """(B, C, L, 2L−1, k) output gradient → (L, k, 2L−1, B·C) batch-last rows (with a zero row in front
    of the k axis if ``lead_zero``)."""
    B, C, L, M, k = g.shape
    rows = g.new_zeros(L, k + 1, M, B * C) if lead_zero else g.new_empty(L, k, M, B * C)
    rows[:, int(lead_zero) :].view(L, k, M, B, C).copy_(g.permute(2, 4, 3, 0, 1))
    return rows


def _backward(g, x, u, fast, L_tp, width):
    """(grad x, grad u or None) for ``tp_project`` (``u`` given) or ``tensor_product``.

    Written for conj(grad): conj(gy) = Σ_j conj(g_n) x_b and conj(g_xb) = Σ_i conj(g_n) Y need no
    conjugated copy of the big factors, and one conj of the accumulated gradient at the end. The
    gradient of the products, g_n, is formed on the path's full pair grid (zero where no pair).
    """
    B, C, L_in, M_in, T = x.shape
    plan = plan_of(fast, L_in, T, L_tp, width)
    L = g.shape[2]
    rows = _rows(x, plan)
    rows_rev = rows.flip(1)
    gc_rows = _grad_rows(g.conj(), u is None)
    grad_c = torch.zeros_like(rows)  # conj(grad) of the padded rows
    grad_rev = torch.zeros_like(rows)  # the same, m reversed (where the reversed factors' part goes)
    c = plan.pad + L_in - 1
    kept = [(p, t) for p, t in zip(plan.paths, _tensors(plan, x.real.dtype, x.device)) if p.l < L]
    if u is not None:
        ws = _projections(u, [t for _, t in kept])
        gws = []
    _, Mp, T_, BC = rows.shape
    sl, sm = Mp * T_ * BC, T_ * BC
    for k, (p, t) in enumerate(kept):
        xa, xb, base = _factors(rows, rows_rev, plan, p)
        gac = gc_rows[p.l, :, L - 1 - p.l : L + p.l]  # (τ_u or 1 + width, 2l+1, BC)
        Mo = gac.shape[1]
        if u is not None:
            y, n = _products(xa, xb, t)
            gac = gac.view(gac.shape[0], -1)
            gws.append(n.view(n.shape[0], -1) @ gac.T)
            gnc = ws[k] @ gac  # conj(grad n): (na·nb, (2l+1)·BC)
        else:
            y = t.cg[..., None] * xa
            gnc = gac.index_select(0, t.gcols)
        gnc = gnc.view(p.na, p.nb, Mo, BC).permute(2, 0, 1, 3).unsqueeze(0)  # (1, 2l+1, na, nb, BC)
        K = xb.shape[0]
        gyc = _contract(gnc, xb, 3, out=gnc.new_empty(K, Mo, p.na, BC))  # (K, 2l+1, na, BC)
        # conj(grad x_a)[k] = Σ_m C[k, m] gyc[k, m]: one batched matmul over k (real C, complex as pairs)
        gxa = torch.bmm(t.cg_rows, torch.view_as_real(gyc).view(K, Mo, -1))
        grad_rev.as_strided((K, p.na, BC), (sm, BC, 1), p.la * sl + (c - p.la) * sm + p.a0 * BC).add_(
            torch.view_as_complex(gxa.view(K, p.na, BC, 2))
        )
        # conj(grad x_b) on the skew view, (K, 2l+1, nb, BC); entry (k, m) belongs to padded row base + k + m
        gxb = _contract(gnc, y, 2)
        at = p.lb * sl + base * sm + p.b0 * BC
        if Mo <= K:
            for m in range(Mo):
                grad_c.as_strided((K, p.nb, BC), (sm, BC, 1), at + m * sm).add_(gxb[:, m])
        else:
            for kk in range(K):
                grad_c.as_strided((Mo, p.nb, BC), (sm, BC, 1), at + kk * sm).add_(gxb[kk])
    if u is not None and kept:
        gu_c = torch.zeros(u.shape[0] * u.shape[1] + 1, u.shape[2], dtype=u.dtype, device=u.device)
        gu_c.index_add_(0, torch.cat([t.ugrid for _, t in kept]), torch.cat(gws))
        gu_c = gu_c[1:].view(u.shape)
    elif u is not None:
        gu_c = torch.zeros_like(u)
    grad_c += grad_rev.flip(1)
    grad = grad_c[:, plan.pad : plan.pad + M_in].reshape(L_in, M_in, T, B, C).permute(3, 4, 0, 1, 2)
    mask = _order_mask(L_in, x.device)[None, None, :, :, None]
    grad = torch.where(mask, grad.conj(), torch.zeros((), dtype=grad.dtype, device=grad.device))
    return grad.contiguous(), (gu_c.conj().resolve_conj() if u is not None else None)


def tp_project_backward(g, x, u, fast, L_tp):
    return _backward(g, x, u, fast, L_tp, u.shape[1])


def tensor_product_backward(g, x, fast, L, width):
    return _backward(g, x, None, fast, L, width)[0]
