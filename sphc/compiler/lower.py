"""Stage 2, AST → IR: resolve names and defaults, check every value, follow the signal's shape.

One table (``LAYERS``) says which layers exist, which parameters each takes, which may be given
positionally, and what their defaults are; ``sphc explain --help`` and the README's language
reference are written from it. Each layer kind then has one small ``_build_*`` function that
turns checked arguments plus the incoming signal shape into an IR node, raising a located
``SphcError`` for anything impossible (wrong domain, growing bandlimit, ...).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum

from sphc.compiler import ir
from sphc.compiler.syntax import Arg, LayerNode, ModelAST
from sphc.errors import Span, SphcError


@dataclass(frozen=True)
class Param:
    """One layer parameter: its type, default (None = inherited from the incoming signal), doc."""

    name: str
    kind: type | tuple[str, ...]  # int, float, bool, or the allowed words of an enum
    doc: str
    default: object = None
    minimum: float | None = None
    maximum: float | None = None  # exclusive upper bound


@dataclass(frozen=True)
class LayerSpec:
    params: tuple[Param, ...]
    positional: tuple[str, ...]
    doc: str


def _words(enum: type[Enum]) -> tuple[str, ...]:
    return tuple(e.value for e in enum)


# The range of every integer literal (README, "Limits"). They only keep each value sane; what a
# whole model may cost (parameters, memory, layers) is checked by analysis.check_size.
#: Largest bandlimit the language accepts (analysis and CG tables grow like L^3 and worse).
MAX_L = 256
#: Most channels (C, K) or features (Dense n) of one layer.
MAX_CHANNELS = 65_536
#: Most fragments per degree and channel a generalized convolution may output (tau, tau_u).
MAX_TAU = 1_024

_C = Param("C", int, "output channels (default: input channels)", minimum=1, maximum=MAX_CHANNELS + 1)
_L = Param(
    "L",
    int,
    "output bandlimit, degrees 0..L-1 (default: input L; may not grow)",
    minimum=1,
    maximum=MAX_L + 1,
)
_N = Param(
    "N",
    int,
    "azimuthal bandlimit of the SO(3) output, 1 <= N <= L (default: L)",
    minimum=1,
    maximum=MAX_L + 1,
)
_K = Param("K", int, "output channels (default: input channels)", minimum=1, maximum=MAX_CHANNELS + 1)
_TAU = Param("tau", int, "output fragments per degree and channel", default=1, minimum=1, maximum=MAX_TAU + 1)
_TAU_U = Param(
    "tau_u", int, "width of the uniform (shared) projection (default: tau)", minimum=1, maximum=MAX_TAU + 1
)
_POINTWISE_ACTS = tuple(a.value for a in ir.Activation if a is not ir.Activation.NONE)
_ACT = Param("act", _POINTWISE_ACTS, "activation applied to every sample", default="relu")
_OVERSAMPLE = Param(
    "oversample",
    int,
    "evaluate on a grid this many times finer, then bandlimit back",
    default=1,
    minimum=1,
    maximum=5,
)

LAYERS: dict[str, LayerSpec] = {
    "Input": LayerSpec(
        (
            Param("domain", ("s2",), "signal domain of the MW-sampled input", default="s2"),
            Param("L", int, "input bandlimit; samples are L x (2L-1)", minimum=1, maximum=MAX_L + 1),
            Param("C", int, "input channels", default=1, minimum=1, maximum=MAX_CHANNELS + 1),
            Param(
                "set",
                bool,
                "each example is a set of spheres (e.g. one per atom), pooled by SetPool",
                default=False,
            ),
        ),
        ("domain",),
        "model input: C channels of real MW samples on the sphere, shape (C, L, 2L-1); with set=true a "
        "set of them per example, shape (elements, C, L, 2L-1) plus a mask",
    ),
    "S2Conv": LayerSpec((_C, _L, _N), (), "S² → SO(3) harmonic convolution (Cohen et al. 2018)"),
    "SO3Conv": LayerSpec((_C, _L, _N), (), "SO(3) → SO(3) harmonic convolution"),
    "ZonalConv": LayerSpec((_C, _L), (), "S² → S² convolution with axisymmetric filters (Esteves et al.)"),
    "ReLU": LayerSpec((_OVERSAMPLE,), (), "pointwise ReLU on the MW samples of an S² or SO(3) signal"),
    "Pointwise": LayerSpec(
        (_ACT, _OVERSAMPLE), ("act",), "pointwise activation on the MW samples of an S² or SO(3) signal"
    ),
    "S2Layer": LayerSpec(
        (_C, _L, _N, _ACT, _OVERSAMPLE), (), "the paper's S² layer: S2Conv followed by a pointwise activation"
    ),
    "SO3Layer": LayerSpec(
        (_C, _L, _N, _ACT, _OVERSAMPLE),
        (),
        "the paper's SO(3) layer: SO3Conv followed by a pointwise activation",
    ),
    "ZonalLayer": LayerSpec(
        (_C, _L, _ACT, _OVERSAMPLE), (), "axisymmetric S² layer: ZonalConv followed by a pointwise activation"
    ),
    "TensorProduct": LayerSpec(
        (
            Param("mix", _words(ir.Mixing), "degree-mixing set", default="mst"),
            _L,
            Param("cross", bool, "also multiply fragments of different channels (Kondor)", default=False),
        ),
        ("mix",),
        "channel-wise Clebsch–Gordan tensor-product activation",
    ),
    "GenConv": LayerSpec(
        (_K, _TAU, _TAU_U, _L),
        ("K",),
        "constrained generalized convolution: uniform, channel-wise and cross-channel steps",
    ),
    "FullGenConv": LayerSpec(
        (_K, _TAU, _L),
        ("K",),
        "unconstrained generalized convolution (Kondor et al.): all fragments mixed per degree",
    ),
    "EfficientLayer": LayerSpec(
        (
            Param("mix", _words(ir.Mixing), "degree-mixing set", default="mst"),
            _L,
            _K,
            _TAU,
            _TAU_U,
        ),
        ("mix",),
        "efficient generalized layer: TensorProduct (to bandlimit L) followed by GenConv",
    ),
    "Norm": LayerSpec(
        (
            Param("eps", float, "added to the mean squared norm", default=1e-5, minimum=0.0, maximum=1.0),
            Param("momentum", float, "running-statistics momentum", default=0.1, minimum=0.0, maximum=1.0),
        ),
        (),
        "equivariant fragment normalisation (divide by running RMS norm, learned scale)",
    ),
    "Invariant": LayerSpec((), (), "readout: degree-0 fragments → real features (real and imaginary parts)"),
    "Dense": LayerSpec(
        (
            Param("n", int, "output features", minimum=1, maximum=MAX_CHANNELS + 1),
            Param("act", _words(ir.Activation), "activation after the linear map", default="none"),
            Param(
                "dropout",
                float,
                "dropout probability after the activation",
                default=0.0,
                minimum=0.0,
                maximum=1.0,
            ),
        ),
        ("n",),
        "fully connected layer on invariant features",
    ),
    "SetPool": LayerSpec(
        (Param("mean", bool, "the mean over the set's elements instead of their sum", default=False),),
        (),
        "pool a set's invariant features into one vector per example (sum, or mean)",
    ),
    "SetSum": LayerSpec((), (), "pool a set's invariant features by their sum (SetPool mean=false)"),
    "SetMean": LayerSpec((), (), "pool a set's invariant features by their mean (SetPool mean=true)"),
}


def _suggest(word: str, options) -> str:
    """``did you mean `X`? `` for a near miss; case is ignored first (`relu` → `ReLU`)."""
    options = list(options)
    same = [o for o in options if o.lower() == word.lower()]
    close = same or difflib.get_close_matches(word, options, n=1)
    return f"did you mean `{close[0]}`? " if close else ""


def _check_value(p: Param, arg: Arg) -> object:
    v, span = arg.value, arg.value_span
    if isinstance(p.kind, tuple):
        if v not in p.kind:
            raise SphcError(
                f"{p.name} must be one of {', '.join(p.kind)}, got {v!r}",
                span,
                hint=_suggest(str(v), p.kind) + f"{p.name}: {p.doc}",
            )
        return v
    if p.kind is bool:
        if v not in ("true", "false"):
            raise SphcError(f"{p.name} must be true or false, got {v!r}", span, hint=p.doc)
        return v == "true"
    if p.kind is int and not isinstance(v, int) or p.kind is float and isinstance(v, str):
        what = "an integer" if p.kind is int else "a number"
        raise SphcError(f"{p.name} must be {what}, got {v!r}", span, hint=f"{p.name}: {p.doc}")
    if p.kind is float and not math.isfinite(v):  # 1e400 is inf; it must never reach the generated file
        raise SphcError(f"{p.name} must be a finite number, got {v}", span, hint=f"{p.name}: {p.doc}")
    if p.minimum is not None and v < p.minimum or p.maximum is not None and v >= p.maximum:
        if p.kind is int:  # every integer parameter has both bounds (README, "Limits")
            bound = f"between {p.minimum} and {p.maximum - 1}"
        else:
            bound = f">= {p.minimum:g}" + (f" and < {p.maximum:g}" if p.maximum is not None else "")
        raise SphcError(f"{p.name} must be {bound}, got {v}", span, hint=f"{p.name}: {p.doc}")
    return float(v) if p.kind is float else v


def _bind(node: LayerNode) -> tuple[LayerSpec, dict[str, object], dict[str, Span]]:
    """Match a layer's arguments to its spec; return values and the span of each given argument."""
    spec = LAYERS.get(node.name)
    if spec is None:
        raise SphcError(
            f"unknown layer `{node.name}`",
            node.span,
            hint=_suggest(node.name, LAYERS) + "layers: " + ", ".join(LAYERS),
        )
    by_name = {p.name: p for p in spec.params}
    values: dict[str, object] = {}
    spans: dict[str, Span] = {}
    positional = list(spec.positional)
    for arg in node.args:
        if arg.key is None and isinstance(arg.value, str) and arg.value in LAYERS:
            raise SphcError(
                f"`{arg.value}` is a layer, not an argument of `{node.name}`: a `->` is probably missing",
                arg.span,
                hint=f"join layers with `->`: `{node.name} ... -> {arg.value} ...`",
            )
        if arg.key is None:
            if not positional:
                raise SphcError(
                    f"`{node.name}` takes no further positional argument (got {arg.value!r})",
                    arg.span,
                    hint="name it: " + " ".join(f"{p.name}=..." for p in spec.params)
                    if spec.params
                    else f"`{node.name}` takes no arguments",
                )
            key = positional.pop(0)
        else:
            key = arg.key
            if key not in by_name:
                known = ", ".join(by_name) or "none"
                raise SphcError(
                    f"`{node.name}` has no parameter `{key}`",
                    arg.span,
                    hint=_suggest(key, by_name) + f"its parameters: {known}",
                )
            if key in positional:
                positional.remove(key)
        if key in values:
            first = spans[key]
            raise SphcError(
                f"parameter `{key}` given twice",
                arg.span,
                hint=f"`{key}` is already set at line {first.line}, col {first.col}; keep one of them",
            )
        values[key] = _check_value(by_name[key], arg)
        spans[key] = arg.value_span
    for p in spec.params:
        values.setdefault(p.name, p.default)
    return spec, values, spans


@dataclass(frozen=True)
class _Shape:
    """What lowering tracks between layers: enough to resolve defaults and reject bad chains."""

    domain: ir.Domain
    L: int = 0
    C: int = 0
    N: int = 0
    features: int = 0
    per_element: bool = False  # inside a set (Input set=true), before its SetPool


_HARMONIC = (ir.Domain.S2, ir.Domain.SO3, ir.Domain.GENERALIZED)


def _need(node: LayerNode, shape: _Shape, domains: tuple[ir.Domain, ...], hint: str) -> None:
    if shape.domain not in domains:
        names = [d.value for d in domains]
        want = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        raise SphcError(
            f"`{node.name}` takes a {want} signal, but its input is a {shape.domain.value} signal",
            node.span,
            hint=hint,
        )


def _out_L(node: LayerNode, vals: dict, spans: dict, shape: _Shape) -> int:
    L = vals["L"] if vals["L"] is not None else shape.L
    if L > shape.L:
        raise SphcError(
            f"bandlimit grows from L={shape.L} to L={L} in `{node.name}`",
            spans.get("L", node.span),
            hint="a layer can keep or lower the bandlimit, never raise it (nothing exists above L)",
        )
    return L


def _out_N(node: LayerNode, vals: dict, spans: dict, L: int, default: int) -> int:
    N = vals["N"] if vals["N"] is not None else min(default, L)
    if N > L:
        raise SphcError(
            f"azimuthal bandlimit N={N} exceeds the output bandlimit L={L}",
            spans.get("N", node.span),
            hint="N counts |n| < N; it can be at most L",
        )
    return N


def _s2conv(node, vals, spans, shape):
    _need(node, shape, (ir.Domain.S2,), "S2Conv maps an S² signal to SO(3); use SO3Conv after it")
    L = _out_L(node, vals, spans, shape)
    C, N = vals["C"] or shape.C, _out_N(node, vals, spans, L, L)
    return [ir.S2Conv(C, L, N, node.full_span)], _Shape(ir.Domain.SO3, L, C, N)


def _so3conv(node, vals, spans, shape):
    _need(node, shape, (ir.Domain.SO3,), "SO3Conv needs an SO(3) signal, e.g. after S2Conv")
    L = _out_L(node, vals, spans, shape)
    C, N = vals["C"] or shape.C, _out_N(node, vals, spans, L, shape.N)
    return [ir.SO3Conv(C, L, N, node.full_span)], _Shape(ir.Domain.SO3, L, C, N)


def _zonalconv(node, vals, spans, shape):
    _need(node, shape, (ir.Domain.S2,), "ZonalConv maps S² to S²")
    L = _out_L(node, vals, spans, shape)
    C = vals["C"] or shape.C
    return [ir.ZonalConv(C, L, node.full_span)], _Shape(ir.Domain.S2, L, C)


def _pointwise(node, vals, spans, shape):
    _need(
        node,
        shape,
        (ir.Domain.S2, ir.Domain.SO3),
        "pointwise layers act on samples; use them after S2/SO3/Zonal convs",
    )
    act = ir.Activation(vals.get("act") or "relu")
    return [ir.Pointwise(act, vals["oversample"], node.full_span)], shape


def _conv_layer(conv):
    """The paper's S²/SO(3)/axisymmetric layers: a harmonic convolution, then a pointwise activation."""

    def build(node, vals, spans, shape):
        first, mid = conv(node, vals, spans, shape)
        second, out = _pointwise(node, vals, spans, mid)
        return first + second, out

    return build


def _tensor_product(node, vals, spans, shape):
    _need(node, shape, _HARMONIC, "tensor products act on harmonic fragments")
    L = _out_L(node, vals, spans, shape)
    layer = ir.TensorProduct(ir.Mixing(vals["mix"]), L, vals["cross"], node.full_span)
    return [layer], _Shape(ir.Domain.GENERALIZED, L, 1 if vals["cross"] else shape.C)


def _gen_conv(node, vals, spans, shape):
    _need(node, shape, _HARMONIC, "generalized convolutions act on harmonic fragments")
    L = _out_L(node, vals, spans, shape)
    K = vals["K"] or shape.C
    layer = ir.GenConv(K, vals["tau"], vals["tau_u"] or vals["tau"], L, node.full_span)
    return [layer], _Shape(ir.Domain.GENERALIZED, L, K)


def _full_gen_conv(node, vals, spans, shape):
    _need(node, shape, _HARMONIC, "generalized convolutions act on harmonic fragments")
    L = _out_L(node, vals, spans, shape)
    K = vals["K"] or shape.C
    return [ir.FullGenConv(K, vals["tau"], L, node.full_span)], _Shape(ir.Domain.GENERALIZED, L, K)


def _efficient(node, vals, spans, shape):
    tp, mid = _tensor_product(node, {**vals, "cross": False}, spans, shape)
    conv, out = _gen_conv(node, {**vals, "L": None}, {}, mid)
    return tp + conv, out


def _norm(node, vals, spans, shape):
    _need(node, shape, _HARMONIC, "Norm scales harmonic fragments; use Dense-side dropout for features")
    return [ir.Norm(vals["eps"], vals["momentum"], node.full_span)], shape


def _invariant(node, vals, spans, shape):
    _need(node, shape, _HARMONIC, "the readout takes the degree-0 fragments of a harmonic signal")
    return [ir.Invariant(node.full_span)], _Shape(ir.Domain.FEATURES)


def _dense(node, vals, spans, shape):
    _need(node, shape, (ir.Domain.FEATURES,), "put `Invariant` before the first Dense layer")
    if vals["n"] is None:
        raise SphcError(
            "`Dense` needs the number of output features", node.span, hint="e.g. `Dense 10` or `Dense n=10`"
        )
    layer = ir.Dense(vals["n"], ir.Activation(vals["act"]), vals["dropout"], node.full_span)
    return [layer], _Shape(ir.Domain.FEATURES, features=vals["n"])


def _set_pool(node, vals, spans, shape):
    if not shape.per_element:
        raise SphcError(
            f"`{node.name}` pools a set, but this signal is not one",
            node.span,
            hint="sets come from `Input ... set=true` and are pooled once",
        )
    _need(
        node,
        shape,
        (ir.Domain.FEATURES,),
        "pool invariant features: put `Invariant` (and Dense layers) first",
    )
    mean = vals.get("mean", node.name == "SetMean")
    return [ir.SetPool(bool(mean), node.full_span)], _Shape(ir.Domain.FEATURES, features=shape.features)


#: One row per surface name: the builder that checks its values against the incoming shape and
#: returns its IR layer(s). Shorthands (S2Layer, EfficientLayer, ...) expand to two IR layers.
_BUILD: dict[str, Callable] = {
    "S2Conv": _s2conv,
    "SO3Conv": _so3conv,
    "ZonalConv": _zonalconv,
    "S2Layer": _conv_layer(_s2conv),
    "SO3Layer": _conv_layer(_so3conv),
    "ZonalLayer": _conv_layer(_zonalconv),
    "ReLU": _pointwise,
    "Pointwise": _pointwise,
    "TensorProduct": _tensor_product,
    "GenConv": _gen_conv,
    "FullGenConv": _full_gen_conv,
    "EfficientLayer": _efficient,
    "Norm": _norm,
    "Invariant": _invariant,
    "Dense": _dense,
    "SetPool": _set_pool,
    "SetSum": _set_pool,
    "SetMean": _set_pool,
}
_POOLS = ("SetPool", "SetSum", "SetMean")


def _input(ast: ModelAST) -> tuple[ir.Input, tuple[LayerNode, ...]]:
    first = ast.layers[0]
    if first.name == "Input":
        _, vals, spans = _bind(first)
        if vals["L"] is None:
            raise SphcError("`Input` needs a bandlimit L=...", first.span, hint="e.g. `Input s2 L=32 C=1`")
        inp = ir.Input(ir.Domain(vals["domain"]), vals["L"], vals["C"], set=vals["set"], span=first.full_span)
        return inp, ast.layers[1:]
    # No header: one S² channel at the bandlimit the first layer names (the sketch's defaults).
    _, vals, _ = _bind(first)  # a bad value of the first layer (L=2.5, L=0) is reported as such
    L = vals.get("L")
    if L is None:
        raise SphcError(
            "cannot tell the input bandlimit",
            first.span,
            hint="start the model with `Input s2 L=<bandlimit> C=<channels>`, or give the first layer L=...",
        )
    return ir.Input(ir.Domain.S2, L, 1, span=Span(ast.file, 1, 1)), ast.layers


def lower(ast: ModelAST) -> ir.Model:
    """Check the chain layer by layer and build the IR; raise the first ``SphcError`` found."""
    try:
        inp, nodes = _input(ast)
        shape = _Shape(inp.domain, inp.L, inp.C, per_element=inp.set)
        layers: list[ir.Layer] = []
        for node in nodes:
            if node.name == "Input":
                raise SphcError(
                    "`Input` can only be the first layer",
                    node.span,
                    hint="a model has one input; declare it once, at the start of the chain",
                )
            _, vals, spans = _bind(node)
            new, out = _BUILD[node.name](node, vals, spans, shape)
            shape = out if node.name in _POOLS else replace(out, per_element=shape.per_element)
            layers.extend(new)
        if shape.per_element:
            raise SphcError(
                "the input is a set (set=true) but the model never pools it",
                inp.span,
                hint="add `SetSum` (or `SetMean`) after `Invariant`, where the per-element features are invariant",
            )
        return ir.Model(inp, tuple(layers))
    except SphcError as e:
        raise e.with_source(ast.source) from None
