"""``torch.compile(model, fullgraph=True)`` of generated models: no graph break, and the compiled
forward, backward and buffer updates equal eager ones (float32, fresh random weights and inputs).

The transform tables are module buffers (``transforms.S2Tables`` / ``SO3Tables``), so the call path
of every layer is plain torch that dynamo traces. ``aot_eager`` (dynamo + AOT autograd, no code
generation) keeps compiling fast on a CPU; one small model goes through inductor (its first use on a
machine compiles inductor's C++ runtime, about 25 s on 2 cores, cached afterwards).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import sphc
from sphc.errors import SphcError
from sphc.runtime import transforms

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# no TensorProduct: S2Conv, SO(3) ReLUs (one oversampled), SO3Conv, Norm, Invariant, Dense
MAIN = (
    "Input s2 L=8 C=1 -> S2Conv C=3 L=6 N=2 -> ReLU oversample=2 -> SO3Conv C=4 L=4 N=2 -> ReLU"
    " -> Norm -> Invariant -> Dense 5"
)
# S² pointwise layers (plain and oversampled) and the input transform, nothing else with weights
S2_ONLY = "Input s2 L=6 C=2 -> ReLU -> ReLU oversample=2 -> Invariant -> Dense 3"
TOL = 1e-5

EXAMPLE_PARAMS = [p.stem for p in sorted(EXAMPLES.glob("*.sph"))]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(src: str) -> torch.nn.Module:
    model = sphc.load(src).Model()
    for m in model.modules():  # dropout draws differ between eager and compiled runs; Norm stays in training
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _assert_compiled_matches_eager(model: torch.nn.Module, backend: str, batch: int = 2) -> None:
    """Forward, gradients (parameters and input) and buffers after one step: compiled vs eager."""
    eager, compiled_model = model, copy.deepcopy(model)
    compiled = torch.compile(compiled_model, fullgraph=True, backend=backend)
    lead = (batch, 3) if model.input.set else (batch,)  # a set input: 3 slots, the last one padding
    x = torch.randn(*lead, *model.input_shape)
    extra = (torch.arange(3).expand(batch, 3) < 2,) if model.input.set else ()
    results = []
    for net, module in ((eager, eager), (compiled, compiled_model)):
        xi = x.clone().requires_grad_(True)
        y = net(xi, *extra)
        g = torch.ones_like(y) + torch.linspace(0, 1, y.numel()).view_as(y)  # a fixed non-uniform cotangent
        params = list(module.parameters())
        grads = torch.autograd.grad(y, [xi, *params], g, allow_unused=True)
        results.append((y.detach(), grads, [b.clone() for b in module.buffers()]))
    (y0, g0, b0), (y1, g1, b1) = results
    assert _rel(y1, y0) < TOL
    assert len(g0) == len(g1)
    for a, b in zip(g1, g0):
        assert (a is None) == (b is None)
        if b is not None:
            assert _rel(a, b) < TOL
    for a, b in zip(b1, b0):  # Norm's running means, updated in place inside the graph
        assert a.dtype == b.dtype and _rel(a.double(), b.double()) < TOL


def test_main_model_has_no_graph_break():
    model = _model(MAIN)
    explanation = torch._dynamo.explain(model)(torch.randn(2, *model.input_shape))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_main_model_compiled_matches_eager():
    _assert_compiled_matches_eager(_model(MAIN), "aot_eager")


def test_so3_pointwise_compiled_matches_eager():
    """The SO(3) transforms inside Pointwise (oversampled) through AOT autograd: output and input gradient."""
    layer = sphc.runtime.SO3Pointwise(4, 2, "relu", oversample=2)
    x = torch.randn(2, 3, 4, 7, 3, dtype=torch.complex64)
    x = layer(x)  # a real SO(3) signal's coefficients (n-symmetric), as a model would feed
    outs = []
    for fn in (layer, torch.compile(layer, fullgraph=True, backend="aot_eager")):
        xi = x.detach().clone().requires_grad_(True)
        y = fn(xi)
        (gx,) = torch.autograd.grad(torch.view_as_real(y).square().sum(), xi)
        outs.append((y.detach(), gx))
    assert _rel(outs[1][0], outs[0][0]) < TOL and _rel(outs[1][1], outs[0][1]) < TOL


@pytest.mark.parametrize("name", EXAMPLE_PARAMS)
def test_example_compiles_fullgraph_and_matches_eager(name):
    _assert_compiled_matches_eager(_model(str(EXAMPLES / f"{name}.sph")), "aot_eager", batch=1)


def test_inductor_small_model():
    """InputSHT and an S² ReLU (both transforms) through inductor: forward, input and weight gradients."""
    _assert_compiled_matches_eager(_model("Input s2 L=4 C=1 -> ReLU -> Invariant -> Dense 3"), "inductor")


def test_compiled_model_still_checks_its_input():
    """The InputSHT shape / dtype checks are Python-level: a compiled model still raises SphcError.

    (With ``fullgraph=True`` dynamo cannot hand an exception raised in traced code back as itself: it
    raises ``torch._dynamo.exc.Unsupported`` pointing at the check's ``raise`` line instead.)
    """
    model = _model(S2_ONLY)
    compiled = torch.compile(model, backend="aot_eager")
    compiled(torch.randn(2, *model.input_shape))
    with pytest.raises(SphcError, match="model input must have shape"):
        compiled(torch.randn(2, 2, 6, 10))
    with pytest.raises(SphcError, match="model input is torch.float64"):
        compiled(torch.randn(2, *model.input_shape, dtype=torch.float64))


# ------------------------------------------------------------------------- tables as buffers


def test_tables_are_buffers_that_follow_the_module():
    model = _model(MAIN)
    tables = [m for m in model.modules() if isinstance(m, transforms._Tables)]
    assert len(tables) == 5  # InputSHT, two SO(3) ReLUs (reference and fast-path tables each)
    names = {n for n, _ in model.named_buffers()}
    assert "input.tables.fwd" in names and not any("tables" in k or "fast" in k for k in model.state_dict())
    # .double() of a float32 model recasts from the float64 masters: the same tables as a float64 build
    torch.set_default_dtype(torch.float64)
    try:
        ref = _model(MAIN)
    finally:
        torch.set_default_dtype(torch.float32)
    doubled = dict(model.double().named_buffers())
    for name, buf in ref.named_buffers():
        if ".tables." in name or ".fast." in name:
            assert doubled[name].dtype == buf.dtype and torch.equal(doubled[name], buf), name
    # and back: the float32 cast of the master, not of anything else
    floated = dict(model.float().named_buffers())
    assert floated["input.tables.fwd"].dtype == torch.float32
    assert torch.equal(floated["input.tables.fwd"], ref.input.tables.fwd.float())


def test_transform_with_tables_equals_cached_transform_and_checks_them():
    f = torch.randn(3, 6, 11, dtype=torch.float64)
    tab = transforms.S2Tables(6, torch.float64)
    assert torch.equal(transforms.s2_forward_2d(f, 6, tables=tab), transforms.s2_forward_2d(f, 6))
    c = transforms.s2_forward_2d(f, 6)
    assert torch.equal(
        transforms.s2_inverse_2d(c, 6, real=True, tables=tab), transforms.s2_inverse_2d(c, 6, True)
    )
    g = torch.randn(2, 3, 5, 9, dtype=torch.float64)
    t3 = transforms.SO3Tables(5, 2, torch.float64)
    assert torch.equal(transforms.so3_forward(g, 5, 2, tables=t3), transforms.so3_forward(g, 5, 2))
    with pytest.raises(ValueError, match=r"tables are for \(7,\)"):
        transforms.s2_forward_2d(f, 6, tables=transforms.S2Tables(7, torch.float64))
    with pytest.raises(ValueError, match="tables are torch.float32"):
        transforms.s2_forward_2d(f, 6, tables=transforms.S2Tables(6, torch.float32))
    with pytest.raises(ValueError, match="without the 'inv' table"):
        transforms.s2_inverse_2d(c, 6, tables=transforms.S2Tables(6, torch.float64, inverse=False))
    with pytest.raises(TypeError, match="tables must be SO3Tables"):
        transforms.so3_forward(g, 5, 2, tables=tab)
