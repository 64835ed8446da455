"""Equivariance measurement: the product's promise, as a reusable library (e3nn's util/test.py idea).

A rotation ρ = (α, β, γ) (ZYZ) acts on any harmonic signal of the runtime layout by
``x[..., l, :, t] → D^l(ρ) x[..., l, :, t]`` with exact Wigner-D matrices (docs/CONVENTIONS.md §3.4), and
on MW samples by transforming, rotating the coefficients and synthesising again (exact for
bandlimited signals). ``layer_equivariance_error`` compares ``layer(R x)`` with ``R layer(x)``;
``model_invariance_error`` compares ``model(R f)`` with ``model(f)`` for invariant models.
The reported number is the mean relative error ‖a − b‖ / ‖b‖ over random rotations.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from sphc.compiler.analysis import SignalType
from sphc.compiler.ir import Domain
from sphc.runtime.transforms import s2_forward_2d, s2_inverse_2d
from sphc.runtime.wigner import wigner_D

Rotation = tuple[float, float, float]


def random_rotation(rng: np.random.Generator | None = None) -> Rotation:
    """Uniform (Haar) random rotation as ZYZ Euler angles: α, γ uniform, cos β uniform."""
    rng = rng or np.random.default_rng()
    return (
        float(rng.uniform(0, 2 * np.pi)),
        float(np.arccos(rng.uniform(-1, 1))),
        float(rng.uniform(0, 2 * np.pi)),
    )


def wigner_D_tensor(L: int, rotation: Rotation, dtype=torch.complex128, device=None) -> torch.Tensor:
    """D^l_{mn}(ρ) as a (L, 2L-1, 2L-1) tensor indexed [l, L-1+m, L-1+n]."""
    return torch.from_numpy(wigner_D(L, *rotation)).to(dtype=dtype, device=device)


def rotate_harmonic(x: torch.Tensor, rotation: Rotation) -> torch.Tensor:
    """Rotate a runtime-layout signal ``(..., L, 2L-1, T)``: every fragment column gets D^l."""
    D = wigner_D_tensor(x.shape[-3], rotation, x.dtype, x.device)
    return torch.einsum("lmn,...lnt->...lmt", D, x)


def rotate_samples(f: torch.Tensor, rotation: Rotation) -> torch.Tensor:
    """Rotate real MW samples ``(..., L, 2L-1)`` of a bandlimited signal: (R f)(ω) = f(R⁻¹ω)."""
    L = f.shape[-2]
    flm = s2_forward_2d(f, L).unsqueeze(-1)
    return s2_inverse_2d(rotate_harmonic(flm, rotation).squeeze(-1), L, real=True)


def random_bandlimited(batch: int, channels: int, L: int, dtype=torch.float64) -> torch.Tensor:
    """Random real MW samples of a signal with bandlimit L (projected, so rotation is exact)."""
    f = torch.randn(batch, channels, L, 2 * L - 1, dtype=dtype)
    return s2_inverse_2d(s2_forward_2d(f, L), L, real=True)


def random_harmonic(batch: int, t: SignalType, dtype=torch.complex128) -> torch.Tensor:
    """A random signal of type ``t`` in the runtime layout: zero where |m| > l or a column is unused."""
    if t.domain is Domain.FEATURES:
        raise ValueError("features are not a harmonic signal")
    L = t.L
    x = torch.randn(batch, t.C, L, 2 * L - 1, t.width, dtype=dtype)
    mask = torch.zeros(L, 2 * L - 1, t.width, dtype=torch.bool)
    for l, cols in enumerate(t.cols):
        mask[l, L - 1 - l : L + l, list(cols)] = True
    return x * mask


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300))


@torch.no_grad()
def layer_equivariance_error(
    layer: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    rotations: int = 8,
    rng: np.random.Generator | None = None,
) -> float:
    """Mean over random rotations of ‖layer(R x) − R layer(x)‖ / ‖R layer(x)‖.

    If the layer outputs real features (a readout), they must be invariant: R acts as identity.
    """
    y = layer(x)
    errors = []
    for _ in range(rotations):
        rot = random_rotation(rng)
        y_rot = layer(rotate_harmonic(x, rot))
        expected = y if not y.is_complex() else rotate_harmonic(y, rot)
        errors.append(_rel(y_rot, expected))
    return sum(errors) / len(errors)


@torch.no_grad()
def model_invariance_error(
    model: torch.nn.Module,
    batch: int = 4,
    rotations: int = 8,
    dtype=torch.float64,
    rng: np.random.Generator | None = None,
) -> float:
    """Mean relative change of an invariant model's output when its input sphere is rotated."""
    C, L, _ = model.input_shape
    f = random_bandlimited(batch, C, L, dtype)
    y = model(f)
    errs = [_rel(model(rotate_samples(f, random_rotation(rng))), y) for _ in range(rotations)]
    return sum(errs) / len(errs)


def assert_equivariant(error: float, dtype: torch.dtype, what: str = "layer") -> None:
    """Fail with the measured error if it exceeds the project's tolerance for ``dtype``."""
    __tracebackhide__ = True
    tol = 1e-12 if dtype in (torch.float64, torch.complex128) else 1e-6
    if not (error <= tol) or math.isnan(error):
        raise AssertionError(
            f"{what}: mean relative equivariance error {error:.3e} exceeds {tol:.0e} ({dtype})"
        )
