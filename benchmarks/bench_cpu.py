"""CPU benchmark of the fast torch path (issue 10): both speed targets, with their baselines measured in
the same run, at 1 and 2 intra-op threads.

Parts (``--parts``, default all):

* ``mnist`` — one training step of ``examples/mnist.sph`` (batch 32, float32: forward, cross-entropy,
  backward, Adam step) with ``backend="reference"`` (today's torch code) and ``backend="torch"`` (the
  fast path; its fused tensor products run the C kernel of ``runtime.cpu_kernels`` where a C compiler
  exists, ``SPHC_CPU_KERNELS=0`` for the torch ops), interleaved rounds, median steps/s and their
  ratio (target ≥ 10×). The FLOP floor is the model's complex multiply-adds from the analysis (``sphc explain``'s MACs column) × 8 real FLOP × 3
  (forward + backward) × 32 examples over a single-thread float32 GEMM rate measured here
  (``torch.mm`` of 1024² matrices); the fast step is printed as a multiple of it (aim ≤ 3×). The
  analysis counts a pointwise layer as complex L×L matmuls per order and column of the oversampled
  grid, more than the restricted real transforms of ``runtime.fast_pointwise`` do, so the floor is
  an upper bound of the arithmetic the fast path needs, not a lower one: read the ratio accordingly.
* ``layer`` — the efficient layer (TensorProduct mst fused with GenConv, L = 16, C = K = 16, τ = 2,
  τ_u = 4, batch 8, float32), forward + backward: fast path, reference, and e3nn's channel-wise
  ``uuu`` + ``o3.Linear`` construction (``bench_layer.e3nn_layer``; skipped if e3nn is not
  importable: ``pip install --no-deps --target DIR e3nn opt_einsum opt_einsum_fx`` and put DIR on
  PYTHONPATH). Target: fast ≥ 3× e3nn; peak activation memory (``bench_layer.profiler_peak``: the
  CPU allocator's largest total during one step) at or below e3nn's.
* ``growth`` — forward + backward time of the fast fused layer vs L (C = K = 4, τ = 2, τ_u = 4, batch 2)
  for full / mst / rmst, log-log exponents next to the analytic MAC exponents
  (``_common.growth_tables``); full stops at ``--growth-full-max`` (its reference index tables,
  built by the layer's constructor, grow as L^5).

Timing: medians over interleaved rounds (a slow spell of the shared machine hits every variant);
the first call of each variant is a warm-up.

    PYTHONPATH=. python benchmarks/bench_cpu.py                  # everything, 1 and 2 threads
    PYTHONPATH=. python benchmarks/bench_cpu.py --parts mnist --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import REPO, fmt_mib, fmt_s, growth_tables, machine, median, table  # noqa: E402
from bench_layer import build, e3nn_layer, make_input, model_text, profiler_peak  # noqa: E402

import sphc  # noqa: E402


def gemm_rate(threads: int) -> float:
    """float32 FLOP/s of ``torch.mm`` on 1024² matrices (best of 5) at ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 1024**3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def rounds(fns: dict, reps: dict, n_rounds: int) -> dict[str, list[float]]:
    """Interleaved timing: each round runs every variant ``reps[v]`` times; a warm-up call first."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {v: [] for v in fns}
    for _ in range(n_rounds):
        for v, fn in fns.items():
            times[v] += [_timed(fn) for _ in range(reps[v])]
    return times


# ---------------------------------------------------------------- mnist training step


def mnist_step(backend: str, batch: int):
    model = sphc.load((REPO / "examples" / "mnist.sph").read_text()).Model(backend=backend)
    torch.manual_seed(0)
    x = torch.randn(batch, *model.input_shape)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def part_mnist(threads: int, rate1: float, args) -> str:
    torch.set_num_threads(threads)
    batch = 32
    macs = sum(x.macs for x in sphc.check_source((REPO / "examples" / "mnist.sph").read_text()).layers)
    floor = macs * 8 * 3 * batch / rate1
    fns = {b: mnist_step(b, batch) for b in ("reference", "torch")}
    times = rounds(fns, {"reference": 1, "torch": 5}, args.rounds)
    ref, fast = median(times["reference"]), median(times["torch"])
    rows = [
        ("reference", fmt_s(ref), f"{1 / ref:.2f}", "1.00", f"{ref / floor:.1f}"),
        ("torch (fast)", fmt_s(fast), f"{1 / fast:.2f}", f"{ref / fast:.2f}", f"{fast / floor:.1f}"),
    ]
    verdict = "PASS" if ref / fast >= 10 else "FAIL"
    return (
        table(
            ("backend", "step, median", "steps/s", "speed-up", "× FLOP floor"),
            rows,
            f"examples/mnist.sph training step, batch {batch}, float32, {threads} thread(s); "
            f"{len(times['reference'])} / {len(times['torch'])} timed steps",
        )
        + f"\nFLOP floor: {macs / 1e6:.2f} M complex MAC/example × 8 × 3 × {batch} = "
        f"{macs * 24 * batch / 1e9:.2f} GFLOP at {rate1 / 1e9:.1f} GFLOP/s (1-thread sgemm) = {fmt_s(floor)}"
        + f"\ntarget fast ≥ 10× reference: {ref / fast:.1f}× → {verdict}; fast = {fast / floor:.1f}× the floor"
    )


# ---------------------------------------------------------------- efficient layer vs e3nn


def _layer_variants(L: int, K: int, tau: int, tau_u: int, batch: int) -> dict:
    """name -> (step closure, description); e3nn left out when not importable."""
    text = model_text(L, K, tau, tau_u)
    torch.manual_seed(0)
    front, tp, gc_mod, info = build(text)
    x = make_input(front, L, batch, torch.float32).requires_grad_(True)
    out = {}
    for backend in ("torch", "reference"):

        def step(backend=backend):
            tp.backend = gc_mod.backend = backend
            x.grad = None
            for p in gc_mod.parameters():
                p.grad = None
            torch.view_as_real(gc_mod.after(tp, x)).square().sum().backward()

        out[backend] = step
    try:
        e_tp, e_lin, irr_in = e3nn_layer(info, K, tau)
    except ImportError as e:
        out["e3nn"] = f"skipped: e3nn not importable ({e})"
        return out
    g = torch.Generator().manual_seed(2)
    x1 = torch.randn(batch, irr_in.dim, generator=g, requires_grad=True)
    x2 = torch.randn(batch, irr_in.dim, generator=g, requires_grad=True)
    params = list(e_tp.parameters()) + list(e_lin.parameters())

    def e3nn_step():
        for p in params + [x1, x2]:
            p.grad = None
        e_lin(e_tp(x1, x2)).square().sum().backward()

    out["e3nn"] = e3nn_step
    return out


def part_layer(threads: int, args) -> str:
    torch.set_num_threads(threads)
    fns = _layer_variants(16, 16, 2, 4, 8)
    skipped = {k: v for k, v in fns.items() if isinstance(v, str)}
    fns = {k: v for k, v in fns.items() if not isinstance(v, str)}
    times = rounds(fns, {"torch": 5, "reference": 1, "e3nn": 2}, args.rounds)
    peaks = {k: profiler_peak(fn) for k, fn in fns.items()}
    fast = median(times["torch"])
    rows = []
    for k in ("torch", "reference", "e3nn"):
        if k in skipped:
            rows.append((k, "-", "-", "-", skipped[k]))
            continue
        t = median(times[k])
        rows.append((k, fmt_s(t), f"{t / fast:.2f}", fmt_mib(peaks[k]), f"{len(times[k])} timed steps"))
    lines = table(
        ("implementation", "fwd+bwd, median", "÷ fast", "peak activations", "notes"),
        rows,
        f"Efficient layer (TP mst + GenConv), L=16, C=K=16, tau=2, tau_u=4, batch 8, float32, {threads} thread(s)",
    )
    if "e3nn" in times:
        speed = median(times["e3nn"]) / fast
        mem_ok = peaks["torch"] is not None and peaks["e3nn"] is not None and peaks["torch"] <= peaks["e3nn"]
        lines += (
            f"\ntarget fast ≥ 3× e3nn: {speed:.2f}× → {'PASS' if speed >= 3 else 'FAIL'}; "
            f"peak memory ≤ e3nn's: {'PASS' if mem_ok else 'FAIL'}"
        )
    return lines


# ---------------------------------------------------------------- growth with L


def part_growth(threads: int, args) -> str:
    torch.set_num_threads(threads)
    results, fns = {}, {}
    for mix in ("full", "mst", "rmst"):
        for L in args.growth_L:
            if mix == "full" and args.growth_full_max < L:
                continue
            text = model_text(L, 4, 2, 4, mix)
            torch.manual_seed(0)
            front, tp, gc_mod, info = build(text)
            x = make_input(front, L, 2, torch.float32).requires_grad_(True)
            macs = sum(x_.macs for x_ in sphc.check_source(text).layers[-2:])

            def step(tp=tp, gc_mod=gc_mod, x=x):
                torch.view_as_real(gc_mod.after(tp, x)).square().sum().backward()

            fns[(mix, L)] = step
            results[(mix, L)] = (len(info.paths), macs)
    times = rounds(fns, dict.fromkeys(fns, 1), args.growth_rounds)
    res = {k: (min(times[k]), n, macs) for k, (n, macs) in results.items()}
    t1, t2 = growth_tables(
        res,
        f"fast fused layer (TP + GenConv) fwd+bwd vs L (min of {args.growth_rounds}; batch 2, C=K=4, "
        f"tau=2, tau_u=4, float32, {threads} thread(s)); MACs = TP + GenConv, per example",
    )
    return t1 + "\n" + t2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["mnist", "layer", "growth"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per timed part")
    ap.add_argument("--growth-L", nargs="+", type=int, default=[8, 12, 16, 24, 32])
    ap.add_argument("--growth-full-max", type=int, default=16)
    ap.add_argument("--growth-rounds", type=int, default=3)
    args = ap.parse_args()
    print(machine())
    print(f"load average at start: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    t0 = time.perf_counter()
    rate1 = gemm_rate(1)
    for threads in args.threads:
        print(f"\n## {threads} thread(s): sgemm {gemm_rate(threads) / 1e9:.1f} GFLOP/s")
        if "mnist" in args.parts:
            print(part_mnist(threads, rate1, args), flush=True)
        if "layer" in args.parts:
            print(part_layer(threads, args), flush=True)
        if "growth" in args.parts:
            print(part_growth(threads, args), flush=True)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\ntotal wall time {fmt_s(time.perf_counter() - t0)}; load average at end: {load}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
