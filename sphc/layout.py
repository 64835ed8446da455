"""Index conventions shared by the compiler and the runtime (pure integer functions).

A harmonic signal between layers is one complex tensor of shape ``(batch, C, L, 2L-1, T)``:
``x[b, c, l, L-1+m, t]`` is coefficient ``m`` of fragment (column) ``t`` of degree ``l`` in
channel ``c`` — s2fft's 2-D ``flm`` layout with a trailing fragment axis (docs/CONVENTIONS.md §1.3, §6).
Entries with ``|m| > l`` and columns that degree ``l`` does not use are zero. Which columns a
degree uses is the signal's *type*: ``cols[l]`` lists them. Both the analysis (to count) and
the runtime (to build gather indices) enumerate tensor-product terms with the functions here,
so the two can never disagree about the order.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

Cols = tuple[Sequence[int], ...]  # per degree, the columns it uses (ranges, except after merging channels)


def s2_cols(L: int) -> Cols:
    """S² signals: one column per degree."""
    return tuple(range(1) for _ in range(L))


def so3_cols(L: int, N: int) -> Cols:
    """SO(3) signals keep column ``N-1+n`` for ``|n| <= min(l, N-1)`` (s2fft's flmn layout)."""
    return tuple(range(N - 1 - min(l, N - 1), N + min(l, N - 1)) for l in range(L))


def prefix_cols(taus: Sequence[int]) -> Cols:
    """Generalized signals keep columns ``0 .. tau_l - 1`` (S² signals: one column, ``taus`` all 1)."""
    return tuple(range(t) for t in taus)


def pair_columns(
    l1: int, cols1: Sequence[int], l2: int, cols2: Sequence[int], l: int
) -> list[tuple[int, int]]:
    """Column pairs (i, j) whose CG product at output degree ``l`` is needed.

    Swapping the factors multiplies the product by (-1)^(l1+l2-l) (docs/CONVENTIONS.md §5.2), so for a path
    with l1 == l2 the pairs (i, j) and (j, i) carry the same information: keep i <= j, and drop
    i == j when l is odd, where the product of a column with itself vanishes.
    """
    if l1 != l2:
        return [(i, j) for i in cols1 for j in cols2]
    strict = l % 2 == 1
    return [(i, j) for a, i in enumerate(cols1) for j in cols1[a + (1 if strict else 0) :]]


def pair_count(l1: int, n1: int, l2: int, n2: int, l: int) -> int:
    """``len(pair_columns(...))`` for ``n1``, ``n2`` columns, without building the list."""
    if l1 != l2:
        return n1 * n2
    return n1 * (n1 - 1) // 2 if l % 2 else n1 * (n1 + 1) // 2


def width(cols: Cols) -> int:
    """The padded column count T of a signal of type ``cols`` (one more than its largest column)."""
    return 1 + max((max(c) for c in cols if c), default=0)


def merged_cols(cols: Cols, C: int) -> Cols:
    """The type of the single channel that merges ``C`` channels: column ``c * T + t`` (cross products)."""
    T = width(cols)
    return tuple(tuple(c * T + j for c in range(C) for j in cl) for cl in cols)


Path = tuple[int, int, int, tuple[tuple[int, int], ...]]  # (l1, l2, l, column pairs)


def tp_paths(cols: Cols, triples) -> tuple[Path, ...]:
    """The (l1, l2, l, pairs) of a tensor product over input type ``cols``, in the order of ``triples``."""
    return tuple((l1, l2, l, tuple(pair_columns(l1, cols[l1], l2, cols[l2], l))) for l1, l2, l in triples)


def output_columns(paths) -> list[int]:
    """The first output column of each path: its pairs take consecutive columns at its degree l,
    numbered in path order (the one numbering of tensor-product outputs)."""
    nxt: dict[int, int] = {}
    first = []
    for _, _, l, pairs in paths:
        first.append(nxt.get(l, 0))
        nxt[l] = first[-1] + len(pairs)
    return first


def output_width(paths) -> int:
    """T of a tensor product's output: the most columns any degree gets (at least 1)."""
    per: dict[int, int] = {}
    for _, _, l, pairs in paths:
        per[l] = per.get(l, 0) + len(pairs)
    return max([1, *per.values()])


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
    """``len(cg_pattern(l1, l2, l)[0])`` without building it (row m holds min(l1, m+l2) - max(-l1, m-l2) + 1)."""
    m = np.arange(-l, l + 1)
    return int(np.maximum(0, np.minimum(l1, m + l2) - np.maximum(-l1, m - l2) + 1).sum())


def cg_offsets(paths) -> dict[tuple[int, int, int], int]:
    """Where each path's ``cg_pattern`` block starts in a layer's CG table (paths in table order)."""
    offsets, off = {}, 0
    for l1, l2, l, *_ in paths:
        offsets[(l1, l2, l)] = off
        off += cg_pattern_size(l1, l2, l)
    return offsets


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """Ceiling division (launch grids)."""
    return -(-a // b)


def kernel_paths(paths, L_out: int) -> list:
    """The paths whose output degree the projection keeps (l < L_out), sorted by l (stable)."""
    return sorted((p for p in paths if p[2] < L_out), key=lambda p: p[2])


def kernel_name(attr: str, step: str = "") -> str:
    """A layer's name in the kernel registry: its attribute, plus ``_<step>`` for a second kernel set
    of the same layer (GenConv's unfused uniform step: ``step="u"``). The compiler registers kernels
    under it and the runtime looks them up by it."""
    return f"{attr}_{step}" if step else attr
