"""Kernel benchmark: sphc's Triton backend vs its torch reference vs e3nn, with an H100 roofline.

Parts (``--parts``, default the first four; ``floors`` prints the analytic roofline alone, no timing):

* ``layer`` — the efficient generalized layer (``TensorProduct mst`` then ``GenConv K tau=2 tau_u=4``; the
  Triton backend fuses the tensor product with GenConv's uniform matrix U) at batch 256, C = K = 16,
  L = 16, 32, 64 (GPU sizes; ``--cpu-quick``: batch 8, L = 8, 16). Only the layer is timed: the model
  compiled from ``bench_layer.model_text`` (``Input s2 -> GenConv -> EfficientLayer mst``) has its first
  two layers replaced by a constant, a prepared generalized input (random MW samples through the
  torch-reference ``Input`` + ``GenConv``), so the generated ``forward`` runs exactly the layer, whatever
  the backend fuses. Forward (no grad) and forward+backward (sum of squares of the output, gradients for
  the input and every weight) wall-clock time, median over adaptive repeats (CUDA: synchronised around
  each repeat of back-to-back calls lasting >= 2 ms), first call separately (it includes Triton
  compilation / autotuning). Backends: ``triton`` (CUDA, or Triton's interpreter when
  ``TRITON_INTERPRET=1`` was set — timing meaningless), ``torch`` (the fast torch path, the CPU default),
  ``reference`` (the readable oracle; where its activation
  estimate exceeds the memory it runs on the largest power-of-two fraction of the batch that fits, at
  least ``--ref-min-batch``, and its times are scaled up linearly — said in the row; OOM is caught),
  ``e3nn`` (``bench_layer.e3nn_layer``: ``o3.TensorProduct`` with channel-wise ``uuu`` paths on the same
  (l1, l2, l) paths + ``o3.Linear``; real features, an unconstrained linear: for scale, not the same
  maths; up to ``--e3nn-max-L`` because its Wigner-3j construction grows steeply with l). Peak activation
  memory of one forward+backward: CUDA ``max_memory_allocated`` minus the memory allocated before; CPU
  the largest "Total Allocated" of ``torch.profiler(profile_memory=True)`` (``bench_layer.profiler_peak``).
* ``roofline`` — per kernel and shape: analytic FLOPs and minimum bytes, forward and backward separately,
  the H100 floor ``max(FLOPs / 60e12, bytes / 3.0e12)`` and measured / floor. Kernels: the fused
  TP + projection onto U, GenConv's channel-wise V and cross-channel X steps, V+X as one kernel (what
  the Triton backend runs: one per-degree linear map; its floor uses the factorised FLOPs and skips the
  intermediate's bytes) — same shapes as ``layer`` — and S2Conv / SO3Conv at batch B, C = K channels, L, N = ``--N`` (model
  ``Input s2 L C -> S2Conv C N -> SO3Conv C N``). Measured: torch reference, each step timed on its own
  (TP+U = the TensorProduct module then GenConv's U einsum; V and X = GenConv's einsums on prepared
  inputs; S2Conv / SO3Conv = the layer modules, any backend); Triton (CUDA) from ``torch.profiler``
  kernel times, grouped by kernel-name regexes (``--kernel-regex CAT=REGEX``; defaults match sphc.plan's
  names ``l<i>_tensorproduct_*`` and ``l<i>_genconv*``; the raw per-kernel table is printed).
  Backward measured = (forward+backward) − forward.
* ``growth`` — forward time of the same layer vs L for full / mst / rmst, per available backend, with
  the fitted log-log exponent next to the paper's O(L^5) / O(L^4) / O(L^3 log L) and the exponent of
  the analytic FLOPs (fit and tables: ``_common.growth_tables``, shared with ``bench_layer.py`` part 2).
  GPU: the Triton backend (``--growth-backends``), L = 8, 16, 32, 64 at batch 64, K = 16 (full only to
  L = 32: at L = 64 its CG table has 247 M entries, a ~2 GB generated module); CPU: the reference,
  L = 8 … 24 at batch 2, K = 4, minimum over 15 interleaved rounds.
* ``mnist`` — one training step of ``examples/mnist.sph`` at batch 32 (forward, cross-entropy,
  backward, Adam step) per backend, steps/s, next to the anchor "Esteves et al. JAX spherical CNN
  ≈ 22 steps/s on a P100 (39k params, 64×64)".

FLOP counting (real floating-point operations, per example and channel unless said; complex multiply
= 6, complex add = 2, complex multiply-add = 8, real × complex = 2; index arithmetic not counted;
one *term* = one CG entry of ``layout.cg_pattern_size(l1, l2, l)`` (the analysis' count, exact parity
zeros included) times one column pair (``Path.n_pairs``)):

* TP + U forward: 10 per term (x1·x2 complex product 6, CG scale 2, accumulate 2) + 8 per
  (l, m, TP column, u) for the projection N·U; backward: recompute N (10 per term), dN = dA·Uᴴ and
  dU = Nᴴ·dA (8 + 8 per (l, m, column, u)), dx1 += C·dN·conj(x2) and dx2 += C·dN·conj(x1) (20 per term):
  30 per term + 16 per projection entry. Times B·C.
* GenConv V: 8·B·C·Σ_l (2l+1)·τ_u·τ; X: 8·B·K·C·Σ_l (2l+1)·τ; S2Conv / SO3Conv: 8·B·(the analysis'
  complex MACs). Backward of a linear map: 2× its forward (input gradient and weight gradient).

Minimum bytes (complex64 = 8 B, float32 CG values = 4 B; only valid entries, |m| <= l and existing
columns, not the padded layout): forward = inputs read once + weights (U, V, X, W; CG values for the
TP) read once + outputs written once; backward = output gradient + saved inputs + weights read once,
input gradients + weight gradients written once (nothing recomputed is re-read).

    python benchmarks/bench_kernels.py --cpu-quick           # CPU, ~2 min
    python benchmarks/bench_kernels.py --json out.json                      # GPU sizes (CUDA)
    python benchmarks/bench_kernels.py --parts growth --growth-L 8 16 32 64 # one part
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import REPO, fmt_mib, fmt_s, growth_tables, machine, median, table  # noqa: E402
from bench_layer import e3nn_layer, model_text, profiler_peak  # noqa: E402

PEAK_FLOPS = 60e12  # H100 SXM fp32 (non-tensor-core), the roofline's compute ceiling
PEAK_BW = 3.0e12  # H100 HBM3 bytes/s (a device-to-device copy measured ~3.0 TB/s)
ANCHOR_MNIST = "Esteves et al. JAX spherical CNN ≈ 22 steps/s on a P100 (39k params, 64×64)"
#: Triton kernel names (``sphc.plan``: the fused TP kernels are ``l<i>_tensorproduct_fwd`` / ``_bwd``, the
#: per-degree linear kernels of the GenConv after it — V and X as one map — ``l<i>_genconv...``).
DEFAULT_REGEX = {"TP+U": r"tensorproduct|tp_project", "V+X": r"genconv"}
BACKENDS = ("triton", "torch", "reference", "e3nn")


class Skip(Exception):
    """A measurement that cannot run here; its message goes into the table."""


# ---------------------------------------------------------------- environment


def pick_device(arg: str) -> str:
    if arg == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if arg == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    return arg


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def backend_skip(backend: str, device: str) -> str | None:
    """Why ``backend`` cannot run on ``device`` (None: it can)."""
    if backend == "triton":
        if device != "cuda" and not interpreting():
            return "skipped: no CUDA device"
        try:
            import triton  # noqa: F401
        except ImportError as e:
            return f"skipped: triton not importable ({e})"
    if backend == "e3nn":
        try:
            import e3nn  # noqa: F401
        except Exception as e:  # e3nn's import can fail in more ways than ImportError
            return f"skipped: e3nn not importable ({type(e).__name__}: {e})"
    return None


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def device_memory(device: str) -> int:
    """Bytes a measurement may use: 85 % of the GPU's memory, or 70 % of MemAvailable."""
    if device == "cuda":
        return int(0.85 * torch.cuda.get_device_properties(0).total_memory)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable"):
                return int(0.7 * int(line.split()[1]) * 1024)
    except OSError:
        pass
    return 8 * 2**30


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- models and the layer harness

_MODULES: dict[str, object] = {}


def load(text: str):
    """The generated module of ``text`` (compiled once per process)."""
    import sphc

    if text not in _MODULES:
        _MODULES[text] = sphc.load(text)
    return _MODULES[text]


def new_model(text: str, backend: str, device: str, seed: int = 0):
    """``Model(backend=...)`` on ``device``; the torch backend also works with an sphc that has no argument."""
    mod = load(text)
    torch.manual_seed(seed)  # same weights for every backend
    try:
        model = mod.Model(backend=backend)
    except TypeError:
        if backend != "reference":
            raise Skip("skipped: this sphc's Model() takes no backend argument (no Triton backend)") from None
        model = mod.Model()
    return model.to(device)


class Const(torch.nn.Module):
    """Stands in for the front layers: returns the prepared input whatever it is given."""

    def __init__(self, value):
        super().__init__()
        self.value = value  # a plain attribute: not a buffer, never moved or saved

    def forward(self, _):
        return self.value


def prepared_input(front_text: str, n_front: int, batch: int, device: str):
    """A valid input of the layer under test: random MW samples through the first ``n_front`` layers
    of the torch-reference model of ``front_text`` (a leaf tensor that requires grad)."""
    model = new_model(front_text, "reference", device, seed=1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *model.input_shape, generator=g).to(device)
    with torch.no_grad():
        for _, m in list(model.named_children())[:n_front]:
            x = m(x)
    return x.detach().contiguous().requires_grad_(True)


def harness(text: str, n_front: int, x, backend: str, device: str):
    """The model of ``text`` whose first ``n_front`` layers are replaced by the constant ``x``."""
    model = new_model(text, backend, device)
    names = [n for n, _ in model.named_children()]
    setattr(model, names[0], Const(x))
    for n in names[1:n_front]:
        setattr(model, n, torch.nn.Identity())
    return model


def loss_of(y):
    return (torch.view_as_real(y) if y.is_complex() else y).square().sum()


def steps(model, inputs, call):
    """(fwd, fwd_bwd) closures: forward without grad; forward + backward of the sum of squares."""
    params = [p for p in model.parameters() if p.requires_grad]

    def fwd():
        with torch.no_grad():
            return call()

    def fwd_bwd():
        for p in params + inputs:
            p.grad = None
        loss_of(call()).backward()

    return fwd, fwd_bwd


# ---------------------------------------------------------------- timing and memory


def time_fn(fn, device: str, target_s: float = 1.0, min_reps: int = 3, max_reps: int = 50) -> dict:
    """First call, then adaptive repeats (about ``target_s`` in all): {'first', 'times'} in seconds.

    On CUDA each repeat times ``inner`` back-to-back calls between two synchronisations (enough to
    last ~2 ms), so launch and synchronisation overheads do not swamp microsecond kernels.
    """
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t
    inner = 1
    if device == "cuda":
        t = time.perf_counter()
        fn()
        sync(device)
        inner = max(1, min(50, int(2e-3 / max(time.perf_counter() - t, 1e-7))))
    times = []
    t_all = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - t_all < target_s):
        sync(device)
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        times.append((time.perf_counter() - t) / inner)
    return {"first": first, "times": times, "inner": inner}


def peak_memory(step, device: str) -> int | None:
    """Activation memory of one ``step()``: CUDA peak minus allocated before; CPU profiler peak."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return profiler_peak(step)


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


# ---------------------------------------------------------------- analytic costs


def _rows(taus, L=None) -> int:
    """Σ_l (2l+1)·τ_l: valid complex entries per channel of a signal of type τ."""
    return sum((2 * l + 1) * t for l, t in enumerate(taus[:L] if L else taus))


def _cost(name, shape, ff, bf, fb, bb) -> dict:
    return {
        "kernel": name,
        "shape": shape,
        "flops_fwd": ff,
        "bytes_fwd": bf,
        "flops_bwd": fb,
        "bytes_bwd": bb,
    }


def floor_s(flops: float, nbytes: float) -> float:
    return max(flops / PEAK_FLOPS, nbytes / PEAK_BW)


def layer_costs(text: str, B: int) -> list[dict]:
    """Analytic FLOPs / bytes of the fused TP + U, GenConv V, GenConv X and V+X as one kernel."""
    import sphc
    from sphc.layout import cg_pattern_size

    a = sphc.check_source(text)
    i = next(k for k, x in enumerate(a.layers) if type(x.layer).__name__ == "TensorProduct")
    tp, gcv = a.layers[i], a.layers[i + 1]
    C, K, Lg = tp.t_in.C, gcv.layer.K, gcv.layer.L
    tau, tau_u = gcv.layer.tau, gcv.layer.tau_u
    taus_tp = tp.t_out.tau[:Lg]
    live = [l for l, k in enumerate(taus_tp) if k]
    terms = sum(cg_pattern_size(p.l1, p.l2, p.l) * p.n_pairs for p in tp.paths if p.l < Lg)
    proj = sum((2 * l + 1) * taus_tp[l] * tau_u for l in live)
    rows_u = sum((2 * l + 1) * tau_u for l in live)
    rows_t = sum((2 * l + 1) * tau for l in live)
    x_b = 8 * B * C * _rows(tp.t_in.tau)
    a_b = 8 * B * C * rows_u
    u_b = 8 * sum(taus_tp[l] * tau_u for l in live)
    cg_b = 4 * tp.cg_entries
    shape = f"B={B} C={C} L={tp.t_in.L} paths={len(tp.paths)} τ_u={tau_u}"
    out = [
        _cost(
            "TP+U (fused)",
            shape,
            B * C * (10 * terms + 8 * proj),
            x_b + u_b + cg_b + a_b,
            B * C * (30 * terms + 16 * proj),
            x_b + a_b + u_b + cg_b + x_b + u_b,
        )
    ]
    b_b = 8 * B * C * rows_t
    v_b = 8 * C * len(live) * tau_u * tau
    f_v = 8 * B * C * sum((2 * l + 1) * tau_u * tau for l in live)
    out.append(
        _cost(
            "GenConv V",
            f"B={B} C={C} τ_u={tau_u}→τ={tau}",
            f_v,
            a_b + v_b + b_b,
            2 * f_v,
            2 * (a_b + v_b) + b_b,
        )
    )
    y_b = 8 * B * K * rows_t
    w_b = 8 * C * K * len(live)
    f_x = 8 * B * K * C * rows_t
    out.append(
        _cost("GenConv X", f"B={B} C={C}→K={K} τ={tau}", f_x, b_b + w_b + y_b, 2 * f_x, y_b + 2 * (b_b + w_b))
    )
    # V and X as one kernel (sphc's Triton backend): the intermediate B never reaches memory
    vx_f, vx_b = a_b + v_b + w_b + y_b, y_b + 2 * (a_b + v_b + w_b)
    out.append(
        _cost("GenConv V+X", f"B={B} C={C}→K={K} τ_u={tau_u}→τ={tau}", f_v + f_x, vx_f, 2 * (f_v + f_x), vx_b)
    )
    return out


def conv_costs(text: str, B: int) -> list[dict]:
    """Analytic FLOPs / bytes of the S2Conv and SO3Conv layers of ``text``."""
    import sphc

    out = []
    for x in sphc.check_source(text).layers:
        kind = type(x.layer).__name__
        if kind not in ("S2Conv", "SO3Conv"):
            continue
        t_in, t_out = x.t_in, x.t_out
        i_b = 8 * B * t_in.C * _rows(t_in.tau, t_out.L)
        o_b = 8 * B * t_out.C * _rows(t_out.tau)
        w_b = 8 * t_in.C * t_out.C * sum(a * b for a, b in zip(t_in.tau, t_out.tau))
        f = 8 * B * x.macs
        shape = f"B={B} C={t_in.C}→{t_out.C} L={t_out.L} N={t_out.N}"
        out.append(_cost(kind, shape, f, i_b + w_b + o_b, 2 * f, o_b + 2 * (i_b + w_b)))
    return out


def reference_estimate(text: str, B: int) -> int:
    """Bytes the torch reference needs for one fwd+bwd of the layer: (6 + L/4)× its padded TP output.

    Calibrated on CPU with the profiler's allocation peak (batch 4, C=16, mst: 7.2×, 9.0×, 10.9× at
    L = 8, 16, 24; the distinct CG products it keeps for backward outnumber the output entries).
    """
    import sphc

    a = sphc.check_source(text)
    tp = next(x for x in a.layers if type(x.layer).__name__ == "TensorProduct")
    return int((6 + tp.t_in.L / 4) * B * tp.out_bytes)


# ---------------------------------------------------------------- part: layer (+ roofline sub-steps)


def layer_text(L: int, args) -> str:
    return model_text(L, args.K, args.tau, args.tau_u, args.mix)


def front_text(L: int, args) -> str:
    return f"Input s2 L={L} C=1 -> GenConv K={args.K} tau={args.tau}"


def build_layer(L: int, backend: str, x, args, device: str):
    """(call, inputs, model) for the layer under test with one backend."""
    if backend == "e3nn":
        import sphc

        text = layer_text(L, args)
        info = next(x_ for x_ in sphc.check_source(text).layers if type(x_.layer).__name__ == "TensorProduct")
        torch.manual_seed(0)
        t = time.perf_counter()
        e_tp, e_lin, irr_in = e3nn_layer(info, args.K, args.tau)
        build = time.perf_counter() - t
        g = torch.Generator().manual_seed(2)
        x1 = torch.randn(args.batch, irr_in.dim, generator=g).to(device).requires_grad_(True)
        x2 = torch.randn(args.batch, irr_in.dim, generator=g).to(device).requires_grad_(True)
        model = torch.nn.Sequential(e_tp, e_lin).to(device)
        model.build_s = build

        def call():
            return e_lin(e_tp(x1, x2))

        return call, [x1, x2], model
    if backend == "reference":  # the reference at a batch that fits, timed ×(batch / that batch)
        b, mem = args.batch, device_memory(device)
        est = reference_estimate(layer_text(L, args), b)
        while b > 1 and reference_estimate(layer_text(L, args), b) > mem:
            b //= 2
        if b < min(args.ref_min_batch, args.batch):
            raise Skip(
                f"skipped: needs ≈{est / 2**30:.0f} GiB (> {mem / 2**30:.0f} GiB) at batch {args.batch}"
            )
        if b < args.batch:
            x = x[:b].detach().clone().requires_grad_(True)
    t = time.perf_counter()
    model = harness(layer_text(L, args), 2, x, backend, device)
    model.build_s = time.perf_counter() - t
    dummy = torch.empty(0, device=device)
    return (lambda: model(dummy)), [x], model


def measure_backend(L: int, backend: str, x, args, device: str) -> dict:
    """Time one backend on the layer; sphc's warnings (e.g. a Triton layer falling back to the
    reference) are recorded in the row, so a fallback is never reported as a kernel time."""
    out: dict = {"backend": backend, "L": L}
    why = backend_skip(backend, device)
    if why is None and backend == "e3nn" and args.e3nn_max_L < L:
        why = f"skipped: L > --e3nn-max-L {args.e3nn_max_L} (e3nn's Wigner-3j build grows steeply with l)"
    if why is not None:
        out["skipped"] = why
        return out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _measure_backend(L, backend, x, args, device, out)
    sphc_warnings = sorted({str(w.message) for w in caught if str(w.message).startswith("sphc")})
    if sphc_warnings:
        out["warnings"] = sphc_warnings
        for m in sphc_warnings:
            print(f"  {backend} WARNING: {m}", flush=True)
    return out


def _measure_backend(L: int, backend: str, x, args, device: str, out: dict) -> None:
    try:
        call, inputs, model = build_layer(L, backend, x, args, device)
        out["build_s"] = model.build_s
        fwd, fwd_bwd = steps(model, inputs, call)
        out["fwd"] = time_fn(fwd, device, args.target_s)
        out["fwd_bwd"] = time_fn(fwd_bwd, device, args.target_s)
        out["peak"] = peak_memory(fwd_bwd, device)
        b = inputs[0].shape[0]
        if b != args.batch:  # measured on a smaller batch: times scaled to the full one
            out["batch"], out["scale"] = b, args.batch / b
            for k in ("fwd", "fwd_bwd"):
                out[k] = {
                    "first": out[k]["first"] * out["scale"],
                    "times": [t * out["scale"] for t in out[k]["times"]],
                }
        if backend in ("triton", "torch", "reference"):
            with torch.no_grad():
                out["_y"] = fwd().detach()
        if "roofline" in args.parts and backend == "reference":
            try:
                out["substeps"] = torch_substeps(model, inputs[0], device, args, out.get("scale", 1.0))
            except Exception as e:  # the reference layers' internals are sphc's business: report, go on
                print(f"  torch sub-steps not timed: {type(e).__name__}: {e}", file=sys.stderr)
        if "roofline" in args.parts and backend == "triton" and device == "cuda":
            try:
                out["kernels"] = profile_kernels(fwd, fwd_bwd)
            except Exception as e:
                print(f"  triton kernel profile failed: {type(e).__name__}: {e}", file=sys.stderr)
        del call, inputs, model, fwd, fwd_bwd
    except Skip as e:
        out["skipped"] = str(e)
    except Exception as e:
        if is_oom(e):
            out["skipped"] = "skipped: out of memory"
        else:
            out["skipped"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            out["traceback"] = traceback.format_exc()
            print(out["traceback"], file=sys.stderr)
    free(device)


def torch_substeps(model, x, device: str, args, scale: float = 1.0) -> dict:
    """Each step of the reference layer timed on its own: TP+U, V, X (fwd and fwd+bwd)."""
    kids = [m for _, m in model.named_children()]
    tp = next(m for m in kids if type(m).__name__ == "TensorProduct")
    gcv = next(m for m in kids if type(m).__name__ == "GenConv")

    def trunc(y, L):
        c = y.shape[3] // 2
        return y[:, :, :L, c - (L - 1) : c + L]

    u, v, w = gcv.u, gcv.v, gcv.x  # PackedWeight modules of the reference GenConv
    with torch.no_grad():
        a0 = torch.einsum("bclmt,ltu->bclmu", trunc(tp(x), gcv.L), u())
        b0 = torch.einsum("bclmu,cluv->bclmv", a0, v())
    a0 = a0.contiguous().requires_grad_(True)
    b0 = b0.contiguous().requires_grad_(True)
    cases = {
        "TP+U": (lambda: torch.einsum("bclmt,ltu->bclmu", trunc(tp(x), gcv.L), u()), [x], u),
        "V": (lambda: torch.einsum("bclmu,cluv->bclmv", a0, v()), [a0], v),
        "X": (lambda: torch.einsum("bclmv,ckl->bklmv", b0, w()), [b0], w),
    }
    out = {}
    for name, (call, inputs, mod) in cases.items():
        fwd, fwd_bwd = steps(mod, inputs, call)
        out[name] = {
            "fwd": scale * median(time_fn(fwd, device, args.target_s / 2)["times"]),
            "fwd_bwd": scale * median(time_fn(fwd_bwd, device, args.target_s / 2)["times"]),
        }
    return out


def profile_kernels(fwd, fwd_bwd, reps: int = 3) -> dict:
    """Per-kernel device time (µs per call) of ``fwd`` and ``fwd_bwd`` from torch.profiler (CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for name, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
        kernels = {}
        for e in p.key_averages():
            dt = getattr(e, "self_device_time_total", None)
            if dt is None:
                dt = getattr(e, "self_cuda_time_total", 0)
            if dt and str(getattr(e, "device_type", "")).endswith("CUDA"):
                kernels[e.key] = kernels.get(e.key, 0.0) + dt / reps * 1e-6  # seconds per call
        out[name] = kernels
    return out


def classify(kernels: dict[str, float], regexes: dict[str, str]) -> dict[str, float]:
    """Sum kernel times per category (first matching regex, case-insensitive; else 'other')."""
    out: dict[str, float] = {}
    for k, t in kernels.items():
        cat = next((c for c, rx in regexes.items() if re.search(rx, k, re.I)), "other")
        out[cat] = out.get(cat, 0.0) + t
    return out


def measure_convs(L: int, backends, args, device: str) -> dict:
    """S2Conv and SO3Conv modules timed alone (fwd, fwd+bwd) per backend."""
    C, N = args.K, min(args.N, L)
    s2 = f"Input s2 L={L} C={C} -> S2Conv C={C} N={N}"
    so3 = f"{s2} -> SO3Conv C={C} N={N}"
    out = {"costs": conv_costs(so3, args.batch)}
    cases = {"S2Conv": (s2, 1, s2, 1), "SO3Conv": (so3, 2, s2, 2)}
    for kind, (text, n_front, ftext, f_front) in cases.items():
        try:
            x = prepared_input(ftext, f_front, args.batch, device)
        except Exception as e:
            out[kind] = {"skipped": f"failed: {type(e).__name__}: {e}"}
            continue
        for backend in backends:
            if backend == "e3nn":
                continue
            why = backend_skip(backend, device)
            key = f"{kind}/{backend}"
            if why:
                out[key] = {"skipped": why}
                continue
            try:
                model = harness(text, n_front, x, backend, device)
                dummy = torch.empty(0, device=device)
                fwd, fwd_bwd = steps(model, [x], lambda m=model, d=dummy: m(d))
                out[key] = {
                    "fwd": median(time_fn(fwd, device, args.target_s / 2)["times"]),
                    "fwd_bwd": median(time_fn(fwd_bwd, device, args.target_s / 2)["times"]),
                }
                del model, fwd, fwd_bwd
            except Skip as e:
                out[key] = {"skipped": str(e)}
            except Exception as e:
                out[key] = {"skipped": "out of memory" if is_oom(e) else f"failed: {type(e).__name__}: {e}"}
            free(device)
        del x
        free(device)
    return out


def run_layer_part(args, device: str, backends, res: dict, t0: float) -> None:
    res.setdefault("layer", {})
    res.setdefault("convs", {})
    for L in args.L:
        if args.budget_s and time.perf_counter() - t0 > args.budget_s:
            print(f"\nL={L}: skipped (time budget --budget-s {args.budget_s:.0f} s spent)", flush=True)
            continue
        print(f"\n== L={L}: batch {args.batch}, C=K={args.K}, tau={args.tau}, tau_u={args.tau_u}", flush=True)
        t = time.perf_counter()
        x = prepared_input(front_text(L, args), 2, args.batch, device)
        rows = {}
        costs = layer_costs(layer_text(L, args), args.batch)
        for backend in backends:
            r = measure_backend(L, backend, x, args, device)
            rows[backend] = r
            print(f"  {backend}: {brief(r)}", flush=True)
        ys = {b: r.pop("_y") for b, r in rows.items() if "_y" in r}
        for fast in (b for b in ("triton", "torch") if b in ys and "reference" in ys):
            yt, yr = ys[fast][: ys["reference"].shape[0]], ys["reference"]  # the reference may run fewer rows
            d = (yt - yr).abs().max().item() / max(yr.abs().max().item(), 1e-30)
            rows.setdefault("check", {})[f"{fast}_vs_reference_rel_max"] = d
            print(f"  check: max |{fast} − reference| / max |reference| = {d:.2e}")
        del ys, x
        free(device)
        conv = measure_convs(L, backends, args, device) if "roofline" in args.parts else {}
        res["layer"][str(L)] = {"rows": rows, "costs": costs, "wall_s": time.perf_counter() - t}
        res["convs"][str(L)] = conv
        print(layer_table(L, rows, args, device), flush=True)
        if "roofline" in args.parts:
            print(roofline_table(L, rows, costs, conv, args), flush=True)
            kt = kernel_table(rows.get("triton", {}))
            if kt:
                print(kt, flush=True)
        dump(args, res)


def brief(r: dict) -> str:
    if "skipped" in r:
        return r["skipped"]
    fb = median(r["fwd_bwd"]["times"])
    return (
        f"build {fmt_s(r.get('build_s'))}, first fwd {fmt_s(r['fwd']['first'])}, "
        f"fwd {fmt_s(median(r['fwd']['times']))}, fwd+bwd {fmt_s(fb)}, peak {fmt_mib(r.get('peak'))}"
    )


def _ratio(r: dict, base: dict) -> str:
    if "fwd_bwd" not in r or "fwd_bwd" not in base:
        return "-"
    return f"{median(r['fwd_bwd']['times']) / median(base['fwd_bwd']['times']):.3g}"


def layer_table(L: int, rows: dict, args, device: str) -> str:
    out = []
    tri, ref = rows.get("triton", {}), rows.get("reference", {})
    for b in (b for b in BACKENDS if b in rows):
        r = rows[b]
        if "skipped" in r:
            out.append((b, "-", "-", "-", "-", "-", "-", r["skipped"]))
            continue
        fb = r["fwd_bwd"]["times"]
        note = f"{len(fb)} reps; build {fmt_s(r.get('build_s'))}"
        if b == "e3nn":
            note += "; real irreps + unconstrained o3.Linear: not the same maths, for scale"
        if r.get("warnings"):
            note += "; WARNING: " + " | ".join(r["warnings"])
        if "scale" in r:
            note += f"; measured at batch {r['batch']}, times ×{r['scale']:g}, memory not scaled"
        out.append(
            (
                b,
                fmt_s(r["fwd"]["first"]),
                fmt_s(median(r["fwd"]["times"])),
                f"{fmt_s(median(fb))} ({fmt_s(min(fb))} – {fmt_s(max(fb))})",
                fmt_mib(r.get("peak")),
                _ratio(r, tri),
                _ratio(r, ref),
                note,
            )
        )
    title = (
        f"Efficient generalized layer ({args.mix} TP + GenConv), L={L}, batch {args.batch}, C=K={args.K}, "
        f"tau={args.tau}, tau_u={args.tau_u}, float32, {device} (median)"
    )
    mem = "CUDA max_memory_allocated − allocated before" if device == "cuda" else "torch.profiler alloc peak"
    t = table(
        (
            "backend",
            "first fwd",
            "fwd",
            "fwd+bwd (min – max)",
            f"act. memory ({mem})",
            "fwd+bwd ÷ triton",
            "fwd+bwd ÷ reference",
            "notes",
        ),
        out,
        title,
    )
    lines = [t]
    for b, name in (("torch", "torch/triton"), ("reference", "reference/triton"), ("e3nn", "e3nn/triton")):
        lines.append(f"{name} (fwd+bwd) = {_ratio(rows.get(b, {}), tri)}")
    if tri.get("peak") and ref.get("peak"):
        per = ref.get("scale", 1.0)  # the reference may have run on a fraction of the batch
        lines.append(
            f"activation memory reference/triton = {ref['peak'] * per / tri['peak']:.3g}"
            + (f" (reference measured at batch {ref['batch']}, ×{per:g})" if "scale" in ref else "")
        )
    return "\n".join(lines)


def roofline_table(L: int, rows: dict, costs: list[dict], conv: dict, args) -> str:
    """One row per kernel: analytic FLOPs / bytes / H100 floor, measured torch and Triton times."""
    ref, tri = rows.get("reference", {}), rows.get("triton", {})
    tri_k = {}
    if "kernels" in tri:
        tri_k = {p: classify(tri["kernels"][p], args.regex) for p in ("fwd", "fwd_bwd")}
    total = {"kernel": "layer total (TP+U, V+X)", "shape": costs[0]["shape"]}
    for k in ("flops_fwd", "bytes_fwd", "flops_bwd", "bytes_bwd"):
        total[k] = sum(c[k] for c in costs if c["kernel"] in ("TP+U (fused)", "GenConv V+X"))
    keys = {"TP+U (fused)": "TP+U", "GenConv V": "V", "GenConv X": "X", "GenConv V+X": "V+X"}
    sub = dict(ref.get("substeps", {}))
    if "V" in sub and "X" in sub:  # the reference runs V and X as two einsums: their sum
        sub["V+X"] = {p: sub["V"][p] + sub["X"][p] for p in ("fwd", "fwd_bwd")}
    measured: list[tuple[dict, dict[str, tuple[float | None, float | None]]]] = []
    for c in costs:
        k = keys[c["kernel"]]
        s = sub.get(k, {})
        t = (tri_k["fwd"].get(k), tri_k["fwd_bwd"].get(k)) if tri_k else (None, None)
        measured.append((c, {"reference": (s.get("fwd"), s.get("fwd_bwd")), "triton": t}))
    per = {}
    for b, r in (("reference", ref), ("triton", tri)):
        per[b] = (
            (median(r["fwd"]["times"]), median(r["fwd_bwd"]["times"])) if "fwd_bwd" in r else (None, None)
        )
    measured.append((total, per))
    for c in conv.get("costs", []):
        per = {}
        for b in ("reference", "triton"):
            r = conv.get(f"{c['kernel']}/{b}", {})
            per[b] = (r.get("fwd"), r.get("fwd_bwd"))
        measured.append((c, per))
    out = []
    for c, per in measured:
        ff, fb = floor_s(c["flops_fwd"], c["bytes_fwd"]), floor_s(c["flops_bwd"], c["bytes_bwd"])
        bound = "compute" if c["flops_fwd"] / PEAK_FLOPS > c["bytes_fwd"] / PEAK_BW else "memory"
        row = [
            c["kernel"],
            c["shape"],
            f"{c['flops_fwd'] / 1e9:.3g} / {c['flops_bwd'] / 1e9:.3g}",
            f"{c['bytes_fwd'] / 2**20:.4g} / {c['bytes_bwd'] / 2**20:.4g}",
            f"{c['flops_fwd'] / c['bytes_fwd']:.2g}",
            f"{fmt_s(ff)} / {fmt_s(fb)} ({bound})",
        ]
        for b in ("reference", "triton"):
            f, fwd_bwd = per.get(b, (None, None))
            bw = None if f is None or fwd_bwd is None else fwd_bwd - f
            row.append(f"{fmt_s(f)} / {fmt_s(bw)}")
            row.append(f"{'-' if f is None else f'{f / ff:.0f}'} / {'-' if bw is None else f'{bw / fb:.0f}'}")
        out.append(row)
    notes = []
    for b, r in (("reference", ref), ("triton", tri)):
        if "skipped" in r:
            notes.append(f"{b}: {r['skipped']}")
    if tri_k:
        notes.append(
            "triton per-kernel times: torch.profiler CUDA kernel time grouped by "
            + ", ".join(f"{k}=/{v}/" for k, v in args.regex.items())
            + f"; unmatched: fwd {fmt_s(tri_k['fwd'].get('other'))}, fwd+bwd {fmt_s(tri_k['fwd_bwd'].get('other'))}"
        )
    t = table(
        (
            "kernel",
            "shape",
            "GFLOP fwd / bwd",
            "MiB fwd / bwd",
            "FLOP/B fwd",
            "H100 floor fwd / bwd",
            "torch fwd / bwd",
            "torch ÷ floor",
            "triton fwd / bwd",
            "triton ÷ floor",
        ),
        out,
        f"Roofline, L={L}: floor = max(FLOPs / {PEAK_FLOPS:.0e}, bytes / {PEAK_BW:.1e}); measured on this "
        "run's device, bwd = (fwd+bwd) − fwd",
    )
    return "\n".join([t, *notes])


def kernel_table(tri: dict) -> str | None:
    if "kernels" not in tri:
        return None
    fwd, fb = tri["kernels"]["fwd"], tri["kernels"]["fwd_bwd"]
    names = sorted(fb, key=lambda k: -fb[k])[:20]
    rows = [(k[:90], fmt_s(fwd.get(k)), fmt_s(fb[k])) for k in names]
    return table(
        ("kernel (torch.profiler, CUDA)", "fwd, per call", "fwd+bwd, per call"),
        rows,
        "Triton backend kernels",
    )


# ---------------------------------------------------------------- part: floors (analytic only)


def run_floors_part(args) -> None:
    """The analytic roofline of every kernel at the configured sizes, without running anything."""
    rows = []
    for L in args.L:
        N = min(args.N, L)
        so3 = f"Input s2 L={L} C={args.K} -> S2Conv C={args.K} N={N} -> SO3Conv C={args.K} N={N}"
        for c in layer_costs(layer_text(L, args), args.batch) + conv_costs(so3, args.batch):
            ff, fb = floor_s(c["flops_fwd"], c["bytes_fwd"]), floor_s(c["flops_bwd"], c["bytes_bwd"])
            bound = "compute" if c["flops_fwd"] / PEAK_FLOPS > c["bytes_fwd"] / PEAK_BW else "memory"
            rows.append(
                (
                    L,
                    c["kernel"],
                    c["shape"],
                    f"{c['flops_fwd'] / 1e9:.4g} / {c['flops_bwd'] / 1e9:.4g}",
                    f"{c['bytes_fwd'] / 2**20:.4g} / {c['bytes_bwd'] / 2**20:.4g}",
                    f"{c['flops_fwd'] / c['bytes_fwd']:.3g}",
                    f"{fmt_s(ff)} / {fmt_s(fb)}",
                    bound,
                )
            )
    print(
        table(
            (
                "L",
                "kernel",
                "shape",
                "GFLOP fwd / bwd",
                "MiB fwd / bwd",
                "FLOP/B fwd",
                "H100 floor fwd / bwd",
                "bound",
            ),
            rows,
            f"Analytic H100 roofline floors (max(FLOPs / {PEAK_FLOPS:.0e}, bytes / {PEAK_BW:.1e})), batch "
            f"{args.batch}, C=K={args.K}, tau={args.tau}, tau_u={args.tau_u}, {args.mix}; nothing measured",
        ),
        flush=True,
    )


# ---------------------------------------------------------------- part: growth


def run_growth_part(args, device: str, backends, res: dict, t0: float) -> None:
    """Forward time of the layer vs L per mixing set and backend.

    CPU: every configuration built first, then ``--growth-rounds`` interleaved rounds (a noise burst
    of a shared machine hits all configurations alike), minimum per configuration. CUDA: one
    configuration at a time (memory), minimum over adaptive repeats.
    """
    wanted = args.growth_backends or (["triton"] if device == "cuda" else ["reference"])
    backends = [b for b in backends if b in wanted and b != "e3nn" and backend_skip(b, device) is None]
    out = res.setdefault("growth", {})
    for b in ("triton", "reference"):
        if b not in backends:
            print(f"\ngrowth, {b}: {backend_skip(b, device) or 'not requested (--growth-backends)'}")
    interleave = device == "cpu"
    for backend in backends:
        results: dict = {}
        built: dict = {}
        for L in args.growth_L:  # L outermost: a spent time budget cuts the largest L of every mix
            for mix in ("full", "mst", "rmst"):
                if mix == "full" and args.growth_full_max_L < L:
                    continue
                tag = f"growth {backend} {mix} L={L}"
                if args.budget_s and time.perf_counter() - t0 > args.budget_s:
                    print(f"  {tag}: skipped (time budget)", flush=True)
                    continue
                text = model_text(L, args.growth_K, args.tau, args.tau_u, mix)
                try:
                    est = reference_estimate(text, args.growth_batch) // 3 if backend == "reference" else 0
                    if est > device_memory(device):
                        raise Skip(f"skipped: needs ≈{est / 2**30:.0f} GiB")
                    ftext = f"Input s2 L={L} C=1 -> GenConv K={args.growth_K} tau={args.tau}"
                    x = prepared_input(ftext, 2, args.growth_batch, device)
                    model = harness(text, 2, x, backend, device)
                    dummy = torch.empty(0, device=device)
                    n_paths = len(next(x_ for x_ in _analysis(text).layers if x_.paths).paths)
                    cost = sum(c["flops_fwd"] for c in layer_costs(text, 1))
                    with torch.no_grad():
                        if interleave:
                            model(dummy)  # warm-up
                            built[(mix, L)] = (model, dummy, n_paths, cost, [])
                            continue
                        r = time_fn(lambda m=model, d=dummy: m(d), device, args.target_s / 2, min_reps=5)
                    results[(mix, L)] = (min(r["times"]), n_paths, cost)
                    print(f"  {tag}: {fmt_s(min(r['times']))} ({n_paths} paths)", flush=True)
                    del model, x
                except Skip as e:
                    print(f"  {tag}: {e}", flush=True)
                except Exception as e:
                    why = "out of memory" if is_oom(e) else f"failed: {type(e).__name__}: {e}"
                    print(f"  {tag}: {why}", flush=True)
                free(device)
        if built:
            with torch.no_grad():
                for _ in range(args.growth_rounds):
                    for model, dummy, _, _, reps in built.values():
                        t = time.perf_counter()
                        model(dummy)
                        reps.append(time.perf_counter() - t)
            for key, (_, _, n_paths, cost, reps) in built.items():
                results[key] = (min(reps), n_paths, cost)
            built.clear()
            free(device)
        for (mix, L), (t, n_paths, cost) in results.items():
            out[f"{backend}/{mix}/{L}"] = {"s": t, "paths": n_paths, "flops_per_example": cost}
        dump(args, res)
        if results:
            how = f"min of {args.growth_rounds} interleaved rounds" if interleave else "min over repeats"
            t1, t2 = growth_tables(
                results,
                f"{backend}: layer (TP+GenConv) forward time vs L ({how}; batch {args.growth_batch}, "
                f"C=K={args.growth_K}, tau={args.tau}, tau_u={args.tau_u}, float32, {device}; "
                "analytic forward FLOPs per example)",
                cost_name="FLOPs",
                cost_unit=" MFLOP",
                cost_scale=1e-6,
            )
            print(t1)
            print(t2, flush=True)


def _analysis(text: str):
    import sphc

    return sphc.check_source(text)


# ---------------------------------------------------------------- part: mnist training step


def run_mnist_part(args, device: str, backends, res: dict) -> None:
    import torch.nn.functional as F

    text = (REPO / "examples" / "mnist.sph").read_text()
    rows = []
    out = res.setdefault("mnist", {})
    # the reference first: the Triton model compiles and autotunes all its kernels on its first step
    for backend in sorted((b for b in backends if b != "e3nn"), key=lambda b: b != "reference"):
        why = backend_skip(backend, device)
        if why is None and backend == "triton" and device == "cpu":
            why = "skipped: Triton's CPU interpreter (a training step would take minutes; timing meaningless)"
        if why:
            rows.append((backend, "-", "-", "-", "-", why))
            continue
        try:
            model = new_model(text, backend, device)
            model.train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            g = torch.Generator().manual_seed(3)
            x = torch.randn(args.mnist_batch, *model.input_shape, generator=g).to(device)
            y = torch.randint(0, 10, (args.mnist_batch,), generator=g).to(device)

            def step(model=model, opt=opt, x=x, y=y):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                r = time_fn(step, device, args.target_s * 2, min_reps=5)
            warned = sorted({str(w.message) for w in caught if str(w.message).startswith("sphc")})
            params = sum(p.numel() for p in model.parameters())
            med = median(r["times"])
            out[backend] = {
                "steps_per_s": 1 / med,
                "times": r["times"],
                "first": r["first"],
                "params": params,
            }
            rows.append(
                (
                    backend,
                    f"{1 / med:.3g}",
                    fmt_s(med),
                    fmt_s(r["first"]),
                    f"{params:,}",
                    f"{len(r['times'])} steps" + "".join(f"; WARNING: {m}" for m in warned),
                )
            )
            print(f"  {backend}: {1 / med:.2f} steps/s (first step {fmt_s(r['first'])})", flush=True)
            del model, opt
        except Skip as e:
            rows.append((backend, "-", "-", "-", "-", str(e)))
        except Exception as e:
            traceback.print_exc()
            rows.append((backend, "-", "-", "-", "-", f"failed: {type(e).__name__}: {e}"))
        free(device)
        dump(args, res)
    rows.append(("anchor", "≈ 22", "-", "-", "39k", ANCHOR_MNIST))
    print(
        table(
            ("backend", "steps/s", "step, median", "first step", "params", "notes"),
            rows,
            f"examples/mnist.sph training step (fwd + cross-entropy + bwd + Adam), batch {args.mnist_batch}, "
            f"float32, {device}",
        ),
        flush=True,
    )
    dump(args, res)


# ---------------------------------------------------------------- main


def dump(args, res: dict) -> None:
    if args.json:
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1, default=str))
        tmp.replace(args.json)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-quick", action="store_true", help="CPU sizes: batch 8, L = 8 16, short growth")
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument(
        "--parts",
        default="layer,roofline,growth,mnist",
        help="comma list of parts: layer, roofline, growth, mnist, floors (the analytic roofline alone)",
    )
    ap.add_argument(
        "--backends",
        default="triton,torch,reference,e3nn",
        help="comma list (triton, torch = the fast torch path, reference = the oracle, e3nn)",
    )
    ap.add_argument("--L", type=int, nargs="+", default=None, help="bandlimits (default 16 32 64)")
    ap.add_argument("--batch", type=int, default=None, help="batch (default 256)")
    ap.add_argument("--K", type=int, default=16, help="channels in and out")
    ap.add_argument("--tau", type=int, default=2)
    ap.add_argument("--tau-u", type=int, default=4)
    ap.add_argument("--mix", default="mst", choices=("full", "mst", "rmst"))
    ap.add_argument("--N", type=int, default=4, help="azimuthal bandlimit of the S2Conv / SO3Conv shapes")
    ap.add_argument("--e3nn-max-L", type=int, default=16)
    ap.add_argument(
        "--ref-min-batch",
        type=int,
        default=8,
        help="smallest batch the reference runs at when the full batch does not fit (times scaled)",
    )
    ap.add_argument("--growth-L", type=int, nargs="+", default=None)
    ap.add_argument("--growth-batch", type=int, default=None)
    ap.add_argument("--growth-K", type=int, default=None)
    ap.add_argument("--growth-full-max-L", type=int, default=32)
    ap.add_argument("--growth-rounds", type=int, default=15, help="interleaved rounds on CPU")
    ap.add_argument(
        "--growth-backends",
        default=None,
        help="comma list (default: triton on CUDA, where every model compiles and autotunes its own "
        "kernels; the reference's growth is measured on CPU)",
    )
    ap.add_argument("--mnist-batch", type=int, default=32)
    ap.add_argument("--target-s", type=float, default=None, help="seconds of repeats per timing")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU (default 1)")
    ap.add_argument("--budget-s", type=float, default=None, help="skip units started after this many s")
    ap.add_argument(
        "--kernel-regex",
        action="append",
        default=[],
        metavar="CAT=REGEX",
        help="Triton kernel-name regex per roofline category (TP+U, V, X); repeatable",
    )
    ap.add_argument("--json", default=None, help="write every result to this JSON file (updated as it goes)")
    args = ap.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.growth_backends:
        args.growth_backends = [b.strip() for b in args.growth_backends.split(",") if b.strip()]
    args.regex = dict(DEFAULT_REGEX)
    for kv in args.kernel_regex:
        k, _, v = kv.partition("=")
        args.regex[k] = v
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = pick_device("cpu" if args.cpu_quick and args.device == "auto" else args.device)
    quick = args.cpu_quick
    args.L = args.L or ([8, 16] if quick else [16, 32, 64])
    args.batch = args.batch or (8 if quick else 256)
    args.growth_L = args.growth_L or ([8, 12, 16, 20, 24] if device == "cpu" else [8, 16, 32, 64])
    args.growth_batch = args.growth_batch or (2 if device == "cpu" else 64)
    args.growth_K = args.growth_K or (4 if device == "cpu" else 16)
    args.target_s = args.target_s or (2.0 if device == "cpu" else 1.0)
    if device == "cpu":
        torch.set_num_threads(args.threads or 1)
    print(machine())
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        print(
            f"GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs; torch {torch.__version__}"
        )
    try:
        import triton

        print(f"triton {triton.__version__}; TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')}")
    except ImportError:
        print("triton not importable")
    if device == "cpu" and not quick and max(args.L) > 16 and args.batch > 16:
        print("note: GPU sizes on a CPU; --cpu-quick runs batch 8, L = 8 16")
    print(f"load average at start: {', '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    res: dict = {"machine": machine(), "device": device, "args": {k: v for k, v in vars(args).items()}}
    t0 = time.perf_counter()
    backends = [b for b in BACKENDS if b in args.backends]
    if "floors" in args.parts:
        run_floors_part(args)
    if "layer" in args.parts or "roofline" in args.parts:
        run_layer_part(args, device, backends, res, t0)
    if "growth" in args.parts:
        print("\n== growth with L", flush=True)
        run_growth_part(args, device, backends, res, t0)
    if "mnist" in args.parts:
        print("\n== mnist training step", flush=True)
        run_mnist_part(args, device, backends, res)
    load_avg = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\ntotal wall time {fmt_s(time.perf_counter() - t0)}; load average at end: {load_avg}")
    res["wall_s"] = time.perf_counter() - t0
    dump(args, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
