"""The generated per-degree linear kernels (templates/kernels/linear.py.j2) in Triton's CPU interpreter.

The kernels are rendered and imported once, like a generated module; every case compares forward,
grad_x and grad_w with autograd through the float64 einsum reference. Inputs are fresh random
every run; outputs start as NaN (``launch.poison``) so an element a kernel forgets to write fails;
entries of x with |m| > l are NaN too, so a kernel that reads them fails.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from sphc import kernel_spaces
from sphc.compiler.codegen import render_template
from sphc.compiler.pipeline import import_source
from sphc.compiler.plan import LINEAR_SOURCE
from sphc.compiler.plan import linear_kernels as linear_plan
from sphc.errors import SphcError
from sphc.runtime import launch, linear_kernels, ops

HEADER = "import triton\nimport triton.language as tl\n\nfrom sphc import runtime as rt\n\n"
TOL = {torch.complex128: 1e-12, torch.complex64: 1e-5}
_count = itertools.count()
# compiled kernels on a GPU (every tensor below is made there); Triton's interpreter on CPU otherwise
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _on_device():
    with torch.device(DEVICE):
        yield


@pytest.fixture(scope="module")
def lin() -> linear_kernels.LinearKernels:
    """The family rendered and imported once, like a generated module; sizes come from each call."""
    mp = pytest.MonkeyPatch()
    if DEVICE == "cpu":
        mp.setenv("TRITON_INTERPRET", "1")  # before @triton.jit runs: kernels become interpreted
    n = next(_count)
    specs = "\n".join(line for spec in linear_plan(f"lin{n}").specs for line in spec.lines)
    src = HEADER + render_template(LINEAR_SOURCE) + f"\n\nLIN = rt.LinearKernels(\n{specs}\n)\n"
    yield import_source(src, f"sphc_test_linear_{n}", f"<sphc:test-linear-{n}>").LIN
    mp.undo()


def _signal(B: int, C: int, L: int, T: int, dtype: torch.dtype) -> torch.Tensor:
    """A random signal whose unused entries (|m| > l) are NaN: the kernels must never read them."""
    x = torch.randn(B, C, L, 2 * L - 1, T, dtype=dtype)
    return torch.where(ops.order_mask(L)[None, None, :, :, None], x, float("nan"))


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert got.shape == want.shape, what
    err = (got.to(torch.complex128) - want).abs().max().item()
    scale = max(want.abs().max().item(), 1.0)
    assert err <= TOL[dtype] * scale, f"{what}: max error {err:.3e} (scale {scale:.3g})"


def _oracle(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor):
    """(y, grad_x, grad_w) in float64 through autograd on the einsum reference."""
    x64 = x.detach().to(torch.complex128).requires_grad_()
    w64 = w.detach().to(torch.complex128).requires_grad_()
    y = ops.degree_linear_reference(x64, w64)
    y.backward(g.to(torch.complex128))
    return y.detach(), x64.grad, w64.grad


def _check(lin, x, w, *, g=None, fwd=None, dgrad=None, wgrad=None, split=None) -> None:
    B, dtype = x.shape[0], x.dtype
    L, _, _, K, V = w.shape
    if g is None:
        g = torch.randn(B, K, L, 2 * L - 1, V, dtype=dtype)
    y_ref, gx_ref, gw_ref = _oracle(x, w, g)
    with launch.poison():
        y = lin.forward(x, w, config=fwd)
        gx, gw = lin.backward(g, x, w, dgrad_config=dgrad, wgrad_config=wgrad, split=split)
    assert y.is_contiguous() and gx.is_contiguous() and gw.dtype == dtype
    _close(y, y_ref, dtype, "forward")
    _close(gx, gx_ref, dtype, "grad_x")
    _close(gw, gw_ref, dtype, "grad_w")
    zero = ~ops.order_mask(L)
    assert (y[:, :, zero] == 0).all() and (gx[:, :, zero] == 0).all(), "|m| > l rows must be exact zeros"


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize(
    "B,L,C,T,K,V",
    [(3, 4, 2, 3, 2, 2), (2, 3, 3, 1, 2, 3), (2, 1, 2, 1, 3, 1)],
    ids=["so3", "t1", "l1"],
)
def test_matches_reference(lin, dtype, B, L, C, T, K, V):
    _check(lin, _signal(B, C, L, T, dtype), torch.randn(L, C, T, K, V, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_strided_views(lin, dtype):
    """x a slice of a larger-bandlimit signal, g with a broadcast (stride-0) batch axis: no copies needed."""
    B, L, Lb, C, T, K, V = 3, 3, 5, 2, 3, 2, 2
    big = torch.randn(B, C + 1, Lb, 2 * Lb - 1, T, dtype=dtype)
    x = big[:, 1:, :L, Lb - L : Lb - 1 + L]
    assert not x.is_contiguous()
    g = torch.randn(1, K, L, 2 * L - 1, V, dtype=dtype).expand(B, -1, -1, -1, -1)
    _check(lin, x, torch.randn(L, C, T, K, V, dtype=dtype), g=g)
    _check(lin, x.conj(), torch.randn(L, C, T, K, V, dtype=dtype))  # lazy conj bit


def test_small_blocks_and_split(lin):
    """16-wide tiles: several row / column / reduction blocks per degree, and split weight partials."""
    B, L, C, T, K, V = 3, 4, 5, 4, 3, 6  # C*T = 20, K*V = 18: two blocks of 16 each way
    tiny = (("BLOCK_M", 16), ("BLOCK_N", 16), ("BLOCK_K", 16))
    wtiny = kernel_spaces.Config((("BLOCK_J", 16), ("BLOCK_N", 16), ("BLOCK_R", 16)))
    x, w = _signal(B, C, L, T, torch.complex128), torch.randn(L, C, T, K, V, dtype=torch.complex128)
    for split in (1, 2, 3):
        cfg = kernel_spaces.Config(tiny)
        _check(lin, x, w, fwd=cfg, dgrad=cfg, wgrad=wtiny, split=split)


def test_every_config_runs(lin):
    x, w = _signal(2, 2, 2, 3, torch.complex64), torch.randn(2, 2, 3, 2, 1, dtype=torch.complex64)
    for tunable in (lin.fwd, lin.dgrad, lin.wgrad):
        assert 1 <= len(tunable.space) <= 12 and len(set(tunable.space)) == len(tunable.space)
    for fwd, dgrad, wgrad in itertools.zip_longest(lin.fwd.space, lin.dgrad.space, lin.wgrad.space):
        _check(lin, x, w, fwd=fwd, dgrad=dgrad, wgrad=wgrad)


def test_weight_grad_is_deterministic(lin):
    x, w = _signal(4, 2, 3, 2, torch.complex64), torch.randn(3, 2, 2, 2, 2, dtype=torch.complex64)
    g = torch.randn(4, 2, 3, 5, 2, dtype=torch.complex64)
    first = lin.backward(g, x, w, split=2)[1]
    assert torch.equal(torch.view_as_real(first), torch.view_as_real(lin.backward(g, x, w, split=2)[1]))


def test_spaces_fit_the_problem():
    for space in (kernel_spaces.ROWGEMM_SPACE, kernel_spaces.WGRAD_SPACE):
        assert len(space) <= 12 and len(set(space)) == len(space)
        for cfg in space:
            assert all(v >= 16 and v & (v - 1) == 0 for v in cfg.kwargs.values()), cfg.describe()
        assert all(kernel_spaces.Config.from_json(cfg.to_json()) == cfg for cfg in space)  # bakes round-trip
    first = kernel_spaces.fit(kernel_spaces.ROWGEMM_SPACE[0], {"BLOCK_N": 4, "BLOCK_K": 6}).kwargs
    assert first == {"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 16}  # no tile wider than the problem
    wide = kernel_spaces.fit(kernel_spaces.ROWGEMM_SPACE[0], {"BLOCK_N": 1000, "BLOCK_K": 33}).kwargs
    assert wide == {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}  # ... and none wider than the config


def test_split_count(lin):
    assert lin.split_for(1, 2, 6, 2) == 1
    assert lin.split_for(10**6, 2, 6, 2) == lin.max_split
    assert (
        linear_kernels.LinearKernels(**{**vars(lin), "split_budget": 24 * 5}).split_for(10**6, 2, 6, 2) == 5
    )


def test_bad_arguments(lin, monkeypatch):
    x, w = (
        torch.randn(2, 2, 2, 3, 3, dtype=torch.complex64),
        torch.randn(2, 2, 3, 2, 1, dtype=torch.complex64),
    )
    g = torch.randn(2, 2, 2, 3, 1, dtype=torch.complex64)
    cases = [
        (lambda: lin.forward(x[:, :1], w), "x has shape"),
        (lambda: lin.forward(x, w[:1]), r"x has shape \(2, 2, 2, 3, 3\), expected \(B, 2, 1, 1, 3\)"),
        (lambda: lin.forward(x, w[0]), "w must be a 5-d tensor"),
        (lambda: lin.forward(x.real, w), "expected complex64 or complex128"),
        (lambda: lin.forward(x, w.to(torch.complex128)), "w has dtype torch.complex128 but x"),
        (lambda: lin.forward(x, w.to("meta")), "w is on meta"),
        (lambda: lin.backward(g[:1], x, w), "g has shape"),
        (lambda: lin.backward(g, x, w, split=0), "split must be >= 1"),
    ]
    for call, message in cases:
        with pytest.raises(SphcError, match=message):
            call()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(SphcError, match="need a CUDA device"):
        lin.forward(x.cpu(), w.cpu())


def test_empty_batch(lin):
    x, w = (
        torch.randn(0, 2, 2, 3, 3, dtype=torch.complex64),
        torch.randn(2, 2, 3, 2, 1, dtype=torch.complex64),
    )
    assert lin.forward(x, w).shape == (0, 2, 2, 3, 1)
    gx, gw = lin.backward(torch.randn(0, 2, 2, 3, 1, dtype=torch.complex64), x, w)
    assert gx.shape == x.shape and (gw == 0).all()
