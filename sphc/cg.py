"""Exact complex Clebsch–Gordan coefficients C^{lm}_{l1 m1, l2 m2} (Condon–Shortley, docs/CONVENTIONS.md §5).

The convention is that of ``sympy.physics.quantum.cg.CG(l1, m1, l2, m2, l, m).doit()``, but sympy costs
~1 ms per coefficient and the CG activation (docs/CONVENTIONS.md §7.4) needs millions of them at L = 32. So whole
(l1, l2, l) blocks are computed with exact integer arithmetic:

    C^{lm}_{m1 m2} = sqrt(K P_m Q(m1) R(m2)) r^m_{m1},   r^m = u^m / (D (l-m)!),   D = (2 l1)! (2 l2)!,
    K = (2l+1)(l1+l2-l)! / ((l1+l2+l+1)! (l1-l2+l)! (l2-l1+l)!),
    P_m = (l+m)!(l-m)!,   Q(m1) = (l1-m1)!(l1+m1)!,   R(m2) = (l2-m2)!(l2+m2)!.

At the highest weight m = l, u^l_{m1} = (-1)^{l1-m1} D / ((l1-m1)! (l2-m2)!); applying J- gives the
division-free integer recursion u^{m-1}_{m1} = (l1+m1+1) u^m_{m1+1} + (l2+m2+1) u^m_{m1}, m2 = m-1-m1.
Hence C^2 is an exact rational and sign(C) = sign(u): zeros (accidental ones too) are exact, and one
correctly rounded int/int division plus one sqrt gives float64 within 2^-52 relative error. Only m >= 0
is computed; m < 0 follows from C^{l,-m}_{l1,-m1,l2,-m2} = (-1)^{l1+l2-l} C^{lm}_{l1 m1,l2 m2}.
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache, lru_cache
from typing import TYPE_CHECKING

import numpy as np

from sphc.cache import load_or_compute

if TYPE_CHECKING:
    import sympy

#: Part of the disk-cache key of ``pattern_values``; bump whenever the values it returns could change.
CG_ENGINE_VERSION = 1


@dataclass(frozen=True, eq=False)
class CGBlock:
    """The nonzero C^{lm}_{l1 m1, l2 m2} of one triple, m ascending then m1 ascending (read-only arrays)."""

    l1: int
    l2: int
    l: int
    m1: np.ndarray
    m2: np.ndarray
    m: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class _Row:
    """Exact row m >= 0: C|C| = signed[k] / den at m1 = m1_lo + k (C^2 as a rational, with C's sign)."""

    m1_lo: int
    signed: list[int]
    den: int


def _check_degrees(l1: int, l2: int, l: int) -> None:
    if min(l1, l2, l) < 0:
        raise ValueError(f"degrees must be >= 0, got (l1, l2, l) = {(l1, l2, l)}")
    if not abs(l1 - l2) <= l <= l1 + l2:
        raise ValueError(f"triangle rule |l1 - l2| <= l <= l1 + l2 fails for (l1, l2, l) = {(l1, l2, l)}")


def _m1_window(l1: int, l2: int, m: int) -> tuple[int, int]:
    """Inclusive m1 range with |m1| <= l1 and |m - m1| <= l2."""
    return max(-l1, m - l2), min(l1, m + l2)


def _exact_rows(l1: int, l2: int, l: int) -> list[_Row]:
    """Rows m = 0..l of the block, by the integer J- recursion from the highest weight (module docstring).

    The recursion is linear, so each row is kept divided by its gcd (true u = scale * u): the entries of a
    row share ~90% of their bits, and stripping them makes the per-coefficient products cheap.
    """
    f = math.factorial
    n = 2 * l1 + 1
    d = f(2 * l1) * f(2 * l2)
    k_num = (2 * l + 1) * f(l1 + l2 - l)
    k_den = f(l1 + l2 + l + 1) * f(l1 - l2 + l) * f(l2 - l1 + l)
    q = [f(2 * l1 - i) * f(i) for i in range(n)]  # Q(m1) at list index i = m1 + l1
    r = [f(2 * l2 - j) * f(j) for j in range(2 * l2 + 1)]  # R(m2) at list index j = m2 + l2
    # u[i] holds u^m_{m1} / scale for m1 = i - l1; the trailing 0 stands for m1 = l1 + 1.
    u = [0] * (n + 1)
    lo, hi = _m1_window(l1, l2, l)
    for m1 in range(lo, hi + 1):
        u[m1 + l1] = (-1) ** (l1 - m1) * (f(2 * l1) // f(l1 - m1)) * (f(2 * l2) // f(l2 - l + m1))
    scale = 1
    rows: list[_Row] = []  # m = l, l-1, ..., 0
    for m in range(l, -1, -1):
        lo, hi = _m1_window(l1, l2, m)
        g = math.gcd(*u[lo + l1 : hi + l1 + 1])
        if g > 1:
            u = [x // g for x in u]
            scale *= g
        # C|C| = u|u| Q R * [scale^2 K (l+m)! / (D^2 (l-m)!)], the bracket reduced once per row
        ratio = Fraction(scale * scale * k_num * f(l + m), k_den * d * d * f(l - m))
        a = ratio.numerator
        j0 = m + l1 + l2  # list index of R(m2) for m2 = m - m1 is j0 - i
        signed = [u[i] * abs(u[i]) * (q[i] * r[j0 - i] * a) for i in range(lo + l1, hi + l1 + 1)]
        rows.append(_Row(lo, signed, ratio.denominator))
        if m > 0:
            c = l1 + l2 + m  # l2 + m2 + 1 = c - i with m2 = m - 1 - m1
            lo, hi = _m1_window(l1, l2, m - 1)
            nxt = [0] * (n + 1)
            for i in range(lo + l1, hi + l1 + 1):
                nxt[i] = (i + 1) * u[i + 1] + (c - i) * u[i]
            u = nxt
    return rows[::-1]


_exact_rows_memo = lru_cache(maxsize=32)(_exact_rows)


def _row_floats(row: _Row) -> list[float]:
    """C = sign * sqrt(|C|C|| / den): int/int true division is correctly rounded, then one sqrt."""
    den = row.den
    return [math.sqrt(s / den) if s >= 0 else -math.sqrt(-s / den) for s in row.signed]


@cache
def _cg_block(l1: int, l2: int, l: int) -> CGBlock:
    _check_degrees(l1, l2, l)
    phase = -1.0 if (l1 + l2 - l) % 2 else 1.0
    m1_parts: list[np.ndarray] = []
    m_parts: list[np.ndarray] = []
    val_parts: list[np.ndarray] = []
    halves: list[tuple[np.ndarray, np.ndarray]] = []  # (m1, values) for m = 0..l
    for row in _exact_rows(l1, l2, l):
        vals = np.array(_row_floats(row), dtype=np.float64)
        m1 = np.arange(row.m1_lo, row.m1_lo + len(vals), dtype=np.int64)
        keep = vals != 0.0
        halves.append((m1[keep], vals[keep]))
    for m in range(-l, l + 1):
        m1, vals = halves[abs(m)]
        if m < 0:
            m1, vals = -m1[::-1], phase * vals[::-1]
        m1_parts.append(m1)
        m_parts.append(np.full(len(m1), m, dtype=np.int64))
        val_parts.append(vals)
    m1_all, m_all, values = (np.concatenate(p) for p in (m1_parts, m_parts, val_parts))
    arrays = (m1_all, m_all - m1_all, m_all, values)
    for a in arrays:
        a.setflags(write=False)  # memoised and shared: nobody may mutate them
    return CGBlock(l1, l2, l, *arrays)


def cg_block(l1: int, l2: int, l: int) -> CGBlock:
    """All nonzero C^{lm}_{l1 m1, l2 m2} of the triple, memoised; ValueError if the triangle rule fails."""
    return _cg_block(operator.index(l1), operator.index(l2), operator.index(l))


def cg_exact(l1: int, m1: int, l2: int, m2: int, l: int, m: int) -> sympy.Expr:
    """The engine's exact C^{lm}_{l1 m1, l2 m2} as ``sign * sqrt(Rational)``, for checks against sympy."""
    import sympy  # only exact checks need it: a top-level import costs ~0.2 s per compile / model import

    if min(l1, l2, l) < 0:
        raise ValueError(f"degrees must be >= 0, got (l1, l2, l) = {(l1, l2, l)}")
    in_range = abs(m1) <= l1 and abs(m2) <= l2 and abs(m) <= l and abs(l1 - l2) <= l <= l1 + l2
    if m != m1 + m2 or not in_range:
        return sympy.Integer(0)
    phase = 1
    if m < 0:
        m1, m, phase = -m1, -m, (-1) ** (l1 + l2 - l)
    row = _exact_rows_memo(l1, l2, l)[m]
    s = row.signed[m1 - row.m1_lo]
    return phase * sympy.sign(s) * sympy.sqrt(sympy.Rational(abs(s), row.den))


def pattern_values(paths: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """float64 CG values of each path on ``layout.cg_pattern`` order (exact zeros kept), concatenated.

    This is the table a tensor product's kernels index (every (m, m1) of the pattern has a slot, so
    offsets are a pure function of the degrees: ``layout.cg_offsets``). Kept in the persistent disk
    cache, keyed by the path list, so a compiled model rebuilds it at construction instead of
    embedding megabytes of numbers.
    """
    key_paths = tuple(tuple(operator.index(x) for x in p) for p in paths)

    def compute() -> dict[str, np.ndarray]:
        parts = [_pattern_block(*p) for p in key_paths]
        return {"values": np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)}

    return load_or_compute("cg", ("pattern_values", CG_ENGINE_VERSION, key_paths), compute)["values"]


def table_sha256(values: np.ndarray) -> str:
    """The fingerprint of a CG table that a compiled model records and checks when it rebuilds it."""
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<f8").tobytes()).hexdigest()


def _pattern_block(l1: int, l2: int, l: int) -> np.ndarray:
    """One path's block: the nonzero values of ``cg_block`` scattered into the full (m, m1) pattern.

    Both orders are m ascending, then m1 ascending; row m of the pattern starts at m1 = max(-l1, m - l2).
    """
    block = cg_block(l1, l2, l)
    ms = np.arange(-l, l + 1)
    lo = np.maximum(-l1, ms - l2)
    counts = np.maximum(0, np.minimum(l1, ms + l2) - lo + 1)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    row = block.m + l
    out = np.zeros(int(counts.sum()), dtype=np.float64)
    out[start[row] + block.m1 - lo[row]] = block.values
    return out
