"""The compiled C kernel of the efficient layer (``sphc.runtime.cpu_kernels``): built, used, and left
for the torch ops when it cannot be built.

Its values and gradients are checked against the reference in tests/test_fast_path.py
(``test_tp_project_op``, ``test_fast_ops_are_their_derivatives`` — both implementations — and every
whole-model comparison, which runs the default, i.e. this kernel where a C compiler exists).
"""

from __future__ import annotations

import os
import shutil
import warnings

import pytest
import torch
from test_fast_path import CASES, _tp_input, _tp_layers

from sphc.runtime import cpu_kernels, fast_tp, ops

HAVE_CC = shutil.which(os.environ.get("CC", "cc")) is not None


@pytest.fixture(autouse=True)
def fresh_library():
    """Each test decides how the library is found; later tests load the normal one again."""
    cpu_kernels._library.cache_clear()
    yield
    cpu_kernels._library.cache_clear()


def _tp_call(name: str, dtype: torch.dtype, batch: int):
    """(fn(x, u) of the fused TP op on the torch backend, x, u) for one kernel-test model."""
    tp, gc = _tp_layers(name, dtype)
    ref, fast, tab = tp.reference_tables(), tp._list(tp._fast), tp._list(tp._tab)
    x = _tp_input(tp, dtype, batch)
    x = tp._merged(x) if tp.cross else x
    u = gc.u().detach() + 0.1 * torch.randn_like(gc.u())

    def fn(x, u):
        return ops.tp_project(x, u, ref, fast, tab, tp.L, tp.key, "torch", "")

    return fn, x, u


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler on this machine")
def test_kernel_is_built_into_the_cache_and_used(tmp_path, monkeypatch):
    monkeypatch.setenv("SPHC_CACHE_DIR", str(tmp_path))
    for dtype in (torch.complex64, torch.complex128):
        assert cpu_kernels.available(torch.zeros(1, dtype=dtype))
    assert not cpu_kernels.available(torch.zeros(1))  # real tensors are not the TP's input
    built = list(tmp_path.rglob("tp_project_*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    cpu_kernels._library.cache_clear()
    assert cpu_kernels.available(torch.zeros(1, dtype=torch.complex64))
    assert built[0].stat().st_mtime_ns == stamp, "a second process must load the cached build, not rebuild"

    calls = []
    real = cpu_kernels.tp_project
    monkeypatch.setattr(cpu_kernels, "tp_project", lambda *a: calls.append(1) or real(*a))
    fn, x, u = _tp_call("rmst-so3", torch.float32, 2)
    fn(x, u)
    assert calls, "the torch backend on the CPU did not run the C kernel"


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler on this machine")
def test_no_cache_builds_in_a_temp_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SPHC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SPHC_NO_CACHE", "1")
    assert cpu_kernels.available(torch.zeros(1, dtype=torch.complex128))
    fn, x, u = _tp_call("rmst-so3", torch.float64, 2)
    assert fn(x, u).abs().sum() > 0
    assert not any(tmp_path.iterdir()), "SPHC_NO_CACHE must write nothing to the cache"


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler on this machine")
def test_threads_split_lanes_without_changing_a_bit():
    """Lane blocks are independent and grad u is summed per block in a fixed order: the result does
    not depend on the thread count (B·C = 37 lanes: a full block and a padded one)."""
    fn, x, u = _tp_call("cross", torch.float32, 37)
    assert x.shape[0] * x.shape[1] > cpu_kernels.LANES
    threads = torch.get_num_threads()
    got = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            xs, us = x.clone().requires_grad_(True), u.clone().requires_grad_(True)
            y = fn(xs, us)
            gx, gu = torch.autograd.grad(
                y, (xs, us), torch.randn_like(y, generator=torch.Generator().manual_seed(1))
            )
            got.append((y, gx, gu))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*got):
        assert torch.equal(a, b)


def test_no_compiler_means_the_torch_ops_silently(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not cpu_kernels.available(torch.zeros(1, dtype=torch.complex64))
    fn, x, u = _tp_call("rmst-so3", torch.float64, 2)
    monkeypatch.setenv("SPHC_CPU_KERNELS", "0")
    cpu_kernels._library.cache_clear()
    want = fn(x, u)
    monkeypatch.delenv("SPHC_CPU_KERNELS")
    assert torch.equal(fn(x, u), want)  # same torch ops either way


def test_a_failing_build_warns_once_and_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("SPHC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", shutil.which("false") or "false")
    with pytest.warns(cpu_kernels.CpuKernelWarning, match="SPHC_CPU_KERNELS=0"):
        assert not cpu_kernels.available(torch.zeros(1, dtype=torch.complex64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not cpu_kernels.available(torch.zeros(1, dtype=torch.complex64))
    assert not list(tmp_path.rglob("*.so"))


def test_switched_off_by_the_knob(monkeypatch):
    monkeypatch.setenv("SPHC_CPU_KERNELS", "0")
    assert not cpu_kernels.available(torch.zeros(1, dtype=torch.complex64))


@pytest.mark.parametrize("name", sorted(CASES)[:3])
def test_tables_cover_every_cg_term_and_pair_once(name):
    """One row per column pair of every path l < L, pointing at its path's nonzero CG terms, and every
    entry the kernel reads inside x (orders |m| ≤ l of the right degree)."""
    tp, _ = _tp_layers(name, torch.float64)
    _, x, u = _tp_call(name, torch.float64, 1)
    L_in, T = x.shape[2], x.shape[-1]
    plan = fast_tp.plan_of(tp._list(tp._fast), L_in, T, tp.L, u.shape[1])
    t = cpu_kernels.kernel_tables(plan, tp.L, u.shape[1], torch.float64)
    kept = [p for p in plan.paths if p.l < tp.L]
    assert t.pairs.shape[0] == sum(len(p.grid) for p in kept)
    assert t.terms.shape[0] == sum(int((p.cg != 0).sum()) for p in kept) == t.coef.numel()
    first, count = t.pairs[:, 3], t.pairs[:, 4]
    assert (count > 0).all() and (first + count <= t.terms.shape[0]).all()
    for row in t.pairs:
        la, ta = divmod(int(row[1]), (2 * L_in - 1) * T)
        lb, tb = divmod(int(row[2]), (2 * L_in - 1) * T)
        assert ta < T and tb < T and row[5] // u.shape[1] == row[0]
        m_a = t.terms[row[3] : row[3] + row[4], 0] - (L_in - 1)
        m_b = t.terms[row[3] : row[3] + row[4], 1] - (L_in - 1)
        assert (abs(m_a) <= la).all() and (abs(m_b) <= lb).all()
