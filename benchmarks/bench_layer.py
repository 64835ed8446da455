"""Layer benchmark: the reference efficient generalized layer (TensorProduct mst + GenConv) on CPU.

Part 1 — one efficient generalized layer at batch 32, C = K = 8, L = 16, tau = 2, tau_u = 4, float32,
forward and forward+backward, three implementations of the same tensor product:

* ``sphc``  — ``sphc.runtime.layers.TensorProduct`` (sparse gather-multiply-scatter) then ``sphc.runtime.layers.GenConv``,
  taken from the model compiled from ``MODEL`` below;
* ``dense`` — a straightforward dense-einsum tensor product written here: per path the full dense CG
  tensor (2l+1, 2l1+1, 2l2+1) from ``sphc.cg.cg_block``, ``einsum('mpq,bcpi,bcqj->bcmij')`` over all
  column pairs, the path's pairs selected, concatenated into the TP output columns in sphc's order,
  then the *same* GenConv module. It is first checked against ``sphc`` in float64 (max |diff| <= 1e-10,
  asserted), then timed in float32;
* ``e3nn`` (optional; skipped if e3nn is not importable) — the closest e3nn construction:
  ``o3.TensorProduct`` with channel-wise ``uuu`` instructions on the same (l1, l2, l) paths, multiplicity
  C x 4 (every ordered column pair of every channel), followed by ``o3.Linear`` onto K x tau copies of
  each degree. NOT the same maths: real features and real spherical harmonics instead of complex
  ones, and a full (unconstrained) linear instead of GenConv's factorised one; timing for scale only.

Each implementation runs in its own fresh subprocess (same seeds, so same weights and input), in
``--rounds`` alternating rounds whose timings are pooled. Single-threaded by default (``--threads``): on
a shared 2-core machine a 2-thread OpenMP region stalls whenever another process holds a core.
Peak memory, two methods, both over the timed forward+backward iterations after one warm-up:
``RSS peak Δ`` = Linux VmHWM (reset through /proc/self/clear_refs just before) minus VmRSS before,
i.e. what the process really touched, allocator caching included; ``torch alloc peak`` = the largest
"Total Allocated" of the CPU allocator seen by ``torch.profiler(profile_memory=True)`` during one
extra profiled iteration, relative to its start (tensor bytes only).

Part 2 — cost growth: forward time of the reference TensorProduct alone vs L (4, 8, 12, 16) for the
full / mst / rmst mixing sets (tau = 2 columns per degree, C = 4, batch 4), with the log-log slope
fitted over the measured L next to the paper's O(L^5) / O(L^4) / O(L^3 log L) claims. The analytic
complex multiply-add count of ``sphc explain`` is fitted the same way, as the noise-free reference.

    python benchmarks/bench_layer.py           # full, ~3-5 min (e3nn dominates)
    python benchmarks/bench_layer.py --quick   # smoke run (~1 min, no e3nn)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import (  # noqa: E402
    GROWTH_CLAIMS,
    REPO,
    fmt_mib,
    fmt_s,
    growth_tables,
    machine,
    median,
    table,
)


def model_text(L: int, K: int, tau: int, tau_u: int, mix: str = "mst") -> str:
    return (
        f"Input s2 L={L} C=1\n"
        f"  -> GenConv K={K} tau={tau}\n"
        f"  -> EfficientLayer {mix} L={L} K={K} tau={tau} tau_u={tau_u}\n"
    )


# ---------------------------------------------------------------- building blocks (torch imported lazily)


def build(text: str):
    """(front, tp, genconv, tp_info): the compiled model's layers before the TP, the TP and its GenConv."""
    import sphc
    from sphc.runtime import layers as rt

    mod = sphc.load(text)
    model = mod.Model()
    layers = list(model.children())
    i = next(k for k, m in enumerate(layers) if isinstance(m, rt.TensorProduct))
    assert isinstance(layers[i + 1], rt.GenConv), layers[i + 1]
    info = [x for x in sphc.check_source(text).layers if type(x.layer).__name__ == "TensorProduct"][0]
    return layers[:i], layers[i], layers[i + 1], info


def make_input(front, L: int, batch: int, real_dtype):
    """A valid TP input in the runtime layout: random MW samples through the layers before the TP."""
    import torch

    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, L, 2 * L - 1, generator=g, dtype=real_dtype)
    with torch.no_grad():
        for m in front:
            m.to(real_dtype)
            x = m(x)
    return x.detach()


def dense_tp_class():
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    from sphc import layout
    from sphc.cg import cg_block

    class DenseTP(nn.Module):
        """The same channel-wise CG tensor product, with dense CG tensors and one einsum per path."""

        def __init__(self, info):
            super().__init__()
            self.L_in, self.L, self.width = info.t_in.L, info.t_out.L, info.t_out.width
            self.paths = []
            pairs = layout.tp_paths(info.t_in.cols, [(p.l1, p.l2, p.l) for p in info.paths])
            for k, (p, (*_, cp)) in enumerate(zip(info.paths, pairs)):
                b = cg_block(p.l1, p.l2, p.l)
                d = np.zeros((2 * p.l + 1, 2 * p.l1 + 1, 2 * p.l2 + 1))
                d[b.m + p.l, b.m1 + p.l1, b.m2 + p.l2] = b.values
                self.register_buffer(f"cg{k}", torch.from_numpy(d), persistent=False)
                i, j = (torch.tensor(v) for v in zip(*cp))
                self.paths.append((p.l1, p.l2, p.l, i, j))
            self._cast: dict = {}

        def _cg(self, k, dtype):
            key = (k, dtype)
            if key not in self._cast:
                self._cast[key] = getattr(self, f"cg{k}").to(dtype)
            return self._cast[key]

        def forward(self, x):
            B, C, L_in, M_in, T = x.shape
            c = L_in - 1
            per_l = [[] for _ in range(self.L)]
            for k, (l1, l2, l, i, j) in enumerate(self.paths):
                a = x[:, :, l1, c - l1 : c + l1 + 1]  # (B, C, 2l1+1, T)
                b = x[:, :, l2, c - l2 : c + l2 + 1]
                full = torch.einsum("mpq,bcpi,bcqj->bcmij", self._cg(k, x.dtype), a, b)
                per_l[l].append(full[..., i, j])  # (B, C, 2l+1, pairs)
            M = 2 * self.L - 1
            rows = []
            for l, parts in enumerate(per_l):
                if not parts:
                    rows.append(x.new_zeros(B, C, M, self.width))
                    continue
                y = torch.cat(parts, -1)
                pad = (0, self.width - y.shape[-1], self.L - 1 - l, self.L - 1 - l)
                rows.append(F.pad(y, pad))
            return torch.stack(rows, 2)  # (B, C, L, 2L-1, width)

    return DenseTP


def e3nn_layer(info, K: int, tau: int):
    """(tp, linear, irreps_in) of the closest e3nn construction, or raise ImportError."""
    from e3nn import o3

    C = info.t_in.C
    mul = C * info.t_in.width**2  # every ordered column pair of every channel
    irr_in = o3.Irreps([(mul, (l, 1)) for l in range(info.t_in.L)])
    irr_tp = o3.Irreps([(mul, (p.l, 1)) for p in info.paths])
    ins = [(p.l1, p.l2, k, "uuu", False) for k, p in enumerate(info.paths)]
    tp = o3.TensorProduct(irr_in, irr_in, irr_tp, ins)
    lin = o3.Linear(irr_tp, o3.Irreps([(K * tau, (l, 1)) for l in range(info.t_out.L)]))
    return tp, lin, irr_in


# ---------------------------------------------------------------- memory measurement


def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def profiler_peak(step) -> int | None:
    """Largest 'Total Allocated' of the CPU allocator during ``step()``, via a profiler trace."""
    import torch

    try:
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        ) as p:
            step()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "trace.json")
            p.export_chrome_trace(path)
            with open(path) as f:
                events = json.load(f)["traceEvents"]
        totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
        return max(totals) if totals else None
    except Exception:  # profiler internals differ across torch versions: report "-", never fail
        return None


# ---------------------------------------------------------------- child: one implementation, one process


def child(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    text = model_text(args.L, args.K, args.tau, args.tau_u)
    front, tp, gc_mod, info = build(text)
    real = torch.float32
    x = make_input(front, args.L, args.batch, real)
    if args.variant == "sphc":
        layer = torch.nn.Sequential(tp, gc_mod)
    elif args.variant == "dense":
        layer = torch.nn.Sequential(dense_tp_class()(info), gc_mod)
    elif args.variant == "e3nn":
        try:
            t = time.perf_counter()
            e_tp, e_lin, irr_in = e3nn_layer(info, args.K, args.tau)
            build_s = time.perf_counter() - t
        except ImportError as e:
            return {"skipped": f"e3nn not importable ({e})"}
        g = torch.Generator().manual_seed(2)
        x1 = torch.randn(args.batch, irr_in.dim, generator=g)
        x2 = torch.randn(args.batch, irr_in.dim, generator=g)

        class E3(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.tp, self.lin = e_tp, e_lin

            def forward(self, pair):
                return self.lin(self.tp(*pair))

        layer = E3()
        x = (x1, x2)
    else:
        raise SystemExit(f"unknown variant {args.variant}")
    layer.to(real)
    params = list(layer.parameters())
    inputs = list(x) if isinstance(x, tuple) else [x]
    for t_ in inputs:
        t_.requires_grad_(True)

    def loss_of(y):
        return (torch.view_as_real(y) if y.is_complex() else y).square().sum()

    def fwd_bwd():
        for p in params + inputs:
            p.grad = None
        loss_of(layer(x)).backward()

    def fwd():
        with torch.no_grad():
            layer(x)

    fwd_bwd()  # warm-up: lazy caches, allocator pools
    gc.collect()
    exact = reset_peak_rss()
    rss0 = _proc_status()["VmRSS"]
    base_maxrss = None
    if not exact:
        import resource

        base_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        fwd_bwd()
        times.append(time.perf_counter() - t)
    st = _proc_status()
    rss_peak = st["VmHWM"] - rss0 if exact else st["VmHWM"] - max(base_maxrss, rss0)
    ftimes = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        fwd()
        ftimes.append(time.perf_counter() - t)
    out = {
        "times": times,
        "ftimes": ftimes,
        "rss_peak": rss_peak,
        "rss_method": "VmHWM reset" if exact else "ru_maxrss delta",
        "alloc_peak": profiler_peak(fwd_bwd),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
    }
    if args.variant == "e3nn":
        out["build"] = build_s
    return out


def _brief(r: dict) -> str:
    if "skipped" in r:
        return r["skipped"]
    return (
        f"fwd+bwd median {fmt_s(median(r['times']))}, fwd median {fmt_s(median(r['ftimes']))}, "
        f"RSS peak Δ {fmt_mib(r['rss_peak'])}, alloc peak {fmt_mib(r['alloc_peak'])}"
    )


def run_variant(variant: str, args, env: dict[str, str], repeats: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        f"--L={args.L}",
        f"--K={args.K}",
        f"--tau={args.tau}",
        f"--tau-u={args.tau_u}",
        f"--batch={args.batch}",
        f"--repeats={repeats}",
        f"--threads={args.threads}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"skipped": f"child failed: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads([x for x in proc.stdout.splitlines() if x.startswith("{")][-1])


# ---------------------------------------------------------------- part 1 check (float64), in the parent


def check_dense(args) -> float:
    import torch

    torch.manual_seed(0)
    front, tp, gc_mod, info = build(model_text(args.L, args.K, args.tau, args.tau_u))
    dense = dense_tp_class()(info)
    x = make_input(front, args.L, min(args.batch, 4), torch.float64)
    tp.double()
    gc_mod.double()
    with torch.no_grad():
        t_ref, t_den = tp(x), dense(x)
        assert t_ref.shape == t_den.shape, (t_ref.shape, t_den.shape)
        err_tp = (t_ref - t_den).abs().max().item()
        y_ref, y_den = gc_mod(t_ref), gc_mod(t_den)
        err = max(err_tp, (y_ref - y_den).abs().max().item())
    scale = t_ref.abs().max().item()
    assert err <= 1e-10, f"dense einsum TP differs from sphc.runtime.layers.TensorProduct: {err:.3e}"
    print(
        f"check: dense einsum == sphc reference in float64, max |diff| = {err:.2e} (|TP out| max {scale:.2f})"
    )
    return err


# ---------------------------------------------------------------- part 2: growth with L


def growth(Ls, batch: int, repeats: int) -> tuple[str, str]:
    import torch

    import sphc

    results = {}
    layers = {}
    for mix in GROWTH_CLAIMS:
        for L in Ls:
            text = model_text(L, 4, 2, 4, mix)
            torch.manual_seed(0)
            front, tp, _, info = build(text)
            x = make_input(front, L, batch, torch.float32)
            a = sphc.check_source(text)
            macs = next(x_.macs for x_ in a.layers if type(x_.layer).__name__ == "TensorProduct")
            layers[(mix, L)] = (tp, x, len(info.paths), macs, [])
    with torch.no_grad():
        for tp, x, *_ in layers.values():
            tp(x)  # warm-up
        for _ in range(repeats):  # rounds over all configurations: noise bursts do not hit one config only
            for tp, x, _, _, reps in layers.values():
                t = time.perf_counter()
                tp(x)
                reps.append(time.perf_counter() - t)
    for (mix, L), (_, _, n, macs, reps) in layers.items():
        results[(mix, L)] = (min(reps), n, macs)  # min: the least noisy estimate on a shared machine
    return growth_tables(
        results, f"TensorProduct forward time vs L (min of {repeats}; batch {batch}, C=4, tau=2, float32)"
    )


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, no e3nn, growth up to L=12")
    ap.add_argument("--no-e3nn", action="store_true", help="skip the optional e3nn comparison")
    ap.add_argument("--no-growth", action="store_true", help="skip the cost-growth table")
    ap.add_argument("--L", type=int, default=16)
    ap.add_argument("--K", type=int, default=8)
    ap.add_argument("--tau", type=int, default=2)
    ap.add_argument("--tau-u", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=None, help="timed iterations per process")
    ap.add_argument(
        "--rounds", type=int, default=None, help="fresh processes per variant (default 2, quick 1)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared 2-core machine, OpenMP regions stall "
        "whenever another process holds a core, turning 0.1 ms ops into ~12 ms ones)",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.variant = args.child
        print(json.dumps(child(args)))
        return 0

    # one private cache for the parent and its children: compiled once, never touches ~/.cache
    own_cache = "SPHC_CACHE_DIR" not in os.environ
    if own_cache:
        os.environ["SPHC_CACHE_DIR"] = tempfile.mkdtemp(prefix="sphc-bench-layer-")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    import torch

    torch.set_num_threads(args.threads)
    print(machine())
    print(f"load average at start: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    t_start = time.perf_counter()

    check_dense(args)
    repeats = args.repeats or (3 if args.quick else 5)
    variants = [("sphc", repeats), ("dense", repeats)]
    if not (args.quick or args.no_e3nn):
        variants.append(("e3nn", 3))
    rounds = args.rounds or (1 if args.quick else 2)
    res: dict[str, dict] = {}
    for k in range(rounds):  # variants alternate, so a slow spell of a shared machine hits all of them
        for v, r in variants:
            got = run_variant(v, args, env, r)
            print(f"  round {k + 1} {v}: {_brief(got)}", flush=True)
            if "skipped" in got or "skipped" in res.get(v, {}):
                res.setdefault(v, got)
                continue
            if v not in res:
                res[v] = got
            else:  # pool the timings; memory: the larger peak
                res[v]["times"] += got["times"]
                res[v]["ftimes"] += got["ftimes"]
                res[v]["repeats"] += got["repeats"]
                for key in ("rss_peak", "alloc_peak"):
                    vals = [x for x in (res[v][key], got[key]) if x is not None]
                    res[v][key] = max(vals) if vals else None
    for r in res.values():
        if "times" in r:
            r["fwd_bwd"], r["fwd_bwd_min"], r["fwd_bwd_max"] = (
                median(r["times"]),
                min(r["times"]),
                max(r["times"]),
            )
            r["fwd"], r["fwd_min"] = median(r["ftimes"]), min(r["ftimes"])
    ref = res["sphc"]
    rows = []
    for v, _ in variants:
        r = res[v]
        if "skipped" in r:
            rows.append((v, "-", "-", "-", "-", "-", r["skipped"]))
            continue
        ratio = r["fwd_bwd"] / ref["fwd_bwd"]
        note = f"{r['repeats']} timed reps ({rounds} processes)"
        if "build" in r:
            note += f"; e3nn build {fmt_s(r['build'])}"
        rows.append(
            (
                v,
                f"{fmt_s(r['fwd'])} (min {fmt_s(r['fwd_min'])})",
                f"{fmt_s(r['fwd_bwd'])} ({fmt_s(r['fwd_bwd_min'])} – {fmt_s(r['fwd_bwd_max'])})",
                f"{ratio:.2f}",
                fmt_mib(r["rss_peak"]),
                fmt_mib(r["alloc_peak"]),
                note,
            )
        )
    print(
        table(
            (
                "implementation",
                "forward, median",
                "fwd+bwd, median (min – max)",
                "fwd+bwd ÷ sphc (median)",
                "RSS peak Δ",
                "torch alloc peak",
                "notes",
            ),
            rows,
            f"Efficient generalized layer (TP mst + GenConv), batch {args.batch}, C=K={args.K}, "
            f"L={args.L}, tau={args.tau}, tau_u={args.tau_u}, float32, CPU, "
            f"{ref.get('threads', '?')} intra-op thread(s) (median)",
        )
    )
    if "skipped" not in res["dense"]:
        d = res["dense"]
        faster = d["fwd_bwd"] / ref["fwd_bwd"]
        faster_min = d["fwd_bwd_min"] / ref["fwd_bwd_min"]
        verdict = "PASS" if faster > 1 else "FAIL"
        print(
            f"\nsphc reference speed-up over dense einsum, fwd+bwd: {faster:.2f}x on medians "
            f"({faster_min:.2f}x on minima; > 1 means sphc is faster) -> {verdict}"
        )
    print(f"memory method: {ref.get('rss_method')} (RSS peak Δ); torch.profiler CPU 'Total Allocated' max")

    if not args.no_growth:
        Ls = [4, 8, 12] if args.quick else [4, 8, 12, 16]
        t1, t2 = growth(Ls, batch=4, repeats=5 if args.quick else 15)
        print(t1)
        print(t2)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\ntotal wall time {fmt_s(time.perf_counter() - t_start)}; load average at end: {load}")
    if own_cache:
        shutil.rmtree(os.environ["SPHC_CACHE_DIR"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
