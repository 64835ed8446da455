"""Every IR layer kind has its row in every stage (docs/ARCHITECTURE.md, "Adding a layer kind").

A kind added to ``sphc.compiler.ir.Layer`` but forgotten in a stage fails here, naming the missing
row, instead of failing late (a layer silently falling back to torch, or a ``KeyError`` deep inside).
Each kind has a small sample model that the test compiles, builds and runs once.
"""

from __future__ import annotations

import typing

import pytest
import torch

import sphc
from sphc import runtime as rt
from sphc.compiler import analysis, ir, lower, plan

KINDS = typing.get_args(ir.Layer)

#: One small model per IR kind that contains it (the last layer is the kind under test, or uses it).
SAMPLES: dict[type, str] = {
    ir.S2Conv: "Input s2 L=4 C=1 -> S2Conv C=2 L=3 N=2",
    ir.SO3Conv: "Input s2 L=4 C=1 -> S2Conv C=2 L=3 N=2 -> SO3Conv C=2 L=3 N=1",
    ir.ZonalConv: "Input s2 L=4 C=1 -> ZonalConv C=2 L=3",
    ir.Pointwise: "Input s2 L=4 C=1 -> ZonalConv C=2 -> ReLU -> S2Conv C=2 N=2 -> Pointwise tanh",
    ir.TensorProduct: "Input s2 L=3 C=1 -> GenConv K=2 tau=1 -> TensorProduct mst",
    ir.GenConv: "Input s2 L=3 C=1 -> GenConv K=2 tau=2 -> TensorProduct rmst -> GenConv K=2 tau=1 tau_u=2",
    ir.FullGenConv: "Input s2 L=3 C=1 -> FullGenConv K=2 tau=2",
    ir.Norm: "Input s2 L=3 C=1 -> GenConv K=2 tau=2 -> Norm",
    ir.Invariant: "Input s2 L=3 C=1 -> ZonalConv C=2 -> Invariant",
    ir.Dense: "Input s2 L=3 C=1 -> ZonalConv C=2 -> Invariant -> Dense 3",
    ir.SetPool: "Input s2 L=3 C=1 set=true -> ZonalConv C=2 -> Invariant -> Dense 3 -> SetSum -> Dense 2",
}


def test_every_surface_name_has_a_builder() -> None:
    assert set(lower.LAYERS) - {"Input"} == set(lower._BUILD), "lower.LAYERS and lower._BUILD disagree"


@pytest.mark.parametrize("kind", KINDS, ids=[k.__name__ for k in KINDS])
def test_every_stage_has_a_row(kind: type) -> None:
    rows = {
        "sphc/compiler/analysis.py: analyze_layer": analysis.analyze_layer.registry,
        "sphc/compiler/plan.py: constructor": plan.constructor.registry,
        "sphc/compiler/plan.py: kernel_plans": plan.kernel_plans.registry,
    }
    missing = [where for where, registry in rows.items() if kind not in registry]
    assert not missing, f"{kind.__name__} has no row in {', '.join(missing)}"
    assert kind in SAMPLES, f"{kind.__name__} has no sample model in tests/test_layer_kinds.py"


@pytest.mark.parametrize("kind", KINDS, ids=[k.__name__ for k in KINDS])
def test_every_kind_lowers_compiles_and_runs(kind: type) -> None:
    """Lowering produces the kind, the module names only runtime classes that exist, and it runs."""
    text = SAMPLES[kind]
    checked = sphc.check_source(text)
    assert any(type(x.layer) is kind for x in checked.layers), f"no surface name lowers to {kind.__name__}"
    source = sphc.compile_source(text)
    used = {name for name in rt.__all__ if f"rt.{name}(" in source}
    assert used, source
    model = sphc.load(text).Model(backend="torch").double()
    lead = (2, 3) if model.input.set else (2,)
    y = model(torch.randn(*lead, *model.input_shape, dtype=torch.float64))
    assert torch.isfinite(y.real if y.is_complex() else y).all()
