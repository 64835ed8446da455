"""Stage 3, IR → Analysis: the type of every signal, the tensor-product paths, and the costs.

Works on types alone (no tensors), like e3nn-jax's shape-only evaluation: for each layer it
computes the incoming and outgoing ``SignalType`` (docs/CONVENTIONS.md §6: channels C, and per degree l
the columns — fragments — it occupies), the CG paths (l1, l2, l) with their column pairs, and
parameter / multiply-add / activation-memory counts. ``sphc explain`` prints this, the planner
turns it into constructor arguments, and the runtime's parameter count is tested against it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import singledispatch

from sphc.compiler import ir
from sphc.compiler.mixing import mixing_set
from sphc.errors import Span, SphcError
from sphc.layout import Cols, cg_pattern_size, pair_count, prefix_cols, s2_cols, so3_cols
from sphc.limits import Limits, size_limits, tp_table_bytes


@dataclass(frozen=True)
class SignalType:
    """A signal between layers. Harmonic: C channels × per-degree columns ``cols``; or features."""

    domain: ir.Domain
    L: int = 0
    C: int = 0
    cols: Cols = ()
    width: int = 1  # T, the padded number of columns in the runtime tensor
    N: int = 0  # azimuthal bandlimit (SO(3) signals only)
    features: int = 0  # real features (after the readout)

    @property
    def tau(self) -> tuple[int, ...]:
        """The paper's type τ: fragments per degree (per channel)."""
        return tuple(len(c) for c in self.cols)

    def summary(self) -> str:
        if self.domain is ir.Domain.FEATURES:
            return f"{self.features} real"
        if self.domain is ir.Domain.S2:
            return f"{self.C}×S² (τ=1)"
        if self.domain is ir.Domain.SO3:
            return f"{self.C}×SO(3) N={self.N} (τ≤{self.width})"
        t = self.tau
        return f"{self.C}×τ[{min(t)}..{max(t)}] Στ={sum(t)}"

    def harmonic_elements(self) -> int:
        """Complex numbers the runtime stores per example (padded layout, docs/CONVENTIONS.md §6)."""
        return self.C * self.L * (2 * self.L - 1) * self.width


def s2_type(L: int, C: int) -> SignalType:
    return SignalType(ir.Domain.S2, L, C, s2_cols(L), 1)


def so3_type(L: int, C: int, N: int) -> SignalType:
    return SignalType(ir.Domain.SO3, L, C, so3_cols(L, N), 2 * N - 1, N=N)


def generalized_type(C: int, taus: tuple[int, ...]) -> SignalType:
    return SignalType(ir.Domain.GENERALIZED, len(taus), C, prefix_cols(taus), max(1, *taus))


@dataclass(frozen=True)
class Path:
    """One CG path: input degrees (l1 <= l2) to output degree l, and how many column pairs it multiplies.

    The pairs themselves (``layout.pair_columns``) are enumerated only by the runtime, which needs
    them; counting them is enough here and keeps the analysis small for fragment-rich inputs.
    """

    l1: int
    l2: int
    l: int
    n_pairs: int
    n1: int = 0  # columns of degree l1 and of l2 in the (merged) input: bounds of the pair grid
    n2: int = 0


@dataclass(frozen=True)
class LayerInfo:
    """Everything known about one layer before any tensor exists."""

    index: int
    layer: ir.Layer
    t_in: SignalType
    t_out: SignalType
    params: int  # real scalars (complex weights count twice), exactly what torch reports
    macs: int  # complex multiply-adds per example (real ones for Dense)
    paths: tuple[Path, ...] = ()
    cg_entries: int = 0  # CG coefficients with m = m1 + m2 that the layer reads

    @property
    def out_bytes(self) -> int:
        """Activation memory per example at float32 (complex64 = 8 bytes) in the padded layout."""
        t = self.t_out
        return 4 * t.features if t.domain is ir.Domain.FEATURES else 8 * t.harmonic_elements()


@dataclass(frozen=True)
class Analysis:
    model: ir.Model
    input_type: SignalType
    layers: tuple[LayerInfo, ...]
    size: ModelSize  # the figures the size limits bound

    @property
    def params(self) -> int:
        return sum(x.params for x in self.layers)


@dataclass(frozen=True)
class ModelSize:
    """The figures ``Limits`` bounds, summed over a model's layers."""

    layers: int = 0
    params: int = 0
    cg_entries: int = 0
    activation_bytes: int = 0
    table_bytes: int = 0


def _rows(L: int) -> int:
    return L * L  # Σ_l (2l+1): harmonic coefficients per fragment column


def _truncate(t: SignalType, L: int) -> SignalType:
    return SignalType(t.domain, L, t.C, t.cols[:L], t.width, t.N)


@singledispatch
def analyze_layer(layer, t: SignalType) -> tuple[SignalType, int, int, tuple[Path, ...], int]:
    """(output type, params, MACs, paths, CG entries) of one layer."""
    raise NotImplementedError(type(layer).__name__)


@analyze_layer.register
def _(layer: ir.S2Conv, t: SignalType):
    out = so3_type(layer.L, layer.C, layer.N)
    per = sum(out.tau)
    macs = t.C * layer.C * sum((2 * l + 1) * k for l, k in enumerate(out.tau))
    return out, t.C * layer.C * per, macs, (), 0  # real filters: one real number per (l, n)


@analyze_layer.register
def _(layer: ir.SO3Conv, t: SignalType):
    out = so3_type(layer.L, layer.C, layer.N)
    per = sum(a * b for a, b in zip(t.tau, out.tau))
    macs = t.C * layer.C * sum((2 * l + 1) * a * b for l, (a, b) in enumerate(zip(t.tau, out.tau)))
    return out, t.C * layer.C * per, macs, (), 0  # real filters: one real number per (l, n, n')


@analyze_layer.register
def _(layer: ir.ZonalConv, t: SignalType):
    return s2_type(layer.L, layer.C), t.C * layer.C * layer.L, t.C * layer.C * _rows(layer.L), (), 0


@analyze_layer.register
def _(layer: ir.Pointwise, t: SignalType):
    # inverse + forward transform on the (oversampled) grid: per m and per column one L×L matmul
    L = t.L * layer.oversample
    columns = 1 if t.domain is ir.Domain.S2 else 2 * min(t.N * layer.oversample, L) - 1
    return t, 0, 2 * t.C * columns * (2 * L - 1) * L * L, (), 0


@analyze_layer.register
def _(layer: ir.TensorProduct, t: SignalType):
    # cross=True (Kondor): all channels' fragments form one generalized signal of C·τ_l columns
    C, per = (1, t.C) if layer.cross else (t.C, 1)
    counts = [per * len(c) for c in t.cols]  # columns per degree, counted not built
    active = [l for l, n in enumerate(counts) if n]
    sets = mixing_set(layer.mix, active, layer.L)
    total = sum(pair_count(l1, counts[l1], l2, counts[l2], l) for l, ps in sets.items() for l1, l2 in ps)
    limit = size_limits().tp_pairs
    if total > limit:  # refused before any path is built
        raise SphcError(
            f"this tensor product would multiply {total:,} pairs of fragments (the limit is {limit:,.0f})",
            layer.span,
            hint="lower L, use mix=mst or rmst, or shrink the fragments first (S2Conv N=..., GenConv tau=...)"
            + _RAISE_HINT,
        )
    paths = [
        Path(l1, l2, l, n, counts[l1], counts[l2])
        for l, ps in sets.items()
        for l1, l2 in ps
        if (n := pair_count(l1, counts[l1], l2, counts[l2], l))
    ]
    taus = [0] * layer.L
    for p in paths:
        taus[p.l] += p.n_pairs
    entries = sum(cg_pattern_size(p.l1, p.l2, p.l) for p in paths)
    macs = C * sum(cg_pattern_size(p.l1, p.l2, p.l) * p.n_pairs for p in paths)
    return generalized_type(C, tuple(taus)), 0, macs, tuple(paths), entries


def _active_taus(t: SignalType, L: int, tau: int) -> tuple[int, ...]:
    """Output degrees exist only where the input has fragments (a linear map of nothing is 0)."""
    return tuple(tau if k else 0 for k in t.tau[:L])


@analyze_layer.register
def _(layer: ir.GenConv, t: SignalType):
    t_in = _truncate(t, layer.L)
    taus = _active_taus(t_in, layer.L, layer.tau)
    live = [l for l, k in enumerate(taus) if k]
    uniform = sum(t_in.tau[l] * layer.tau_u for l in live)
    channel = t.C * len(live) * layer.tau_u * layer.tau
    cross = len(live) * t.C * layer.K
    bias = layer.K * layer.tau if 0 in live else 0
    rows = {l: 2 * l + 1 for l in live}
    macs = sum(
        rows[l] * t.C * (t_in.tau[l] * layer.tau_u + layer.tau_u * layer.tau + layer.K * layer.tau)
        for l in live
    )
    params = 2 * (uniform + channel + cross + bias)
    return generalized_type(layer.K, taus), params, macs, (), 0


@analyze_layer.register
def _(layer: ir.FullGenConv, t: SignalType):
    t_in = _truncate(t, layer.L)
    taus = _active_taus(t_in, layer.L, layer.tau)
    live = [l for l, k in enumerate(taus) if k]
    weights = sum(t.C * t_in.tau[l] * layer.K * layer.tau for l in live)
    bias = layer.K * layer.tau if 0 in live else 0
    macs = sum((2 * l + 1) * t.C * t_in.tau[l] * layer.K * layer.tau for l in live)
    return generalized_type(layer.K, taus), 2 * (weights + bias), macs, (), 0


@analyze_layer.register
def _(layer: ir.Norm, t: SignalType):
    # one learned scale per fragment; on SO(3) signals n and -n share one (docs/CONVENTIONS.md §7.8)
    scales = sum((k + 1) // 2 for k in t.tau) if t.domain is ir.Domain.SO3 else sum(t.tau)
    return t, t.C * scales, t.C * _rows(t.L) * t.width, (), 0


@analyze_layer.register
def _(layer: ir.Invariant, t: SignalType):
    return SignalType(ir.Domain.FEATURES, features=2 * t.C * t.tau[0]), 0, 0, (), 0


@analyze_layer.register
def _(layer: ir.Dense, t: SignalType):
    out = SignalType(ir.Domain.FEATURES, features=layer.n)
    return out, t.features * layer.n + layer.n, t.features * layer.n, (), 0


@analyze_layer.register
def _(layer: ir.SetPool, t: SignalType):
    return t, 0, t.features, (), 0  # one add per feature and element


def analyze(model: ir.Model) -> Analysis:
    """Propagate types through the chain and count everything; pure function of the IR.

    The model's size is checked against ``size_limits()`` after every layer, so an oversized model
    is refused at the layer that crosses a limit, before anything later is built.
    """
    limits = size_limits()
    if len(model.layers) > limits.layers:
        _refuse("layers", len(model.layers), limits.layers, model.layers[int(limits.layers)].span)
    t = s2_type(model.input.L, model.input.C)
    first, infos = t, []
    size = ModelSize(table_bytes=s2_table_bytes(model.input.L, inverse=False))
    for i, layer in enumerate(model.layers):
        out, params, macs, paths, entries = analyze_layer(layer, t)
        info = LayerInfo(i, layer, t, out, params, macs, paths, entries)
        size = check_size(size, info, limits)
        infos.append(info)
        t = out
    return Analysis(model, first, tuple(infos), size)


# --- model-size limits ------------------------------------------------------------------------

_RAISE_HINT = (
    "; if the model really is this large, raise the limits with --limit-scale K or SPHC_LIMIT_SCALE=K"
)

_WHAT = {
    "layers": "layers",
    "params": "parameters",
    "cg_entries": "Clebsch–Gordan entries",
    "activation_bytes": "of activations per example (float32)",
    "table_bytes": "of tables built by Model() (estimated)",
}


_SHORT = {
    "layers": "layers",
    "params": "params",
    "cg_entries": "CG entries",
    "activation_bytes": "activations/example",
    "table_bytes": "Model() tables",
}


def _figure(name: str, value: float) -> str:
    if value == float("inf"):
        return "unlimited"
    if not name.endswith("_bytes"):
        return f"{int(value):,}"
    units, i = ("B", "KiB", "MiB", "GiB", "TiB"), 0
    while value >= 1024 and i < len(units) - 1:
        value, i = value / 1024, i + 1
    return f"{value:,.0f} B" if i == 0 else f"{value:,.1f} {units[i]}"


def _refuse(name: str, value: int, limit: float, span: Span | None) -> None:
    what = f"{_figure(name, value)} {_WHAT[name]}"
    where = "the model has" if name == "layers" else "this layer brings the model to"
    raise SphcError(
        f"{where} {what}; the limit is {_figure(name, limit)}",
        span,
        hint="make the model smaller (C, K, L, N, tau, mix=mst/rmst)" + _RAISE_HINT,
    )


def _pointwise_grid(layer: ir.Pointwise, t: SignalType) -> tuple[int, int]:
    """(L, N) of the grid a pointwise layer samples on: oversampled, N capped at L (runtime layers.py)."""
    L = t.L * layer.oversample
    return L, min(t.N * layer.oversample, L)


def s2_table_bytes(L: int, inverse: bool = True) -> int:
    """float32 bytes of the S² transform tables: one (2L-1, L, L) matrix per direction."""
    return (2 if inverse else 1) * (2 * L - 1) * L * L * 4


def so3_table_bytes(L: int, N: int) -> int:
    """An upper bound on the bytes of the float32 SO(3) tables: Wigner d^l_mn(β) for |n| < N (packed
    by symmetry in the runtime), the β quadrature and the index tables; 1.1–4.2× the runtime's
    ``SO3Tables`` (tests/test_limits.py)."""
    return 4 * ((2 * N - 1) * L**3 + 3 * L * L) + 100 * (2 * N - 1) * (2 * L - 1)


def tp_terms(info: LayerInfo) -> int:
    """CG coefficients times column pairs over a tensor product's paths (exact zeros included)."""
    return sum(cg_pattern_size(p.l1, p.l2, p.l) * p.n_pairs for p in info.paths)


#: Bytes of ``PackedWeight`` index tables per parameter: two int64 slots and two float32 signs per
#: padded weight entry, and at most ~2 padded entries per real parameter (tests/test_limits.py).
WEIGHT_TABLE_BYTES = 48


def _layer_bytes(info: LayerInfo) -> tuple[int, int]:
    """(float32 grid samples per example, bytes of tables ``Model()`` builds) beyond the layer output:
    its transform or kernel tables and its packed weights' index tables (runtime/layers.py)."""
    samples, tables = _grid_and_tables(info)
    if not isinstance(info.layer, ir.Dense):  # Dense is a plain nn.Linear: no index tables
        tables += WEIGHT_TABLE_BYTES * info.params
    return samples, tables


def _grid_and_tables(info: LayerInfo) -> tuple[int, int]:
    if isinstance(info.layer, ir.TensorProduct):  # its kernel tables counted as if fused (a bound)
        paths = [(p.l1, p.l2, p.l, p.n_pairs, p.n1, p.n2) for p in info.paths]
        return 0, tp_table_bytes(paths, info.layer.L)
    if not isinstance(info.layer, ir.Pointwise):
        return 0, 0
    t = info.t_in
    L, N = _pointwise_grid(info.layer, t)
    if t.domain is ir.Domain.S2:
        return 4 * t.C * L * (2 * L - 1), s2_table_bytes(L)
    return 4 * t.C * (2 * N - 1) * L * (2 * L - 1), so3_table_bytes(L, N)


def check_size(size: ModelSize, info: LayerInfo, limits: Limits) -> ModelSize:
    """``size`` plus one layer; a located ``SphcError`` at that layer if a limit is crossed."""
    samples, tables = _layer_bytes(info)
    size = ModelSize(
        size.layers + 1,
        size.params + info.params,
        size.cg_entries + info.cg_entries,
        size.activation_bytes + info.out_bytes + samples,
        size.table_bytes + tables,
    )
    for f in fields(size):
        if getattr(size, f.name) > getattr(limits, f.name):
            _refuse(f.name, getattr(size, f.name), getattr(limits, f.name), info.layer.span)
    return size


def explain_table(a: Analysis) -> str:
    """The per-layer table ``sphc explain`` prints."""
    head = (
        "#",
        "layer",
        "domain in→out",
        "L in→out",
        "type out",
        "paths",
        "CG entries",
        "params",
        "MACs",
        "act/ex",
    )
    rows = [head]
    for x in a.layers:
        L_in = x.t_in.L or "-"
        L_out = x.t_out.L or "-"
        rows.append(
            (
                str(x.index + 1),
                ir.dump_layer(x.layer).split()[0],
                f"{x.t_in.domain.value}→{x.t_out.domain.value}",
                f"{L_in}→{L_out}",
                x.t_out.summary(),
                str(len(x.paths)) if x.paths else "",
                f"{x.cg_entries:,}" if x.cg_entries else "",
                f"{x.params:,}",
                _si(x.macs),
                _bytes(x.out_bytes),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    inp = a.model.input
    shape = f"({inp.C}, {inp.L}, {2 * inp.L - 1})"
    if inp.set:  # every layer before the SetPool runs once per element; act/ex is per element there
        pool = next(x.index + 1 for x in a.layers if isinstance(x.layer, ir.SetPool))
        lines.insert(
            0,
            f"input: a set per example of {inp.C}×S² MW samples, L={inp.L}, shape (elements, {shape[1:]} "
            f"+ a mask; layers 1–{pool - 1} act on each element, layer {pool} pools them",
        )
    else:
        lines.insert(0, f"input: {inp.C}×S² MW samples, L={inp.L}, shape {shape}")
    lines.append(f"total parameters: {a.params:,} (real scalars; a complex weight counts 2)")
    limits, names = size_limits(), [f.name for f in fields(a.size)]
    lines.append("size:   " + " · ".join(f"{_figure(n, getattr(a.size, n))} {_SHORT[n]}" for n in names))
    lines.append(
        "limits: "
        + " · ".join(_figure(n, getattr(limits, n)) for n in names)
        + ' (README "Limits"; --limit-scale K raises them)'
    )
    lines.append(
        "paths = CG (l1,l2,l) triples; MACs = complex multiply-adds per example; act/ex = float32 output"
    )
    return "\n".join(lines)


def compare_table(named: list[tuple[str, Analysis]]) -> str:
    """Several models side by side (``sphc explain a.sph b.sph``): one column per model."""
    rows = [("", *(name for name, _ in named))]
    figures = (
        ("layers", lambda a: f"{len(a.layers):,}"),
        ("parameters", lambda a: f"{a.params:,}"),
        ("CG paths", lambda a: f"{sum(len(x.paths) for x in a.layers):,}"),
        ("CG entries", lambda a: f"{sum(x.cg_entries for x in a.layers):,}"),
        ("MACs/example", lambda a: _si(sum(x.macs for x in a.layers))),
        ("activations/example", lambda a: _figure("activation_bytes", a.size.activation_bytes)),
        ("Model() tables", lambda a: _figure("table_bytes", a.size.table_bytes)),
    )
    rows += [(label, *(value(a) for _, a in named)) for label, value in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in rows
    )


def _si(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _bytes(n: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
