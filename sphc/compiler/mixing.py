"""Degree-mixing sets P^l: which (l1, l2) pairs a tensor product computes for output degree l.

docs/CONVENTIONS.md §8. All three rules work on *active* input degrees (those with at least one
fragment) and return unordered pairs l1 <= l2 (the swapped pair carries the same information,
docs/CONVENTIONS.md §5.2), sorted, so the result is deterministic.

* ``full``: every pair with |l1 - l2| <= l <= l1 + l2 — O(L²) pairs per l.
* ``mst``: per output degree, a minimum spanning forest of the graph whose nodes are the input
  degrees and whose edges are the allowed off-diagonal pairs, weighted by the sparse CG cost
  proxy (2 l1 + 1)(2 l2 + 1) (the weight the CGNet implementation of Cobb et al.'s idea uses,
  up to the constant factor 2l + 1), ties broken by (l1, l2). We then add the
  self-pairs (l1, l1) with l <= 2 l1: a tree has no loops, so without them degree 0 — the
  rotation-invariant output the readout needs — would get no pair at all. O(L) pairs per l.
* ``rmst``: the same forest and self-pairs, built only over a logarithmic node subset
  S_l = {o} ∪ {l ± o} for o in {0, 1, 2, 4, 8, ...}: degrees near 0 (cheap) and near l (the
  pairs that reach l with the lowest partner degree). |S_l| = O(log L) so O(log L) pairs per l,
  and every input degree d still meets degree 0 at output l = d, so no input is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from sphc.compiler.ir import Mixing


def _allowed(l1: int, l2: int, l: int) -> bool:
    return abs(l1 - l2) <= l <= l1 + l2


def full_pairs(nodes: Iterable[int], l: int) -> list[tuple[int, int]]:
    ns = sorted(set(nodes))
    return [(a, b) for i, a in enumerate(ns) for b in ns[i:] if _allowed(a, b, l)]


def _spanning_forest(nodes: list[int], l: int) -> list[tuple[int, int]]:
    """The minimum spanning forest of the allowed off-diagonal pairs among ``nodes`` (distinct,
    ascending), by Prim on a dense matrix.

    Weight (2 l1 + 1)(2 l2 + 1), ties broken by (l1, l2): folded into one integer key, so every
    weight is distinct and the forest is unique — the one Kruskal with that tie-breaking builds.
    Vectorised over nodes: an L = 256 model's sets take well under a second, so even a model that
    the size limits then refuse is refused fast.
    """
    ns = np.asarray(nodes, dtype=np.int64)
    n = len(ns)
    if n < 2:
        return []
    lo, hi = np.minimum.outer(ns, ns), np.maximum.outer(ns, ns)
    big = int(ns[-1]) + 1
    key = (((2 * lo + 1) * (2 * hi + 1)) * big + lo) * big + hi
    none = np.iinfo(np.int64).max
    key[(hi - lo > l) | (lo + hi < l) | (lo == hi)] = none
    reached = np.zeros(n, dtype=bool)
    best, via = np.full(n, none), np.zeros(n, dtype=np.int64)
    tree = []
    for _ in range(n):
        cand = np.where(reached, none, best)
        k = int(np.argmin(cand))
        if cand[k] == none:  # nothing reachable: a new component starts at its smallest degree
            k = int(np.flatnonzero(~reached)[0])
        else:
            tree.append((int(lo[k, via[k]]), int(hi[k, via[k]])))
        reached[k] = True
        closer = key[k] < best
        best = np.where(closer, key[k], best)
        via = np.where(closer, k, via)
    return tree


def mst_pairs(nodes: Iterable[int], l: int) -> list[tuple[int, int]]:
    ns = sorted(set(nodes))
    selfs = [(a, a) for a in ns if l <= 2 * a]
    return sorted(_spanning_forest(ns, l) + selfs)


def log_offsets(limit: int) -> list[int]:
    """0, 1, 2, 4, 8, ... below ``limit``."""
    out, o = [0], 1
    while o < limit:
        out.append(o)
        o *= 2
    return out


def rmst_pairs(nodes: Iterable[int], l: int) -> list[tuple[int, int]]:
    ns = set(nodes)
    offs = log_offsets(max(ns, default=0) + l + 1)
    subset = ns & ({o for o in offs} | {l + o for o in offs} | {l - o for o in offs})
    return mst_pairs(subset, l)


_RULES = {Mixing.FULL: full_pairs, Mixing.MST: mst_pairs, Mixing.RMST: rmst_pairs}


def mixing_set(mix: Mixing, active: Iterable[int], L_out: int) -> dict[int, list[tuple[int, int]]]:
    """P^l for every output degree l < L_out, over the active input degrees."""
    nodes = sorted(set(active))
    return {l: _RULES[mix](nodes, l) for l in range(L_out)}
