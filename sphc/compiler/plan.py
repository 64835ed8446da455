"""Stage 4, Analysis → ModulePlan: every number and literal the template prints, precomputed.

Templates only loop and print (shared/docs/STYLE.md §3.5), so this module decides attribute
names, constructor arguments (as Python literals) and the embedded CG tables. Nothing from the
``.sph`` text reaches the generated file except validated numbers and enum words, and the file
name, which is only ever emitted through ``repr()`` as a string literal.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import zlib
from dataclasses import dataclass
from functools import singledispatch

import numpy as np

from sphc import __version__, cache, cg, layout
from sphc.compiler import ir
from sphc.compiler.analysis import Analysis, LayerInfo, Path
from sphc.errors import SphcError, SphcInternalError
from sphc.layout import cg_pattern

#: Bump when the layout of embedded CG tables changes (part of their disk-cache key).
TABLE_FORMAT = 1


@dataclass(frozen=True)
class TablePlan:
    """A float64 table embedded in the generated module as zlib + base64 text."""

    name: str
    count: int
    sha256: str
    chunks: tuple[str, ...]  # the base64 text cut into lines
    comment: str


def _tunable_kwargs(baked: tuple[tuple[str, str], ...], name: str) -> str:
    """Extra ``launch.Tunable`` arguments of kernel ``name``: its baked config, if a tuning file has one."""
    literal = dict(baked).get(name)
    return "" if literal is None else f", baked={literal}, tuned_for=TUNED_FOR"


@dataclass(frozen=True)
class LinearKernelPlan:
    """Constants baked into one layer's per-degree linear kernels (``templates/triton_linear.py.j2``).

    The op is ``y[b,k,l,m,v] = Σ_{c,t} x[b,c,l,m,t] w[l,c,t,k,v]`` for l < L, |m| <= l.
    """

    prefix: str  # kernel name prefix, a Python identifier (e.g. "l3_genconv")
    L: int
    C: int  # input channels
    T: int  # input columns per channel
    K: int  # output channels
    V: int  # output columns per channel
    baked: tuple[tuple[str, str], ...] = ()  # kernel name → rt.Config literal (sphc compile --tuning)

    def tunable_kwargs(self, name: str) -> str:
        return _tunable_kwargs(self.baked, name)


#: A fused TP kernel is generated unrolled (every CG value a literal) up to this many non-zero
#: CG entries; larger layers get the table-driven kernel, whose code size does not grow with L.
#: Unrolled code is expensive to compile: for sm_90 (measured on CPU, triton 3.9) 39 entries took
#: 8 s and 66 entries 19 s per config, against ~1 s for a table-driven kernel of any size.
UNROLL_MAX_ENTRIES = 24


@dataclass(frozen=True)
class UnrolledEntry:
    m1: int
    m2: int
    coef: str  # repr() of the float64 CG value: round-trips exactly


@dataclass(frozen=True)
class UnrolledPath:
    p: int  # index among the kernel's paths (layout.kernel_paths order)
    l1: int
    l2: int
    rows: tuple[tuple[UnrolledEntry, ...], ...]  # per order of the degree, aligned with mms


@dataclass(frozen=True)
class UnrolledDegree:
    l: int
    mms: tuple[int, ...]  # output rows L_out-1+m for |m| <= l
    paths: tuple[UnrolledPath, ...]


@dataclass(frozen=True)
class TPKernelPlan:
    """Constants baked into a fused TensorProduct + GenConv-uniform kernel (``templates/triton_tp.py.j2``)."""

    prefix: str
    L_in: int
    T_in: int  # input columns (channels merged in for cross=True)
    L_out: int  # the GenConv's bandlimit: degrees the projection keeps
    U: int  # tau_u
    UP: int  # U rounded up to a power of two
    T1P: int  # max first-factor columns of a path, power of two
    T2P: int
    n_paths: int
    unrolled: tuple[UnrolledDegree, ...] = ()  # empty: the table-driven kernel
    baked: tuple[tuple[str, str], ...] = ()  # kernel name → rt.Config literal (sphc compile --tuning)

    def tunable_kwargs(self, name: str) -> str:
        return _tunable_kwargs(self.baked, name)


def _unrolled(paths: tuple, cg_values: np.ndarray, L_out: int) -> tuple[UnrolledDegree, ...]:
    """Every output row's CG entries as literals, or () when the layer is too large to unroll."""
    offsets = layout.cg_offsets(paths)
    kept = layout.kernel_paths(paths, L_out)
    spans = [(offsets[p[:3]], layout.cg_pattern_size(*p[:3])) for p in kept]
    if sum(np.count_nonzero(cg_values[a : a + n]) for a, n in spans) > UNROLL_MAX_ENTRIES:
        return ()  # decided before building anything: large layers have ~10^5-10^7 entries
    rows: dict[tuple[int, int], list[UnrolledEntry]] = {}
    for p, ((l1, l2, l, _), (a, n)) in enumerate(zip(kept, spans)):
        m, m1 = layout.cg_pattern(l1, l2, l)
        for mi, m1i, v in zip(m.tolist(), m1.tolist(), cg_values[a : a + n].tolist()):
            entries = rows.setdefault((p, mi), [])
            if v != 0.0:  # exact zeros (parity) are skipped: the point of unrolling
                entries.append(UnrolledEntry(m1i, mi - m1i, repr(float(v))))
    degrees = []
    for l in range(L_out):
        mms = tuple(L_out - 1 + m for m in range(-l, l + 1))
        ps = tuple(
            UnrolledPath(p, l1, l2, tuple(tuple(rows[(p, m)]) for m in range(-l, l + 1)))
            for p, (l1, l2, lp, _) in enumerate(kept)
            if lp == l
        )
        degrees.append(UnrolledDegree(l, mms, ps))
    return tuple(degrees)


@dataclass(frozen=True)
class LayerPlan:
    attr: str
    ctor: str  # name in sphc.runtime
    kwargs: tuple[tuple[str, str], ...]  # (name, Python literal)
    source: str  # canonical .sph text of the layer, for a comment
    where: str  # "line L, col C" of the source layer (no file name: it is user text)
    call: str | None  # the forward statement's right-hand side; None when fused into the next layer


@dataclass(frozen=True)
class ModulePlan:
    version: str
    source_sha256: str
    file_literal: str
    canonical: tuple[str, ...]
    input_shape: tuple[int, int, int]
    input_where: str
    layers: tuple[LayerPlan, ...]
    tables: tuple[TablePlan, ...]
    params: int
    tp_kernels: tuple[TPKernelPlan, ...]
    linear_kernels: tuple[LinearKernelPlan, ...]
    tuned_for: str = "None"  # literal of TUNED_FOR: the GPU, dtype and batch of a baked tuning file


@functools.lru_cache(maxsize=8)  # the plan reads a layer's table twice (kernel plan, embedded table)
def _structural_values(paths: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    """CG values on ``layout.cg_pattern`` of each path (zeros kept), disk-cached by the path list."""

    def compute() -> dict[str, np.ndarray]:
        parts = []
        for l1, l2, l in paths:
            m, m1 = cg_pattern(l1, l2, l)
            block = cg.cg_block(l1, l2, l)
            lookup = dict(zip(zip(block.m.tolist(), block.m1.tolist()), block.values.tolist()))
            parts.append(np.array([lookup.get(k, 0.0) for k in zip(m.tolist(), m1.tolist())]))
        return {"values": np.concatenate(parts) if parts else np.zeros(0)}

    key = ("structural", TABLE_FORMAT, cg.CG_ENGINE_VERSION, paths)
    return cache.load_or_compute("cg-tables", key, compute)["values"]


def _table(name: str, values: np.ndarray, comment: str) -> TablePlan:
    raw = np.ascontiguousarray(values, dtype="<f8").tobytes()
    text = base64.b64encode(zlib.compress(raw, 9)).decode("ascii")
    chunks = tuple(text[i : i + 96] for i in range(0, len(text), 96)) or ("",)
    return TablePlan(name, len(values), hashlib.sha256(raw).hexdigest(), chunks, comment)


def _lit(value: object) -> str:
    return repr(value)


def _paths_literal(paths: tuple[Path, ...]) -> str:
    return repr(tuple((p.l1, p.l2, p.l, p.pairs) for p in paths))


@singledispatch
def _ctor(layer, info: LayerInfo) -> tuple[str, dict[str, object]]:
    raise SphcInternalError(f"no runtime constructor for {type(layer).__name__}")


@_ctor.register
def _(layer: ir.Pointwise, info):
    t = info.t_in
    return "Pointwise", {
        "domain": t.domain.value,
        "L": t.L,
        "N": t.N if t.domain is ir.Domain.SO3 else 1,
        "act": layer.act.value,
        "oversample": layer.oversample,
    }


@_ctor.register
def _(layer: ir.S2Conv, info):
    return "S2Conv", {"C_in": info.t_in.C, "C": layer.C, "L_in": info.t_in.L, "L": layer.L, "N": layer.N}


@_ctor.register
def _(layer: ir.SO3Conv, info):
    t = info.t_in
    return "SO3Conv", {"C_in": t.C, "C": layer.C, "L_in": t.L, "N_in": t.N, "L": layer.L, "N": layer.N}


@_ctor.register
def _(layer: ir.ZonalConv, info):
    return "ZonalConv", {"C_in": info.t_in.C, "C": layer.C, "L_in": info.t_in.L, "L": layer.L}


@_ctor.register
def _(layer: ir.TensorProduct, info):
    t, out = info.t_in, info.t_out
    return "TensorProduct", {
        "C": t.C,
        "L_in": t.L,
        "width_in": t.width,
        "L": layer.L,
        "width": out.width,
        "paths": _paths_literal(info.paths),
        "cg": f"CG_{info.index + 1}",
        "cross": layer.cross,
    }


def _generalized_conv(layer: ir.GenConv | ir.FullGenConv, info: LayerInfo) -> dict[str, object]:
    """Arguments both generalized convolutions take: input layout, output channels and type."""
    t = info.t_in
    return {
        "C": t.C,
        "K": layer.K,
        "L_in": t.L,
        "width_in": t.width,
        "cols_in": repr(t.cols[: layer.L]),
        "L": layer.L,
        "tau": layer.tau,
    }


@_ctor.register
def _(layer: ir.GenConv, info):
    return "GenConv", {**_generalized_conv(layer, info), "tau_u": layer.tau_u}


@_ctor.register
def _(layer: ir.FullGenConv, info):
    return "FullGenConv", _generalized_conv(layer, info)


@_ctor.register
def _(layer: ir.Norm, info):
    t = info.t_in
    return "Norm", {
        "C": t.C,
        "cols": repr(t.cols),
        "width": t.width,
        "eps": layer.eps,
        "momentum": layer.momentum,
    }


@_ctor.register
def _(layer: ir.Invariant, info):
    return "Invariant", {"cols0": repr(info.t_in.cols[0])}


@_ctor.register
def _(layer: ir.Dense, info):
    return "Dense", {
        "n_in": info.t_in.features,
        "n": layer.n,
        "act": layer.act.value,
        "dropout": layer.dropout,
    }


def _layer_plan(info: LayerInfo, extra: dict[str, object], call: str | None) -> LayerPlan:
    ctor, kwargs = _ctor(info.layer, info)
    kwargs.update(extra)
    lits = tuple((k, v if isinstance(v, str) and k in _RAW else _lit(v)) for k, v in kwargs.items())
    return LayerPlan(
        attr=_attr(info, ctor),
        ctor=ctor,
        kwargs=lits,
        source=ir.dump_layer(info.layer),
        where=f"line {info.layer.span.line}, col {info.layer.span.col}" if info.layer.span else "",
        call=call,
    )


def _attr(info: LayerInfo, ctor: str) -> str:
    return f"l{info.index + 1}_{ctor.lower()}"


def _key(prefix: str) -> str:
    """Source of the kernel-registry key: unique per generated module and layer."""
    return f'__name__ + ".{prefix}"'


_RAW = {"paths", "cg", "cols_in", "cols", "cols0", "key", "key_uniform"}  # Python source, not values


def _linear(prefix: str, L: int, C: int, T: int, K: int, V: int) -> LinearKernelPlan:
    return LinearKernelPlan(prefix=prefix, L=L, C=C, T=T, K=K, V=V)


def _kernels(
    infos: tuple[LayerInfo, ...],
) -> tuple[list[LayerPlan], list[TPKernelPlan], list[LinearKernelPlan]]:
    """Layer plans plus the kernels to generate: one per-degree linear kernel set per linear layer,
    and a fused TP kernel wherever a TensorProduct feeds a GenConv (the efficient layer)."""
    layers, tps, linears = [], [], []
    for n, info in enumerate(infos):
        layer, t = info.layer, info.t_in
        attr = _attr(info, _ctor(layer, info)[0])
        nxt = infos[n + 1] if n + 1 < len(infos) else None
        extra: dict[str, object] = {}
        call: str | None = f"self.{attr}(x)"
        if isinstance(layer, ir.TensorProduct) and nxt is not None and isinstance(nxt.layer, ir.GenConv):
            gc = nxt.layer
            shape = layout.tp_shape(t.L, t.width * (t.C if layer.cross else 1), gc.L, gc.tau_u, _paths(info))
            paths = _paths(info)
            cg_values = _structural_values(tuple(p[:3] for p in paths))
            unrolled = _unrolled(paths, cg_values, gc.L)
            tps.append(TPKernelPlan(attr, UP=layout.pow2(gc.tau_u), **vars(shape), unrolled=unrolled))
            extra = {"project": (gc.L, gc.tau_u), "key": _key(attr)}
            call = None
        elif isinstance(layer, ir.TensorProduct):  # no kernel: the key only names it in the warning
            extra = {"key": _key(attr)}
        elif isinstance(layer, ir.GenConv):
            prev = infos[n - 1].layer if n else None
            linears.append(_linear(attr, layer.L, t.C, layer.tau_u, layer.K, layer.tau))
            extra = {"key": _key(attr)}
            if isinstance(prev, ir.TensorProduct):
                call = f"self.{attr}.after(self.{layers[-1].attr}, x)"
            else:
                linears.append(_linear(attr + "_u", layer.L, 1, t.width, 1, layer.tau_u))
                extra["key_uniform"] = _key(attr + "_u")
        elif isinstance(layer, ir.FullGenConv):
            linears.append(_linear(attr, layer.L, t.C, t.width, layer.K, layer.tau))
            extra = {"key": _key(attr)}
        elif isinstance(layer, ir.S2Conv):
            linears.append(_linear(attr, layer.L, t.C, 1, layer.C, 2 * layer.N - 1))
            extra = {"key": _key(attr)}
        elif isinstance(layer, ir.SO3Conv):
            linears.append(_linear(attr, layer.L, t.C, 2 * t.N - 1, layer.C, 2 * layer.N - 1))
            extra = {"key": _key(attr)}
        elif isinstance(layer, ir.ZonalConv):
            linears.append(_linear(attr, layer.L, t.C, 1, layer.C, 1))
            extra = {"key": _key(attr)}
        layers.append(_layer_plan(info, extra, call))
    return layers, tps, linears


def _paths(info: LayerInfo) -> tuple:
    return tuple((p.l1, p.l2, p.l, p.pairs) for p in info.paths)


def plan(analysis: Analysis, source: str, file: str) -> ModulePlan:
    """Decide everything the module template prints."""
    try:
        layers, tps, linears = _kernels(analysis.layers)
    except SphcError as e:
        raise e.with_source(source) from None
    tables = []
    for x in analysis.layers:
        if isinstance(x.layer, ir.TensorProduct):
            paths = tuple((p.l1, p.l2, p.l) for p in x.paths)
            note = f"layer {x.index + 1}: CG values of {len(paths)} paths on layout.cg_pattern order"
            tables.append(_table(f"CG_{x.index + 1}", _structural_values(paths), note))
    inp = analysis.model.input
    return ModulePlan(
        version=__version__,
        source_sha256=hashlib.sha256(source.encode()).hexdigest(),
        file_literal=repr(file),
        canonical=tuple(ir.dump(analysis.model).splitlines()),
        input_shape=(inp.C, inp.L, 2 * inp.L - 1),
        input_where=repr((inp.span.file, inp.span.line, inp.span.col)) if inp.span else "None",
        layers=tuple(layers),
        tables=tuple(tables),
        params=analysis.params,
        tp_kernels=tuple(tps),
        linear_kernels=tuple(linears),
    )
