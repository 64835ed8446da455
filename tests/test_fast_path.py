"""The fast torch path (``backend="torch"``, the CPU default) against the reference (``"reference"``).

Whole models — every example and the kernel-test models — compare output, input gradient and every
parameter gradient between the two backends (same weights, fresh random inputs each run); each op
is compared on random inputs that also fill the layout's unused entries (orders |m| > l, which both
must ignore) and on non-real signals, and checked against finite differences (gradcheck, float64).
Tolerance: ‖fast − reference‖ ≤ tol · ‖reference‖ per tensor, float64 1e-12 and float32 1e-5.
Equivariance on the fast path is tested where equivariance is tested (test_models, test_runtime,
test_pointwise are parametrised over both backends).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_kernels_tp import CASES

import sphc
from sphc.errors import SphcError
from sphc.runtime import cpu_kernels, layers, ops

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
COMPLEX = {torch.float64: torch.complex128, torch.float32: torch.complex64}
EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.sph"))


def _pointwise(domain: str, L: int, N: int, act: str, oversample: int):
    """The runtime's pointwise layer of a domain (S² has no azimuthal bandlimit N)."""
    if domain == "s2":
        return layers.S2Pointwise(L, act, oversample)
    return layers.SO3Pointwise(L, N, act, oversample)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm((a - b).flatten()) / torch.linalg.norm(b.flatten()).clamp_min(1e-300))


def _assert_close(fast: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert torch.linalg.norm(ref.flatten()) > 0, f"{what}: the reference is zero (the test cannot fail)"
    err = _rel(fast, ref)
    assert err <= TOL[dtype], f"{what}: fast vs reference relative error {err:.2e} > {TOL[dtype]:g}"


def _run(module, backend: str, dtype: torch.dtype, seed: int, x0: torch.Tensor, *mask: torch.Tensor):
    """(output, input gradient, parameter gradients) of one backward of a random linear functional."""
    torch.manual_seed(seed)
    model = module.Model(backend=backend).to(dtype)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    x = x0.to(dtype).detach().clone().requires_grad_(True)
    y = model(x, *mask)
    y = torch.view_as_real(y) if y.is_complex() else y  # harmonic outputs of the kernel-test models
    weights = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    (y * weights.to(dtype)).sum().backward()
    return [y.detach(), x.grad] + [p.grad for _, p in model.named_parameters()]


def _compare_models(src: str, batch: int = 2) -> None:
    """Output, input gradient and every parameter gradient, same weights and input: the fast path in
    float64 against the reference in float64 (≤ 1e-12); in float32 against the same float64 values,
    within 1e-5 or within 3× the reference's own float32 error where that is larger — the rounding of
    either path is amplified by ill-conditioned layers (Norm of a small batch, ReLU on samples):
    measured over 4–8 seeds, the reference's float32 gradients are 3e-7 … 6e-4 from float64 and the
    fast path's within a factor ~2 of them either way. Models with pointwise layers are compared in
    float64 only (their float32 spread is the widest); every op is compared in float32 below."""
    module = sphc.load(src)
    seed = int(torch.randint(0, 2**31, ()).item())
    torch.manual_seed(seed)
    model = module.Model()
    lead = (batch, 3) if model.input.set else (batch,)  # a set input: 3 slots, the last one padding
    x0 = torch.randn(*lead, *module.Model.input_shape, dtype=torch.float64)
    mask = (torch.arange(3).expand(batch, 3) < 2,) if model.input.set else ()
    names = ["output", "grad input"] + [f"grad {n}" for n, _ in model.named_parameters()]
    sampled = any(isinstance(m, (layers.S2Pointwise, layers.SO3Pointwise)) for m in model.modules())
    want = _run(module, "reference", torch.float64, seed, x0, *mask)
    ref32 = None if sampled else _run(module, "reference", torch.float32, seed, x0, *mask)
    for dtype in (torch.float64,) if sampled else (torch.float64, torch.float32):
        got = _run(module, "torch", dtype, seed, x0, *mask)
        for k, (name, g, w) in enumerate(zip(names, got, want)):
            if torch.linalg.norm(w.flatten()) == 0:  # a parameter the loss does not reach: zero on both
                assert not g.any(), name
                continue
            tol = TOL[dtype] if dtype == torch.float64 else max(TOL[dtype], 3 * _rel(ref32[k].double(), w))
            err = _rel(g.double(), w)
            assert err <= tol, f"{name} ({dtype}): fast vs float64 reference {err:.2e} > {tol:.2e}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_match_the_reference(path):
    _compare_models(path.read_text(), batch=1)


@pytest.mark.parametrize("name", CASES)
def test_kernel_test_models_match_the_reference(name):
    _compare_models(CASES[name], batch=3)


# ---------------------------------------------------------------- the ops one by one


def _garbage_harmonic(shape, dtype) -> torch.Tensor:
    """Random complex entries everywhere, the layout's unused orders |m| > l included."""
    return torch.randn(shape, dtype=COMPLEX[dtype])


def _tp_layers(name: str, dtype: torch.dtype):
    model = sphc.load(CASES[name]).Model().to(dtype)
    children = list(model.children())
    i = next(k for k, m in enumerate(children) if isinstance(m, layers.TensorProduct))
    return children[i], children[i + 1]


def _tp_input(tp, dtype, batch=2):
    C, L_in, width = tp.in_shape
    return _garbage_harmonic((batch, C, L_in, 2 * L_in - 1, width), dtype)


def _ops_agree(fn, inputs: list[torch.Tensor], dtype) -> None:
    """fn(*inputs, backend) for both backends: values and the gradients of a random linear functional."""
    got = {}
    for backend in ("reference", "torch"):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        y = fn(*leaves, backend)
        if backend == "reference":
            g = torch.randn_like(y)
        y_real = torch.view_as_real(y) if y.is_complex() else y
        g_real = torch.view_as_real(g) if g.is_complex() else g
        grads = torch.autograd.grad((y_real * g_real).sum(), leaves)
        got[backend] = (y.detach(), grads)
    _assert_close(got["torch"][0], got["reference"][0], dtype, "value")
    for k, (gf, gr) in enumerate(zip(got["torch"][1], got["reference"][1])):
        _assert_close(gf, gr, dtype, f"grad of input {k}")


@pytest.fixture(params=["c-kernel", "torch-ops"])
def tp_impl(request, monkeypatch):
    """The fused TP's two CPU implementations: the compiled C kernel (``cpu_kernels``, the default
    where a C compiler exists) and the torch ops of ``fast_tp`` (``SPHC_CPU_KERNELS=0``)."""
    if request.param == "torch-ops":
        monkeypatch.setenv("SPHC_CPU_KERNELS", "0")
    elif not cpu_kernels.available(torch.zeros(1, dtype=torch.complex64)):
        pytest.skip("no C compiler here: the C kernel cannot be built (the torch ops are used)")
    return request.param


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("batch", [1, 37])
def test_tp_project_op(name, dtype, batch, tp_impl):
    """batch 37: 37 or 74 batch·channel lanes, i.e. full blocks of the C kernel's 32 and a padded one."""
    tp, gc = _tp_layers(name, dtype)
    ref, fast, tab = tp.reference_tables(), tp._list(tp._fast), tp._list(tp._tab)
    x = _tp_input(tp, dtype, batch)
    x = tp._merged(x) if tp.cross else x
    u = gc.u().detach()

    def fn(x, u, backend):
        return ops.tp_project(x, u, ref, fast, tab, tp.L, tp.key, backend, "")

    _ops_agree(fn, [x, u + 0.1 * _garbage_harmonic(u.shape, dtype)], dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", ["rmst-so3", "cross", "full-truncating"])
def test_tensor_product_op(name, dtype):
    tp, _ = _tp_layers(name, dtype)
    ref, fast = tp.reference_tables(), tp._list(tp._fast)
    x = _tp_input(tp, dtype)
    x = tp._merged(x) if tp.cross else x

    def fn(x, backend):
        return ops.tensor_product(x, ref, fast, tp.L, tp.width, tp.key, backend)

    _ops_agree(fn, [x], dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_degree_linear_op(dtype):
    L, C, T, K, V = 4, 3, 2, 2, 3
    x = _garbage_harmonic((2, C, L, 2 * L - 1, T), dtype)
    w = _garbage_harmonic((L, C, T, K, V), dtype)
    _ops_agree(lambda x, w, backend: ops.degree_linear(x, w, "", backend), [x, w], dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "domain,L,N,act,oversample",
    [("so3", 5, 2, "relu", 2), ("so3", 4, 3, "gelu", 1), ("s2", 5, 1, "relu", 2), ("s2", 4, 1, "tanh", 1)],
)
def test_pointwise_layer(domain, L, N, act, oversample, dtype):
    """Non-real signals with garbage at |m| > l: both read the real-signal part of |m| <= l only."""
    layer = _pointwise(domain, L, N, act, oversample).to(dtype)

    def fn(x, backend):
        layer.backend = backend
        return layer(x)

    _ops_agree(fn, [_garbage_harmonic((2, 3, L, 2 * L - 1, 2 * N - 1), dtype)], dtype)


def test_fast_ops_are_their_derivatives(tp_impl):
    """gradcheck (float64) of every fast op: fused (both implementations) and unfused TP,
    degree_linear, pointwise."""
    tp, gc = _tp_layers("rmst-so3", torch.float64)
    ref, fast, tab = tp.reference_tables(), tp._list(tp._fast), tp._list(tp._tab)
    x = _tp_input(tp, torch.float64, batch=1).requires_grad_(True)
    u = (gc.u().detach() + 0.1 * _garbage_harmonic(gc.u().shape, torch.float64)).requires_grad_(True)
    check = dict(eps=1e-6, atol=1e-7, fast_mode=True)  # random projections: the full Jacobian is slow
    assert torch.autograd.gradcheck(
        lambda x, u: ops.tp_project(x, u, ref, fast, tab, tp.L, tp.key, "torch", ""), (x, u), **check
    )
    assert torch.autograd.gradcheck(
        lambda x: ops.tensor_product(x, ref, fast, tp.L, tp.width, tp.key, "torch"), (x,), **check
    )
    xl = _garbage_harmonic((1, 2, 3, 5, 2), torch.float64).requires_grad_(True)
    w = _garbage_harmonic((3, 2, 2, 2, 1), torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, w: ops.degree_linear(x, w, "", "torch"), (xl, w), **check)
    for domain, N in (("so3", 2), ("s2", 1)):
        layer = _pointwise(domain, 3, N, "softplus", 2).double()
        layer.backend = "torch"
        xp = _garbage_harmonic((1, 2, 3, 5, 2 * N - 1), torch.float64).requires_grad_(True)
        assert torch.autograd.gradcheck(layer, (xp,), **check)


# ---------------------------------------------------------------- backend choice


def test_backend_names_and_defaults(monkeypatch):
    assert ops.check_backend("reference") == "reference"
    with pytest.raises(SphcError, match="auto, reference, torch, triton"):
        ops.check_backend("fast")
    monkeypatch.setenv("SPHC_BACKEND", "reference")
    model = sphc.load("Input s2 L=4 C=1 -> S2Conv C=2 L=3 N=2 -> ReLU oversample=2").Model()
    assert {m.backend for m in model.modules() if hasattr(m, "backend") and m is not model} == {"reference"}
    layers.set_backend(model, "auto")
    pointwise = [m for m in model.modules() if isinstance(m, (layers.S2Pointwise, layers.SO3Pointwise))]
    assert pointwise and all(m.backend == "auto" for m in pointwise)
