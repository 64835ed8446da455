"""Index conventions shared by the compiler and the runtime (pure integer functions).

A harmonic signal between layers is one complex tensor of shape ``(batch, C, L, 2L-1, T)``:
``x[b, c, l, L-1+m, t]`` is coefficient ``m`` of fragment (column) ``t`` of degree ``l`` in
channel ``c`` — s2fft's 2-D ``flm`` layout with a trailing fragment axis (PAPER.md §3.1, §5.5).
Entries with ``|m| > l`` and columns that degree ``l`` does not use are zero. Which columns a
degree uses is the signal's *type*: ``cols[l]`` lists them. Both the analysis (to count) and
the runtime (to build gather indices) enumerate tensor-product terms with the functions here,
so the two can never disagree about the order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

Cols = tuple[tuple[int, ...], ...]


def so3_cols(L: int, N: int) -> Cols:
    """SO(3) signals keep column ``N-1+n`` for ``|n| <= min(l, N-1)`` (s2fft's flmn layout)."""
    return tuple(tuple(range(N - 1 - min(l, N - 1), N + min(l, N - 1))) for l in range(L))


def prefix_cols(taus: tuple[int, ...]) -> Cols:
    """Generalized signals keep columns ``0 .. tau_l - 1``."""
    return tuple(tuple(range(t)) for t in taus)


def pair_columns(
    l1: int, cols1: tuple[int, ...], l2: int, cols2: tuple[int, ...], l: int
) -> list[tuple[int, int]]:
    """Column pairs (i, j) whose CG product at output degree ``l`` is needed.

    Swapping the factors multiplies the product by (-1)^(l1+l2-l) (PAPER.md §2.4), so for a path
    with l1 == l2 the pairs (i, j) and (j, i) carry the same information: keep i <= j, and drop
    i == j when l is odd, where the product of a column with itself vanishes.
    """
    if l1 != l2:
        return [(i, j) for i in cols1 for j in cols2]
    strict = l % 2 == 1
    return [(i, j) for a, i in enumerate(cols1) for j in cols1[a + (1 if strict else 0) :]]


def cg_pattern(l1: int, l2: int, l: int) -> tuple[np.ndarray, np.ndarray]:
    """All (m, m1) with m = m1 + m2, |m1| <= l1, |m2| <= l2, |m| <= l; m ascending, then m1.

    This is the sparse structure of the CG block; exact zeros inside it (e.g. the parity zeros
    at m1 = m2 = 0) are kept as zero values so the pattern is a pure function of the degrees.
    """
    ms, m1s = [], []
    for m in range(-l, l + 1):
        lo, hi = max(-l1, m - l2), min(l1, m + l2)
        ms.extend([m] * max(0, hi - lo + 1))
        m1s.extend(range(lo, hi + 1))
    return np.asarray(ms, dtype=np.int64), np.asarray(m1s, dtype=np.int64)


@functools.lru_cache(maxsize=65536)  # called per path by analysis, plan and the kernel tables
def cg_pattern_size(l1: int, l2: int, l: int) -> int:
    """``len(cg_pattern(l1, l2, l)[0])`` without building it."""
    return sum(max(0, min(l1, m + l2) - max(-l1, m - l2) + 1) for m in range(-l, l + 1))


def cg_offsets(paths) -> dict[tuple[int, int, int], int]:
    """Where each path's ``cg_pattern`` block starts in a layer's CG table (paths in table order)."""
    offsets, off = {}, 0
    for l1, l2, l, *_ in paths:
        offsets[(l1, l2, l)] = off
        off += cg_pattern_size(l1, l2, l)
    return offsets


def pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@dataclass(frozen=True)
class TPShape:
    """The sizes a fused TP+projection kernel is specialised to (also its plan's constants)."""

    L_in: int
    T_in: int
    L_out: int
    U: int
    T1P: int
    T2P: int
    n_paths: int


def kernel_paths(paths, L_out: int) -> list:
    """The paths whose output degree the projection keeps (l < L_out), sorted by l (stable)."""
    return sorted((p for p in paths if p[2] < L_out), key=lambda p: p[2])


def tp_shape(L_in: int, T_in: int, L_out: int, U: int, paths) -> TPShape:
    kept = kernel_paths(paths, L_out)
    n1 = max([len({i for i, _ in p[3]}) for p in kept], default=1)
    n2 = max([len({j for _, j in p[3]}) for p in kept], default=1)
    return TPShape(L_in, T_in, L_out, U, pow2(n1), pow2(n2), len(kept))
