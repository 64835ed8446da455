"""Stage 4, Analysis → ModulePlan: every number and literal the template prints, precomputed.

Templates only loop and print (shared/docs/STYLE.md §3.5), so this module decides attribute
names, constructor arguments (as Python literals) and the embedded CG tables. Nothing from the
``.sph`` text reaches the generated file except validated numbers and enum words, and the file
name, which is only ever emitted through ``repr()`` as a string literal.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from dataclasses import dataclass
from functools import singledispatch

import numpy as np

from . import __version__, cache, cg, ir
from .analysis import Analysis, LayerInfo, Path
from .errors import SphcError, SphcInternalError
from .layout import cg_pattern

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


@dataclass(frozen=True)
class LayerPlan:
    attr: str
    ctor: str  # name in sphc.runtime
    kwargs: tuple[tuple[str, str], ...]  # (name, Python literal)
    source: str  # canonical .sph text of the layer, for a comment
    where: str  # "line L, col C" of the source layer (no file name: it is user text)


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


def _layer_plan(info: LayerInfo) -> LayerPlan:
    ctor, kwargs = _ctor(info.layer, info)
    lits = tuple((k, v if isinstance(v, str) and k in _RAW else _lit(v)) for k, v in kwargs.items())
    return LayerPlan(
        attr=f"l{info.index + 1}_{ctor.lower()}",
        ctor=ctor,
        kwargs=lits,
        source=ir.dump_layer(info.layer),
        where=f"line {info.layer.span.line}, col {info.layer.span.col}" if info.layer.span else "",
    )


_RAW = {"paths", "cg", "cols_in", "cols", "cols0"}  # already Python source, not values to repr()


def plan(analysis: Analysis, source: str, file: str) -> ModulePlan:
    """Decide everything the module template prints."""
    try:
        layers = tuple(_layer_plan(x) for x in analysis.layers)
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
        layers=layers,
        tables=tuple(tables),
        params=analysis.params,
    )
