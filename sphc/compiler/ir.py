"""The IR: one frozen dataclass per layer kind, every field concrete and validated.

``lower.py`` builds it from the AST (defaults resolved, shapes checked); ``analysis.py`` reads it.
Spans ride along for error messages but never take part in equality or hashing, so editing
comments or whitespace in a ``.sph`` file leaves the IR (and every cache key) unchanged.
``dump()`` prints the IR back as canonical ``.sph`` text with every default written out.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum

from sphc.errors import Span


class Domain(Enum):
    """What a signal between two layers is (docs/CONVENTIONS.md §6)."""

    S2 = "s2"  # one fragment per degree and channel: f_lm
    SO3 = "so3"  # 2N-1 fragments per degree (columns n), τ_l = min(2l+1, 2N-1)
    GENERALIZED = "generalized"  # any number of fragments per degree (the paper's type τ)
    FEATURES = "features"  # rotation-invariant real features after the readout


class Mixing(Enum):
    """Degree-mixing set P^l of a tensor-product activation (docs/CONVENTIONS.md §8)."""

    FULL = "full"
    MST = "mst"
    RMST = "rmst"


class Activation(Enum):
    NONE = "none"
    RELU = "relu"
    GELU = "gelu"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    SOFTPLUS = "softplus"


_SPAN = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Input:
    """The model input: C channels of real MW samples on S² with bandlimit L.

    ``set``: each example is a set of such signals (e.g. one sphere per atom of a molecule), of
    varying size; every layer up to the ``SetPool`` acts on each element alone.
    """

    domain: Domain
    L: int
    C: int
    N: int | None = None
    set: bool = field(default=False, metadata={"quiet": True})  # dumped only when true
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class S2Conv:
    """S² → SO(3) harmonic convolution (Cohen et al.): (f⋆ψ)^l_mn = 8π²/(2l+1) f_lm conj(ψ_ln)."""

    C: int
    L: int
    N: int
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class SO3Conv:
    """SO(3) → SO(3) harmonic convolution: (f⋆ψ)^l_mn = Σ_k f^l_mk conj(ψ^l_nk) (docs/CONVENTIONS.md §7.2)."""

    C: int
    L: int
    N: int
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class ZonalConv:
    """S² → S² convolution with axisymmetric filters (Esteves et al.): √(4π/(2l+1)) f_lm ψ_l0."""

    C: int
    L: int
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class Pointwise:
    """An activation applied to the MW samples of an S² or SO(3) signal (docs/CONVENTIONS.md §7.7).

    Only approximately equivariant: no sampling of the sphere is rotation invariant and the
    activation breaks the bandlimit. ``oversample`` evaluates it on a grid that many times finer
    (then bandlimits back), trading time for equivariance.
    """

    act: Activation = Activation.RELU
    oversample: int = 1
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class TensorProduct:
    """Clebsch–Gordan tensor-product activation over a degree-mixing set (docs/CONVENTIONS.md §7.4).

    ``cross=False`` is Cobb et al.'s channel-wise product; ``cross=True`` multiplies fragments of
    all channels with each other (Kondor et al.'s layer, O(C²) more work).
    """

    mix: Mixing
    L: int
    cross: bool = False
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class GenConv:
    """Constrained generalized convolution (docs/CONVENTIONS.md §7.5): uniform → channel-wise → cross-channel."""

    K: int
    tau: int
    tau_u: int
    L: int
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class FullGenConv:
    """Unconstrained generalized convolution: every fragment of every channel mixed per degree."""

    K: int
    tau: int
    L: int
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class Norm:
    """Fragment normalisation: divide each fragment by the running RMS of its norm, learned scale."""

    eps: float = 1e-5
    momentum: float = 0.1
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class Invariant:
    """Readout: the degree-0 fragments (rotation invariant) as real features (real, imaginary)."""

    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class Dense:
    """Fully connected layer on invariant features: linear → activation → dropout."""

    n: int
    act: Activation = Activation.NONE
    dropout: float = 0.0
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class SetPool:
    """Pools a set's invariant features into one vector per example: sum or mean over its elements
    (permutation invariant; padding never enters). DeepSets' pooling (docs/CONVENTIONS.md §7.12)."""

    mean: bool = False
    span: Span | None = _SPAN


Layer = (
    S2Conv
    | SO3Conv
    | ZonalConv
    | Pointwise
    | TensorProduct
    | GenConv
    | FullGenConv
    | Norm
    | Invariant
    | Dense
    | SetPool
)


@dataclass(frozen=True, slots=True)
class Model:
    input: Input
    layers: tuple[Layer, ...]


def _fmt(value: object) -> str:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def dump_layer(layer: Input | Layer) -> str:
    """``Name key=value ...`` with every field written out (the canonical form of one layer)."""
    quiet = {f.name for f in fields(layer) if f.metadata.get("quiet") and getattr(layer, f.name) == f.default}
    args = [
        f"{f.name}={_fmt(getattr(layer, f.name))}" for f in fields(layer) if f.name not in ("span", *quiet)
    ]
    args = [a for a in args if not a.endswith("=None")]
    return " ".join([type(layer).__name__, *args])


def dump(model: Model) -> str:
    """Canonical, deterministic ``.sph`` text of the model (parses back to an equal IR)."""
    return "\n  -> ".join(dump_layer(x) for x in (model.input, *model.layers)) + "\n"
