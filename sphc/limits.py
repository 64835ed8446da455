"""How large a model may be, and the estimates of what it allocates, shared by compiler and runtime.

The compiler checks a model's figures against ``size_limits()`` layer by layer before anything of that
size exists (``compiler/analysis.py``); the runtime checks what it builds lazily against the same
limits — the reference backend's per-term tensor-product tables — so a size problem is always a
located error before an allocation, never a MemoryError inside one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from sphc import config
from sphc.layout import cg_pattern_size, next_pow2


@dataclass(frozen=True)
class Limits:
    """What one model may cost before sphc refuses it (README, "Limits").

    Every figure is known from types alone, so ``analyze`` checks it layer by layer, before the plan,
    the generated module or ``Model()`` allocate anything of that size; ``SPHC_LIMIT_SCALE=k`` (or
    ``--limit-scale k``) multiplies them all for models that really are that large.
    """

    #: layers after expansion: the generated module and its import time grow with each one
    layers: float = 2_000
    #: real scalars (a complex weight counts 2)
    params: float = 100_000_000
    #: Clebsch–Gordan coefficients over all tensor products (tables built and stored per entry)
    cg_entries: float = 10_000_000
    #: fragment pairs one tensor product multiplies: the runtime lists them (two tensor products in a
    #: row at L=32 would need > 20 GB of column pairs)
    tp_pairs: float = 2_000_000
    #: float32 bytes per example: every layer's padded output plus each pointwise layer's grid
    activation_bytes: float = 4 * 2**30
    #: bytes of the tables ``Model()`` builds (an estimate from above): the sampling transforms of the
    #: input and every pointwise layer, and each tensor product's per-path tables (``tp_table_bytes``);
    #: the reference backend's per-term tables are built on its first call, against the same limit
    table_bytes: float = 4 * 2**30

    def scaled(self, k: float) -> Limits:
        return Limits(**{f.name: getattr(self, f.name) * k for f in fields(self)})


def size_limits() -> Limits:
    """The limits in force: the defaults times ``SPHC_LIMIT_SCALE`` (sphc/config.py)."""
    return Limits().scaled(config.limit_scale())


#: Bytes per tensor-product term (CG entry × column pair) of the reference backend's index tables:
#: source, destination and coefficient of each term as int64 / float64 (``layers.TensorProduct``;
#: 33–41 bytes per term on the examples, tests/test_limits.py keeps this an upper bound).
TP_TERM_BYTES = 48


def tp_table_bytes(paths, L_out: int | None) -> int:
    """An upper bound on the bytes of a tensor product's tables that ``Model()`` builds.

    ``paths``: (l1, l2, l, pairs, n1, n2) with n1, n2 the columns of its two degrees; ``L_out``: the
    fused projection's bandlimit (the Triton kernel's tables), or None when it is not fused. Counted:
    the CG values (float64 per pattern entry), the fast path's tables (16 bytes per pair, a dense CG
    block per path) and the kernels' (a T1P × T2P column map per path, int64).
    """
    total = 0
    for l1, l2, l, pairs, n1, n2 in paths:
        entries = cg_pattern_size(l1, l2, l)
        block = (2 * min(l1, l2) + 1) * (2 * l + 1)
        total += 8 * entries + 16 * pairs + 8 * block + 64
        if L_out is not None and l < L_out:
            total += 8 * next_pow2(n1) * next_pow2(n2) + 8 * (2 * L_out + 2)
    return total
