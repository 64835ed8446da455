"""Model-size limits (README, "Limits"): what real models need passes, what cannot be built is refused
during analysis with a located error naming the figure and the limit, and ``SPHC_LIMIT_SCALE`` raises
them. The limits themselves live in ``sphc.limits``; the reference backend's per-term tables, built
lazily, are checked against the same limit when they are built.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import sphc
from sphc import SphcError
from sphc import limits as sphc_limits
from sphc.compiler import analysis, lower

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.sph"))
SKETCH = "S2Conv L=32 -> TensorProduct mst -> GenConv K=8"  # the README's sketch
CHAIN_1000 = "Input s2 L=4 -> S2Conv C=2 N=2" + " -> SO3Conv" * 1000 + " -> Invariant -> Dense 2"


@pytest.fixture(autouse=True)
def _default_limits(monkeypatch):
    monkeypatch.delenv("SPHC_LIMIT_SCALE", raising=False)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_within_the_limits(path: Path):
    a = sphc.check_source(path.read_text(encoding="utf-8"), str(path))
    limits = sphc_limits.size_limits()
    assert a.size.layers == len(a.layers) and a.size.params == a.params
    assert a.size.cg_entries == sum(x.cg_entries for x in a.layers)
    for name in ("params", "cg_entries", "activation_bytes", "table_bytes"):
        assert getattr(a.size, name) <= getattr(limits, name) / 10, name  # far inside: room to grow


def test_the_readme_sketch_compiles_and_builds_but_the_reference_refuses_its_tables():
    """The sketch's S2Conv keeps N = L = 32 (63 fragments per degree), so its MST tensor product has
    1.19 G (CG entry, column pair) terms. ``Model()`` builds only per-path tables (tens of MiB); the
    reference backend's per-term tables (~50 GiB) are refused with a clear error when it first runs."""
    a = sphc.check_source(SKETCH)
    assert 2.7e6 < a.params < 2.8e6 and 1.0e6 < a.size.cg_entries < 1.1e6
    assert 960 * 2**20 < a.size.activation_bytes < sphc_limits.Limits().activation_bytes
    assert analysis.tp_terms(a.layers[1]) == 1_192_656_993
    assert a.size.table_bytes < 512 * 2**20
    tp = sphc.load(SKETCH).Model(backend="reference").l2_tensorproduct
    with pytest.raises(SphcError, match=r"reference tables need 53\.3 GiB \(1,192,656,993 product terms\)"):
        tp.reference_tables()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_table_figure_bounds_what_model_builds(path: Path):
    """``Model()``'s buffers never exceed the figure the limit checks, nor fall far below it."""
    a = sphc.check_source(path.read_text(encoding="utf-8"))
    model = sphc.load(path).Model()
    actual = sum(b.numel() * b.element_size() for b in model.buffers())
    assert actual <= a.size.table_bytes <= 4 * actual, (actual, a.size.table_bytes)


def test_the_reference_tables_are_built_only_when_the_reference_runs():
    model = sphc.load(REPO_ROOT / "examples" / "mixing_mst.sph").Model()
    tps = [m for m in model.modules() if type(m).__name__ == "TensorProduct"]
    x = torch.randn(2, *model.input_shape)
    before = sum(b.numel() for b in model.buffers())
    model(x)  # the fast path: no per-term tables
    assert sum(b.numel() for b in model.buffers()) == before and not any(tp._ref for tp in tps)
    sphc.runtime.set_backend(model, "reference")
    assert torch.isfinite(model(x)).all()
    assert all(tp._ref for tp in tps) and sum(b.numel() for b in model.buffers()) > before


def test_a_thousand_layer_chain_compiles():
    source = sphc.compile_source(CHAIN_1000, "chain.sph")
    assert source.count("SO3Conv(") >= 1000
    compile(source, "<chain>", "exec")


def _refusal(text: str) -> SphcError:
    with pytest.raises(SphcError) as info:
        sphc.check_source(text, "big.sph")
    err = info.value
    assert err.span is not None and err.span.file == "big.sph"
    assert "--limit-scale" in err.hint and "SPHC_LIMIT_SCALE" in err.hint
    return err


# (model, column of the layer that crosses the limit, message pattern): each just over one limit
OVER = [
    (
        "Input s2 L=4 -> S2Conv C=2 N=2" + " -> SO3Conv" * 2000,
        31 + 11 * 1999 + 4,
        r"the model has 2,001 layers; the limit is 2,000",
    ),
    (
        "Input s2 L=8 -> S2Conv C=400 N=8 -> SO3Conv C=400",
        37,
        r"this layer brings the model to 108,825,600 parameters; the limit is 100,000,000",
    ),
    (
        "Input L=40 -> TensorProduct full",
        15,
        r"to 23,034,676 Clebsch–Gordan entries; the limit is 10,000,000",
    ),
    (
        "Input L=16 -> S2Conv N=4 -> TensorProduct mst -> TensorProduct mst",
        50,
        r"would multiply [\d,]+ pairs of fragments \(the limit is 2,000,000\)",
    ),
    (
        "Input L=256 -> S2Conv C=4 -> ReLU",
        30,
        r"to 5\.0 GiB of activations per example \(float32\); the limit is 4\.0 GiB",
    ),
    ("Input L=64 -> S2Conv C=1 -> ReLU oversample=4", 29, r"to 32\.0 GiB of tables built by Model\(\)"),
]


@pytest.mark.parametrize("text, col, message", OVER, ids=["layers", "params", "cg", "pairs", "act", "tables"])
def test_each_limit_refuses_with_the_figure_and_the_limit(text, col, message):
    err = _refusal(text)
    assert re.search(message, err.message), err.message
    assert (err.span.line, err.span.col) == (1, col), err.render()[:300]


@pytest.mark.parametrize("text, col, message", OVER[:3], ids=["layers", "params", "cg"])
def test_the_limit_scale_raises_every_limit(text, col, message, monkeypatch):
    monkeypatch.setenv("SPHC_LIMIT_SCALE", "3")
    sphc.check_source(text)
    assert sphc_limits.size_limits() == sphc_limits.Limits().scaled(3)
    monkeypatch.setenv("SPHC_LIMIT_SCALE", "inf")
    assert "unlimited" in sphc.compile_source(text, emit="analysis").split("limits: ")[1]


@pytest.mark.parametrize("value", ["0", "0.99", "-1", "many", "nan"])
def test_a_bad_limit_scale_is_a_user_error(value, monkeypatch):
    monkeypatch.setenv("SPHC_LIMIT_SCALE", value)
    with pytest.raises(SphcError, match="SPHC_LIMIT_SCALE must be a number >= 1"):
        sphc.check_source("Input s2 L=4 -> S2Conv")


def test_every_integer_parameter_has_a_documented_range():
    """Both bounds on every integer parameter, so a literal can never reach the analysis unchecked."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    limits = readme.split("## Limits", 1)[1].split("\n## ", 1)[0]
    for name, spec in lower.LAYERS.items():
        for p in spec.params:
            if p.kind is int:
                assert p.minimum is not None and p.maximum is not None, f"{name}.{p.name}"
                assert f"{p.maximum - 1:,}" in limits, (
                    f"README Limits lacks {name}.{p.name} <= {p.maximum - 1}"
                )
    for field in ("layers", "params", "cg_entries", "tp_pairs"):
        assert f"{int(getattr(sphc_limits.Limits(), field)):,}" in limits, field
    assert "SPHC_LIMIT_SCALE" in limits and "--limit-scale" in limits


@pytest.mark.parametrize("L", [4, 16, 33])
def test_s2_table_figure_is_the_runtime_tables_bytes(L):
    from sphc.runtime.transforms import S2Tables

    tables = S2Tables(L, dtype=torch.float32)
    fwd_inv = sum(b.numel() * b.element_size() for n, b in tables.named_buffers() if n in ("fwd", "inv"))
    assert analysis.s2_table_bytes(L) == fwd_inv
    assert analysis.s2_table_bytes(L, inverse=False) == fwd_inv // 2


@pytest.mark.parametrize("L, N", [(1, 1), (4, 4), (8, 2), (12, 12), (20, 5), (40, 40)])
def test_so3_table_figure_bounds_the_runtime_tables(L, N):
    """The estimate must never undercount what ``Model()`` allocates, and stay within 5x of it."""
    from sphc.runtime.transforms import SO3Tables

    tables = SO3Tables(L, N, dtype=torch.float32)
    actual = sum(b.numel() * b.element_size() for b in tables.buffers())
    bound = analysis.so3_table_bytes(L, N)
    assert actual <= bound <= 5 * actual, (actual, bound)
