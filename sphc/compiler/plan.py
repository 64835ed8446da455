"""Stage 4, Analysis → ModulePlan: every line and literal the template prints, decided here.

Templates only loop and print, so this module decides attribute names, each layer's constructor
line, the module-level constants (path lists, column types) and the kernel plans. Each layer kind
has one row in each of two tables, both ``singledispatch`` on the IR class like the analysis:

* ``constructor(layer, ctx)`` → the runtime class and its keyword arguments as Python source;
* ``kernel_plans(layer, ctx)`` → the Triton kernel sets the layer needs (``()``: none).

Nothing from the ``.sph`` text reaches the generated file except validated numbers and enum words,
and the file name, which is only ever emitted through ``repr()`` as a string literal. Large tables
are not embedded: a tensor product's CG values are rebuilt at ``Model()`` time from the exact
recursion (``sphc.cg.pattern_values``, disk-cached) and checked against the SHA-256 recorded here, and
its column pairs are re-enumerated from the input type (``sphc.layout.tp_paths``), so the module
grows linearly with the layer count and not with L.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from functools import singledispatch

import numpy as np

from sphc import __version__, cg, layout
from sphc.compiler import ir
from sphc.compiler.analysis import Analysis, LayerInfo, SignalType
from sphc.errors import SphcError, SphcInternalError

#: No generated line is longer than this (constants are wrapped, long constructor calls split).
LINE = 120

#: A fused TP kernel is generated unrolled (every CG value a literal) up to this many non-zero
#: CG entries; larger layers get the table-driven kernel, whose code size does not grow with L.
#: Unrolled code is expensive to compile: for sm_90 (measured on CPU, triton 3.9) 39 entries took
#: 8 s and 66 entries 19 s per config, against ~1 s for a table-driven kernel of any size.
UNROLL_MAX_ENTRIES = 24


@dataclass(frozen=True)
class KernelSpec:
    """One launchable kernel of a layer: a ``rt.Tunable`` in the generated module.

    ``name`` is its key in tuning files; ``function`` the ``@triton.jit`` function it launches;
    ``space`` the attribute of ``sphc.kernel_spaces`` holding its config space; ``key`` the launch
    arguments that select an autotuning-cache entry; ``reset`` outputs zeroed between trials.
    """

    role: str  # keyword of the launcher (fwd, dgrad, wgrad, bwd)
    name: str
    function: str
    space: str
    key: tuple[str, ...]
    reset: tuple[str, ...] = ()
    baked: str | None = None  # an ``rt.Config(...)`` literal from a tuning file (``sphc compile --tuning``)

    @property
    def lines(self) -> tuple[str, ...]:
        """``role=rt.Tunable(...),`` as printed inside the launcher call (baked config on its own line)."""
        head = f"{self.role}=rt.Tunable({json.dumps(self.name)}, {self.function}, rt.{self.space}, key={_tuple(self.key)}"
        if self.reset:
            head += f", reset={_tuple(self.reset)}"
        if self.baked is None:
            return (head + "),",)
        return (head + ",", f"    baked={self.baked},", "    tuned_for=TUNED_FOR,", "),")


def _tuple(names: tuple[str, ...]) -> str:
    """A tuple of names as source, double-quoted like the rest of the module."""
    return "(" + ", ".join(json.dumps(n) for n in names) + ("," if len(names) == 1 else "") + ")"


@dataclass(frozen=True)
class UnrolledEntry:
    m1: int
    m2: int
    coef: str  # repr() of the float64 CG value: round-trips exactly


@dataclass(frozen=True)
class UnrolledPath:
    p: int  # index among the kernel's paths (``layout.kernel_paths`` order)
    l1: int
    l2: int
    rows: tuple[tuple[UnrolledEntry, ...], ...]  # per order of the degree, aligned with mms


@dataclass(frozen=True)
class UnrolledDegree:
    l: int
    mms: tuple[int, ...]  # output rows L_out-1+m for |m| <= l
    paths: tuple[UnrolledPath, ...]


@dataclass(frozen=True)
class KernelPlan:
    """The kernels of one layer (or one step of it): what to emit and how to register it.

    ``sources`` are the templates (under ``templates/kernels/``) to render just before this plan's
    registration: a shared family's source appears once per module, with the first plan that needs
    it; its kernels take every shape as a ``tl.constexpr`` argument, so Triton still compiles one
    specialisation per layer. ``unrolled`` holds the literal CG entries of a per-layer unrolled kernel.
    """

    name: str  # registry name: the layer's attribute, or attribute + "_u" for GenConv's uniform step
    launcher: str  # runtime launcher class: "LinearKernels" or "TPKernels"
    specs: tuple[KernelSpec, ...]
    sources: tuple[str, ...] = ()
    unrolled: tuple[UnrolledDegree, ...] = ()


@dataclass(frozen=True)
class LayerPlan:
    attr: str
    lines: tuple[str, ...]  # the constructor statement with its source line as a comment (no file name)
    call: str | None  # the forward statement's right-hand side; None when fused into the next layer


@dataclass(frozen=True)
class Constant:
    """Module-level constants a layer reads: a comment and the statements, long literals wrapped."""

    comment: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class ModulePlan:
    version: str
    source_sha256: str
    file_literal: str
    canonical: tuple[str, ...]
    input_shape: tuple[int, int, int]
    input_where: str
    input_set: bool  # the input is a set per example: forward(x, mask) and a SetPool
    layers: tuple[LayerPlan, ...]
    constants: tuple[Constant, ...]
    kernels: tuple[KernelPlan, ...]
    params: int
    tuned_for: str = "None"  # literal of TUNED_FOR: the GPU, dtype and batch of a baked tuning file


# --- what one layer's rows see ---------------------------------------------------------------------


@dataclass
class Context:
    """One layer's analysis plus what its neighbours decide (fusion) and what it adds to the module."""

    info: LayerInfo
    attr: str
    fused_next: bool  # a TensorProduct whose product the next GenConv contracts at once (the efficient layer)
    fused_prev: str | None  # a GenConv after such a TensorProduct: that layer's attribute
    next_layer: ir.Layer | None
    in_set: bool  # between a set input and its SetPool: every batch entry is one element
    constants: list[Constant]

    def constant(self, stem: str, comment: str, lines: tuple[str, ...]) -> str:
        """Define ``<stem>_<layer number> = <lines>`` in the module (after the model); its name."""
        name = f"{stem}_{self.info.index + 1}"
        self.constants.append(Constant(f"{self.attr}: {comment}", (f"{name} = {lines[0]}", *lines[1:])))
        return name

    def cols(self, t: SignalType) -> str:
        """Source of the runtime's column sets of type ``t`` (short inline, long as a constant)."""
        if t.domain is ir.Domain.S2:
            return f"rt.s2_cols({t.L})"
        if t.domain is ir.Domain.SO3:
            return f"rt.so3_cols({t.L}, {t.N})"
        text = f"rt.prefix_cols({tuple(t.tau)!r})"
        if len(text) <= 48:
            return text
        body = wrap([f"{n}," for n in t.tau], indent=4)
        return self.constant("COLS", "columns per degree of its input", ("rt.prefix_cols((", *body, "))"))


def wrap(items: list[str], indent: int) -> tuple[str, ...]:
    """Items joined by spaces into lines of at most LINE characters."""
    lines, line = [], " " * indent
    for item in items:
        if len(line) + len(item) + 1 > LINE and line.strip():
            lines.append(line.rstrip())
            line = " " * indent
        line += item + " "
    if line.strip():
        lines.append(line.rstrip())
    return tuple(lines)


def call_lines(
    head: str, kwargs: dict[str, str], indent: int, notes: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """``head(k=v, ...)`` on one line with the first note that fits as a trailing comment; else the
    arguments on one line of their own, else one per line (with the shortest note after the head)."""
    args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    one = f"{head}({args})"
    for note in notes:
        if indent + len(one) + len(note) + 4 <= LINE:
            return (f"{one}  # {note}",)
    first = f"{head}(" + (f"  # {notes[-1]}" if notes else "")
    if indent + 4 + len(args) <= LINE:
        return (first, f"    {args}", ")")
    return (first, *(f"    {k}={v}," for k, v in kwargs.items()), ")")


# --- row 1: the runtime constructor ----------------------------------------------------------------


@singledispatch
def constructor(layer, ctx: Context) -> tuple[str, dict[str, str]]:
    """(runtime class, keyword → Python source) of one layer."""
    raise SphcInternalError(f"no runtime constructor for {type(layer).__name__}")


@constructor.register
def _(layer: ir.S2Conv, ctx: Context):
    t = ctx.info.t_in
    return "S2Conv", _ints(C_in=t.C, C=layer.C, L_in=t.L, L=layer.L, N=layer.N)


@constructor.register
def _(layer: ir.SO3Conv, ctx: Context):
    t = ctx.info.t_in
    return "SO3Conv", _ints(C_in=t.C, C=layer.C, L_in=t.L, N_in=t.N, L=layer.L, N=layer.N)


@constructor.register
def _(layer: ir.ZonalConv, ctx: Context):
    t = ctx.info.t_in
    return "ZonalConv", _ints(C_in=t.C, C=layer.C, L_in=t.L, L=layer.L)


@constructor.register
def _(layer: ir.Pointwise, ctx: Context):
    t = ctx.info.t_in
    act = {"act": json.dumps(layer.act.value), "oversample": repr(layer.oversample)}
    if t.domain is ir.Domain.S2:
        return "S2Pointwise", {"L": repr(t.L), **act}
    return "SO3Pointwise", {"L": repr(t.L), "N": repr(t.N), **act}


@constructor.register
def _(layer: ir.TensorProduct, ctx: Context):
    t, info = ctx.info.t_in, ctx.info
    triples = tuple((p.l1, p.l2, p.l) for p in info.paths)
    body = wrap([f"({a}, {b}, {c})," for a, b, c in triples], indent=4)
    paths = ctx.constant("PATHS", f"(l1, l2, l) of its {len(triples)} CG paths", ("(", *body, ")"))
    sha = json.dumps(cg.table_sha256(_cg_values(triples)))
    sha = ctx.constant("CG", "SHA-256 of their CG values (rebuilt, then checked, by the model)", (sha,))
    kwargs = {"C": repr(t.C), "cols_in": ctx.cols(t), "L": repr(layer.L), "paths": paths, "cg_sha256": sha}
    if layer.cross:
        kwargs["cross"] = "True"
    if ctx.fused_next:
        gc = ctx.next_layer
        kwargs["project"] = repr((gc.L, gc.tau_u))
    return "TensorProduct", kwargs


@constructor.register
def _(layer: ir.GenConv, ctx: Context):
    t = ctx.info.t_in
    kw = {"C": repr(t.C), "K": repr(layer.K), "cols_in": ctx.cols(t), "L": repr(layer.L)}
    return "GenConv", {**kw, "tau": repr(layer.tau), "tau_u": repr(layer.tau_u)}


@constructor.register
def _(layer: ir.FullGenConv, ctx: Context):
    t = ctx.info.t_in
    kw = {"C": repr(t.C), "K": repr(layer.K), "cols_in": ctx.cols(t), "L": repr(layer.L)}
    return "FullGenConv", {**kw, "tau": repr(layer.tau)}


@constructor.register
def _(layer: ir.Norm, ctx: Context):
    t = ctx.info.t_in
    kwargs = {"C": repr(t.C), "cols": ctx.cols(t), "eps": repr(layer.eps), "momentum": repr(layer.momentum)}
    if t.domain is ir.Domain.SO3:
        kwargs["mirror"] = "True"  # γ shared by n and -n: real SO(3) signals stay real
    return "Norm", kwargs


@constructor.register
def _(layer: ir.Invariant, ctx: Context):
    return "Invariant", {"cols": ctx.cols(ctx.info.t_in)}


@constructor.register
def _(layer: ir.Dense, ctx: Context):
    kw = {"n_in": repr(ctx.info.t_in.features), "n": repr(layer.n), "act": json.dumps(layer.act.value)}
    return "Dense", {**kw, "dropout": repr(layer.dropout)}


@constructor.register
def _(layer: ir.SetPool, ctx: Context):
    return "SetPool", {"mean": repr(layer.mean)}


def _ints(**values: int) -> dict[str, str]:
    return {k: repr(v) for k, v in values.items()}


@functools.lru_cache(maxsize=8)  # the constructor row and the kernel row both read a layer's table
def _cg_values(triples: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    return cg.pattern_values(triples)


# --- row 2: the kernels ----------------------------------------------------------------------------

LINEAR_SOURCE = "kernels/linear.py.j2"
TP_SOURCE = "kernels/tp.py.j2"
TP_UNROLLED_SOURCE = "kernels/tp_unrolled.py.j2"


def linear_kernels(name: str) -> KernelPlan:
    """A per-degree complex linear map (``templates/kernels/linear.py.j2``, shared by every layer)."""
    rows = ("ROWS_BUCKET",)
    return KernelPlan(
        name,
        "LinearKernels",
        (
            KernelSpec("fwd", f"{name}_fwd", "degree_gemm", "ROWGEMM_SPACE", rows),
            KernelSpec("dgrad", f"{name}_dgrad", "degree_gemm", "ROWGEMM_SPACE", rows),
            KernelSpec("wgrad", f"{name}_wgrad", "degree_wgrad", "WGRAD_SPACE", (*rows, "SPLIT")),
        ),
        (LINEAR_SOURCE,),
    )


@singledispatch
def kernel_plans(layer, ctx: Context) -> tuple[KernelPlan, ...]:
    """The kernel sets one layer needs (a row per layer kind; ``()`` means it runs torch ops only)."""
    raise SphcInternalError(f"no kernel row for {type(layer).__name__}")


def _no_kernels(layer, ctx: Context) -> tuple[KernelPlan, ...]:
    return ()


for _kind in (ir.Pointwise, ir.Norm, ir.Invariant, ir.Dense, ir.SetPool):
    kernel_plans.register(_kind, _no_kernels)


@kernel_plans.register(ir.S2Conv)
@kernel_plans.register(ir.SO3Conv)
@kernel_plans.register(ir.ZonalConv)
@kernel_plans.register(ir.FullGenConv)
def _(layer, ctx: Context):
    return (linear_kernels(ctx.attr),)


@kernel_plans.register
def _(layer: ir.GenConv, ctx: Context):
    if ctx.fused_prev:  # the uniform step lives in the tensor product's fused kernel
        return (linear_kernels(ctx.attr),)
    return (linear_kernels(ctx.attr + "_u"), linear_kernels(ctx.attr))


@kernel_plans.register
def _(layer: ir.TensorProduct, ctx: Context):
    if not ctx.fused_next:  # only the fused TensorProduct → GenConv has a kernel
        return ()
    triples = tuple((p.l1, p.l2, p.l) for p in ctx.info.paths)
    unrolled = _unrolled(triples, _cg_values(triples), ctx.next_layer.L)
    fwd, bwd = (f"{ctx.attr}_tp_fwd", f"{ctx.attr}_tp_bwd") if unrolled else ("tp_fwd", "tp_bwd")
    specs = (
        KernelSpec("fwd", f"{ctx.attr}_fwd", fwd, "TP_SPACE", ("BC",)),
        KernelSpec("bwd", f"{ctx.attr}_bwd", bwd, "TP_SPACE", ("BC",), reset=("gx_ptr", "gw_ptr")),
    )
    sources = (TP_SOURCE, TP_UNROLLED_SOURCE) if unrolled else (TP_SOURCE,)
    return (KernelPlan(ctx.attr, "TPKernels", specs, sources, unrolled),)


def _unrolled(triples: tuple, cg_values: np.ndarray, L_out: int) -> tuple[UnrolledDegree, ...]:
    """Every output row's CG entries as literals, or () when the layer is too large to unroll."""
    offsets = layout.cg_offsets(triples)
    kept = layout.kernel_paths(triples, L_out)
    spans = [(offsets[p], layout.cg_pattern_size(*p)) for p in kept]
    if sum(np.count_nonzero(cg_values[a : a + n]) for a, n in spans) > UNROLL_MAX_ENTRIES:
        return ()  # decided before building anything: large layers have ~10^5-10^7 entries
    rows: dict[tuple[int, int], list[UnrolledEntry]] = {}
    for p, ((l1, l2, l), (a, n)) in enumerate(zip(kept, spans)):
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
            for p, (l1, l2, lp) in enumerate(kept)
            if lp == l
        )
        degrees.append(UnrolledDegree(l, mms, ps))
    return tuple(degrees)


# --- the module ---------------------------------------------------------------------------------


def attribute(info: LayerInfo) -> str:
    """``l<position>_<kind>``: the layer's attribute, parameter prefix and kernel-registry name."""
    return f"l{info.index + 1}_{type(info.layer).__name__.lower()}"


def _contexts(infos: tuple[LayerInfo, ...], in_set: bool) -> list[Context]:
    """One context per layer, with the fusion decision (a TensorProduct feeding a GenConv is fused)
    and whether it acts on the elements of a set input (``in_set``: the model's input is a set)."""
    out: list[Context] = []
    for n, info in enumerate(infos):
        nxt = infos[n + 1].layer if n + 1 < len(infos) else None
        fused_next = isinstance(info.layer, ir.TensorProduct) and isinstance(nxt, ir.GenConv)
        prev = out[-1] if out else None
        fused_prev = prev.attr if prev and prev.fused_next else None
        out.append(Context(info, attribute(info), fused_next, fused_prev, nxt, in_set, []))
        in_set = in_set and not isinstance(info.layer, ir.SetPool)
    return out


def _layer_plan(ctx: Context) -> LayerPlan:
    ctor, kwargs = constructor(ctx.info.layer, ctx)
    span = ctx.info.layer.span
    call = None if ctx.fused_next else f"self.{ctx.attr}(x)"
    if isinstance(ctx.info.layer, ir.SetPool) or (isinstance(ctx.info.layer, ir.Norm) and ctx.in_set):
        call = f"self.{ctx.attr}(x, members)"  # which elements of the set input are real
    if ctx.fused_prev:
        call = f"self.{ctx.attr}.after(self.{ctx.fused_prev}, x)"
    source = ir.dump_layer(ctx.info.layer)
    notes = (
        (f"line {span.line}: {source}", f"line {span.line}, col {span.col}", f"line {span.line}")
        if span
        else ()
    )
    return LayerPlan(
        attr=ctx.attr, lines=call_lines(f"self.{ctx.attr} = rt.{ctor}", kwargs, 8, notes), call=call
    )


def _with_sources_once(plans: list[KernelPlan]) -> tuple[KernelPlan, ...]:
    """Each shared source is emitted with the first plan that needs it, never twice."""
    seen: set[str] = set()
    out = []
    for k in plans:
        shared = tuple(s for s in k.sources if s == TP_UNROLLED_SOURCE or s not in seen)
        seen.update(k.sources)
        out.append(KernelPlan(k.name, k.launcher, k.specs, shared, k.unrolled))
    return tuple(out)


def _grouped(constants: list[Constant]) -> Constant:
    """One layer's constants as one block (no blank lines between), each after its comment."""
    lines = [line for c in constants[1:] for line in (f"# {c.comment}", *c.lines)]
    return Constant(constants[0].comment, (*constants[0].lines, *lines))


def plan(analysis: Analysis, source: str, file: str) -> ModulePlan:
    """Decide everything the module template prints."""
    try:
        contexts = _contexts(analysis.layers, analysis.model.input.set)
        layers = [_layer_plan(c) for c in contexts]
        kernels = [k for c in contexts for k in kernel_plans(c.info.layer, c)]
    except SphcError as e:
        raise e.with_source(source) from None
    inp = analysis.model.input
    return ModulePlan(
        version=__version__,
        source_sha256=hashlib.sha256(source.encode()).hexdigest(),
        file_literal=repr(file),
        canonical=tuple(ir.dump(analysis.model).splitlines()),
        input_shape=(inp.C, inp.L, 2 * inp.L - 1),
        input_where=repr((inp.span.file, inp.span.line, inp.span.col)) if inp.span else "None",
        input_set=inp.set,
        layers=tuple(layers),
        constants=tuple(_grouped(ctx.constants) for ctx in contexts if ctx.constants),
        kernels=_with_sources_once(kernels),
        params=analysis.params,
    )
