"""The fast torch path of the tensor product (fused with GenConv's uniform projection, or not).

The reference (``ops.tp_reference``) gathers every distinct product x[s1] x[s2] into one
(products, B·C) tensor, applies the CG sums as a sparse matrix and only then the projection: it
moves the whole expanded fragment tensor through memory several times. Here one degree pair
(l_a, l_b) — the group of its paths (l_a, l_b, l) — at a time:

* the factor of smaller degree, ``a``, is read in reversed order m_a = l_a − k, the other, ``b``,
  through a strided "skew" view of its zero-padded rows: row (k, m) of the view is
  x_b[m − m_a], so the products x_a[k, i] · x_b[k, m, j] of one broadcast multiply hold every
  term of the CG sums of order m — no index gather, batch (B·C) contiguous last — and serve every
  output degree l of the pair (the products do not depend on l);
* the CG sums of all the group's paths are one real batched matmul over the orders m (CG blocks
  (paths, K) against the products (K, pairs·B·C));
* each path's sums over the whole (i, j) grid are projected at once onto U (a matmul against U's
  rows of the path's pairs, a zero row where a grid position is no pair: no gather or scatter of
  the products), accumulated in place into the degree's output block, so only one group's
  products exist at a time (never the τ²·|P^l| tensor), in work buffers reused by every group;
* the backward recomputes the group's products and is written out (custom-op bodies run below
  autograd): grad U from the recomputed sums, grad of the products through the CG blocks'
  transpose (one batched matmul), grad x by multiply-add chains against the other factor; the
  skew view's gradient is added into the padded rows one skew diagonal at a time (its adjoint
  without an index scatter).

The plan (per path: degrees, column ranges, pair grid, output columns, CG block) is built once by
the layer (``build_tables``, from its paths and CG values: one entry per column pair and per CG
coefficient, never one per product term) and travels as a few tensors (``TABLE_NAMES``), decoded
into a ``TPPlan`` on first use and cached per table tensor (weakly: it goes with the buffer).
Orders |m| > l of the input are never read.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from sphc import layout
from sphc.runtime import cpu_kernels


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

    Per path ``meta`` = (l, la, a0, na, lb, b0, nb) with factor a of the smaller degree;
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
        meta.append((l, la, a0, na, lb, b0, nb))
        grids.append(key[order])
        cols.append(first + order)
        blocks.append(block.reshape(-1))
    sizes = [len(g) for g in grids]
    return {
        "meta": np.asarray(meta, dtype=np.int64).reshape(-1, 7),
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
    for p, (l, la, a0, na, lb, b0, nb) in enumerate(meta.tolist()):
        pairs = slice(pair_off[p], pair_off[p + 1])
        block = cg[cg_off[p] : cg_off[p + 1]].reshape(2 * la + 1, 2 * l + 1)
        paths.append(PathPlan(l, la, a0, na, lb, b0, nb, grid[pairs], cols[pairs], block))
        pad = max(pad, l + la - (L_in - 1))
    plan = TPPlan(L_in, T_in, L, width, pad, tuple(sorted(paths, key=lambda q: q.l)))
    _PLANS[id(tables[0])] = (weakref.ref(tables[0]), sizes, plan)
    weakref.finalize(tables[0], _PLANS.pop, id(tables[0]), None)
    return plan


@dataclass(frozen=True)
class Group:
    """The paths (l1, l2, l < L) of one degree pair, sharing their products: factor ``a`` (degree ``la``,
    columns ``a0 .. a0+na-1``, the union of the paths' ranges) reversed, ``b`` (``lb``, ``b0 ..``) on
    the skew view of ``Mo`` = 2·lmax+1 orders; per path its degree, its rows of the flattened U over
    the (na·nb) grid (``ugrid``: 1 + row, 0 where no pair) and its output columns (``gcols``: 1 +
    column, 0 where no pair); ``cg`` (Mo, paths, K) = C_l[k, m] per order m = −lmax … lmax."""

    la: int
    a0: int
    na: int
    lb: int
    b0: int
    nb: int
    lmax: int
    ls: tuple[int, ...]
    cg: torch.Tensor
    ugrid: tuple[torch.Tensor, ...]
    gcols: tuple[torch.Tensor, ...]


_GROUPS: dict = {}  # (id(plan), L, dtype, device) -> groups


def _groups(plan: TPPlan, L: int, dtype: torch.dtype, device: torch.device) -> list[Group]:
    """The plan's paths of degree l < L grouped by degree pair (cached with the plan)."""
    key = (id(plan), L, dtype, device)
    got = _GROUPS.get(key)
    if got is not None:
        return got
    by_pair: dict[tuple[int, int], list[PathPlan]] = {}
    for p in plan.paths:
        if p.l < L:
            by_pair.setdefault((p.la, p.lb), []).append(p)
    got = []
    for (la, lb), ps in by_pair.items():
        a0, b0 = min(p.a0 for p in ps), min(p.b0 for p in ps)
        na, nb = max(p.a0 + p.na for p in ps) - a0, max(p.b0 + p.nb for p in ps) - b0
        lmax = max(p.l for p in ps)
        cg = np.zeros((2 * lmax + 1, len(ps), 2 * la + 1))
        ugrid, gcols = [], []
        for q, p in enumerate(ps):
            cg[lmax - p.l : lmax + p.l + 1, q] = p.cg.T
            i, j = np.divmod(p.grid, p.nb)
            cols = np.zeros(na * nb, dtype=np.int64)
            cols[(i + p.a0 - a0) * nb + (j + p.b0 - b0)] = 1 + p.cols
            gcols.append(torch.as_tensor(cols, device=device))
            ugrid.append(torch.as_tensor(np.where(cols > 0, cols + p.l * plan.width, 0), device=device))
        ls = tuple(p.l for p in ps)
        cg_t = torch.tensor(cg, dtype=dtype, device=device)
        got.append(Group(la, a0, na, lb, b0, nb, lmax, ls, cg_t, tuple(ugrid), tuple(gcols)))
    _GROUPS[key] = got
    weakref.finalize(plan, _GROUPS.pop, key, None)
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


def _factors(rows: torch.Tensor, rows_rev: torch.Tensor, plan: TPPlan, g: Group):
    """(x_a reversed (K, na, BC), skew view of x_b (K, Mo, nb, BC), its first row, x_a's first row), both
    views straight into the contiguous rows: row (k, m) of the skew view is x_b[m − m_a], m_a = la − k.

    ``rows_rev`` = ``rows`` with the m axis reversed (the padding is symmetric): x_a is a view of it.
    """
    _, Mp, T, BC = rows.shape
    sl, sm = Mp * T * BC, T * BC
    c = plan.pad + plan.L_in - 1  # padded row of m = 0
    K, Mo = 2 * g.la + 1, 2 * g.lmax + 1
    at_a = g.la * sl + (c - g.la) * sm + g.a0 * BC
    xa = rows_rev.as_strided((K, g.na, BC), (sm, BC, 1), at_a)
    base = c - g.lmax - g.la  # row of m_b = m − m_a at k = 0, m = −lmax
    at_b = g.lb * sl + base * sm + g.b0 * BC
    xb = rows.as_strided((K, Mo, g.nb, BC), (sm, sm, BC, 1), at_b)
    return xa, xb, at_a, at_b


class _Scratch:
    """One call's work buffers, sized for its largest group and reused by every group: a fresh
    multi-MiB temporary per group is written at page-fault speed (measured ≈ 2 GB/s)."""

    def __init__(self, groups: list[Group], BC: int, like: torch.Tensor, backward: bool):
        def most(f) -> int:
            return max((f(g) for g in groups), default=0) * BC

        self.prod = like.new_empty(most(lambda g: (2 * g.lmax + 1) * (2 * g.la + 1) * g.na * g.nb))
        self.sums = like.new_empty(most(lambda g: (2 * g.lmax + 1) * len(g.ls) * g.na * g.nb))
        if backward:
            self.grad_sums = like.new_empty(self.sums.shape)
            self.part = like.new_empty(most(lambda g: (2 * g.lmax + 1) * (2 * g.la + 1) * max(g.na, g.nb)))

    @staticmethod
    def take(buf: torch.Tensor, *shape: int) -> torch.Tensor:
        return buf[: math.prod(shape)].view(shape)


def _products(xa: torch.Tensor, xb: torch.Tensor, g: Group, scratch: _Scratch) -> torch.Tensor:
    """The group's CG sums N (Mo, paths, na·nb, BC): the products P[m, k, i, j] = x_a[k, i] x_b[k, m, j],
    shared by the group's paths, contracted over k with each path's CG block (one real batched
    matmul over the orders)."""
    K, Mo, nb, BC = xb.shape
    na = xa.shape[1]
    P = scratch.take(scratch.prod, Mo, K, na, nb, BC)
    torch.mul(xa[:, None, :, None], xb[:, :, None], out=P.permute(1, 0, 2, 3, 4))
    n = scratch.take(scratch.sums, Mo, len(g.ls), na * nb, BC)
    torch.bmm(g.cg, torch.view_as_real(P).view(Mo, K, -1), out=torch.view_as_real(n).view(Mo, len(g.ls), -1))
    return n


def _projections(u: torch.Tensor, groups: list[Group]) -> list[torch.Tensor]:
    """Each path's (na·nb, τ_u) block of u over its group's pair grid (zero rows where the grid position
    is not a pair of the path), gathered in one op: the products are projected, and their gradients
    formed, on the full grid, with no gather or scatter of the products."""
    flat = u.reshape(-1, u.shape[-1])
    idx = torch.cat([t for g in groups for t in g.ugrid])
    w = torch.cat([flat.new_zeros(1, flat.shape[1]), flat]).index_select(0, idx)
    return list(w.split([len(t) for g in groups for t in g.ugrid]))


def _blocks(x: torch.Tensor, plan: TPPlan, L: int, u: torch.Tensor | None) -> torch.Tensor:
    """The forward as (L, 2L−1, τ_u, B·C) (``u`` given) or (L, 2L−1, width, B·C): each path's CG sums
    projected (or placed in their columns) and accumulated in place into their degree's block."""
    rows = _rows(x, plan)
    rows_rev = rows.flip(1)
    groups = _groups(plan, L, x.real.dtype, x.device)
    BC = rows.shape[-1]
    if u is not None:
        ws = iter(_projections(u, groups))
        out = x.new_zeros(L, 2 * L - 1, u.shape[-1], BC)
    else:  # column 0 collects the grid positions that are no pair, dropped at the end
        out = x.new_zeros(L, 2 * L - 1, plan.width + 1, BC)
    scratch = _Scratch(groups, BC, x, backward=False)
    for g in groups:
        xa, xb = _factors(rows, rows_rev, plan, g)[:2]
        n = _products(xa, xb, g, scratch)
        for q, l in enumerate(g.ls):
            blk = out[l, L - 1 - l : L + l]  # (2l+1, τ_u or width + 1, BC)
            nq = n[g.lmax - l : g.lmax + l + 1, q]  # (2l+1, na·nb, BC)
            if u is not None:
                w = next(ws)
                blk.baddbmm_(w.T.expand(2 * l + 1, *w.T.shape), nq)
            else:
                blk.index_add_(1, g.gcols[q], nq)
    return out if u is not None else out[:, :, 1:]


def _assemble(out: torch.Tensor, B: int, C: int) -> torch.Tensor:
    """(L, 2L−1, cols, B·C) → the padded layout (B, C, L, 2L−1, cols)."""
    L, M, cols = out.shape[:3]
    return out.view(L, M, cols, B, C).permute(3, 4, 0, 1, 2).contiguous()


def tp_project(x: torch.Tensor, u: torch.Tensor, fast: list[torch.Tensor], L_tp: int) -> torch.Tensor:
    """Same function as ``ops._tp_project_reference``: TP(x) contracted with u (L, width, τ_u), l < L."""
    B, C, L_in, _, T = x.shape
    L, width, tau_u = u.shape
    plan = plan_of(fast, L_in, T, L_tp, width)
    if cpu_kernels.available(x):
        return cpu_kernels.tp_project(x, u, plan)
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
    (a0, *a_rest), (b0, *b_rest) = a.unbind(dim), b.unbind(dim)
    out = torch.mul(a0, b0, out=out)
    for ak, bk in zip(a_rest, b_rest):
        out.addcmul_(ak, bk)
    return out


def _grad_rows(g: torch.Tensor, lead_zero: bool) -> torch.Tensor:
    """(B, C, L, 2L−1, k) output gradient → (L, 2L−1, k, B·C) batch-last rows (with a zero row in front
    of the k axis if ``lead_zero``)."""
    B, C, L, M, k = g.shape
    rows = g.new_zeros(L, M, k + 1, B * C) if lead_zero else g.new_empty(L, M, k, B * C)
    rows[:, :, int(lead_zero) :].view(L, M, k, B, C).copy_(g.permute(2, 3, 4, 0, 1))
    return rows


def _backward(g, x, u, fast, L_tp, width):
    """(grad x, grad u or None) for ``tp_project`` (``u`` given) or ``tensor_product``.

    Written for conj(grad): conj(g_xa) = Σ conj(g_P) x_b and conj(g_xb) = Σ conj(g_P) x_a need no
    conjugated copy of the big factors, and one conj of the accumulated gradient at the end. The
    gradient of the CG sums is formed on the group's full pair grid (zero where no pair).
    """
    B, C, L_in, M_in, T = x.shape
    plan = plan_of(fast, L_in, T, L_tp, width)
    L = g.shape[2]
    rows = _rows(x, plan)
    rows_rev = rows.flip(1)
    gc_rows = _grad_rows(g.conj(), u is None)
    grad_c = torch.zeros_like(rows)  # conj(grad) of the padded rows
    groups = _groups(plan, L, x.real.dtype, x.device)
    if u is not None:
        ws = _projections(u, groups)
        gws = []
    _, Mp, T_, BC = rows.shape
    sm = T_ * BC
    path = 0
    scratch = _Scratch(groups, BC, rows, backward=True)
    for grp in groups:
        xa, xb, at_a, at_b = _factors(rows, rows_rev, plan, grp)
        K, Mo, nb, _ = xb.shape
        na = grp.na
        if u is not None:
            n = _products(xa, xb, grp, scratch)
        gnc = scratch.take(scratch.grad_sums, Mo, len(grp.ls), na * nb, BC).zero_()  # conj(grad N)
        for q, l in enumerate(grp.ls):
            gac = gc_rows[l, L - 1 - l : L + l]  # (2l+1, τ_u or 1 + width, BC)
            if u is not None:
                w = ws[path]
                gws.append(torch.bmm(n[grp.lmax - l : grp.lmax + l + 1, q], gac.mT).sum(0))
                gnc[grp.lmax - l : grp.lmax + l + 1, q] = torch.matmul(w, gac)
            else:
                gnc[grp.lmax - l : grp.lmax + l + 1, q] = gac.index_select(1, grp.gcols[q])
            path += 1
        # conj(grad P) (Mo, K, na, nb, BC): the CG blocks' transpose (real), one batched matmul
        gpc = scratch.take(scratch.prod, Mo, K, na, nb, BC)  # P is spent
        torch.bmm(
            grp.cg.mT,
            torch.view_as_real(gnc).view(Mo, len(grp.ls), -1),
            out=torch.view_as_real(gpc).view(Mo, K, -1),
        )
        # conj(grad x_a) = Σ_{m, j} conj(g_P) x_b, k reversed back: x_a's rows in their own order
        gyc = _contract(
            gpc, xb.permute(1, 0, 2, 3)[:, :, None], 3, out=scratch.take(scratch.part, Mo, K, na, BC)
        )
        grad_c.as_strided((K, na, BC), (sm, BC, 1), at_a).add_(gyc.sum(0).flip(0))
        # conj(grad x_b) on the skew view, (Mo, K, nb, BC); entry (m, k) belongs to row base + k + m
        gxb = _contract(gpc, xa[None, :, :, None], 2, out=scratch.take(scratch.part, Mo, K, nb, BC))
        if Mo <= K:
            for m in range(Mo):
                grad_c.as_strided((K, nb, BC), (sm, BC, 1), at_b + m * sm).add_(gxb[m])
        else:
            for k in range(K):
                grad_c.as_strided((Mo, nb, BC), (sm, BC, 1), at_b + k * sm).add_(gxb[:, k])
    if u is not None:
        gu_c = torch.zeros(u.shape[0] * u.shape[1] + 1, u.shape[2], dtype=u.dtype, device=u.device)
        if groups:
            gu_c.index_add_(0, torch.cat([t for grp in groups for t in grp.ugrid]), torch.cat(gws))
        gu_c = gu_c[1:].view(u.shape)
    grad = grad_c[:, plan.pad : plan.pad + M_in].reshape(L_in, M_in, T, B, C).permute(3, 4, 0, 1, 2)
    mask = _order_mask(L_in, x.device)[None, None, :, :, None]
    grad = torch.where(mask, grad.conj(), torch.zeros((), dtype=grad.dtype, device=grad.device))
    return grad.contiguous(), (gu_c.conj().resolve_conj() if u is not None else None)


def tp_project_backward(g, x, u, fast, L_tp):
    if cpu_kernels.available(x):
        plan = plan_of(fast, x.shape[2], x.shape[-1], L_tp, u.shape[1])
        return cpu_kernels.tp_project_backward(g, x, u, plan)
    return _backward(g, x, u, fast, L_tp, u.shape[1])


def tensor_product_backward(g, x, fast, L, width):
    return _backward(g, x, None, fast, L, width)[0]
