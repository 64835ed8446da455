"""Compile-time benchmark: cold / warm-cache compiles, generated-module import, vs. the issue's targets.

Every measurement runs in a fresh interpreter, so sphc's in-process ``functools`` caches are cold:

* cold compile: ``SPHC_CACHE_DIR`` points at a new, empty temp dir for every run;
* warm compile: a second fresh interpreter on that same (now filled) dir;
* import: the generated module, written to a temp dir, imported with ``python -B`` (no ``.pyc``,
  so Python compiles the source each time, i.e. the first import a user sees), minus the bare
  ``import torch, sphc.runtime`` measured in its own fresh interpreter; ``Model()`` construction
  is timed in the same child and reported for information.

Times are medians over ``--runs`` runs. "in-process" is measured inside the child around
``sphc.compile_source`` (the compiler proper); "end-to-end" is the parent's wall clock of the whole
child (interpreter start, ``import sphc`` — which also imports sympy, lark, jinja2 — compile, write).
Targets apply to end-to-end, the stricter of the two.

Baseline (optional, on by default): sympy's ``CG(...).doit()`` timed per coefficient on a random
sample, in its own fresh interpreter, then *extrapolated* linearly to each model's CG entry count
(sphc's ``analysis`` count of (m, m1) pattern entries over all tensor-product paths).

    python benchmarks/bench_compile.py            # full (a few minutes)
    python benchmarks/bench_compile.py --quick    # smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import REPO, fmt_s, machine, median, run_child, table, verdict  # noqa: E402

ANCHORS = (
    "e3nn: ~27 s to build Wigner-3j symbols up to l=15 (issue anchor, not re-measured here)",
    "sympy CG: 0.3-1 ms per coefficient (issue anchor); MST model at L=16 ≈ 11 s, at L=32 ≈ 5 min",
)

L16_MST = """\
# bandlimit-16 efficient generalized layer (the bench_layer.py model)
Input s2 L=16 C=1
  -> GenConv K=8 tau=2
  -> EfficientLayer mst L=16 K=8 tau=2 tau_u=4
"""

L32_MST = """\
# all-harmonic bandlimit-32 model: the MST tensor product runs at L=32 on the S² input
Input s2 L=32 C=1
  -> TensorProduct mst
  -> GenConv K=8
"""

SKETCH = """\
# the README's own sketch: S2Conv's default N = L gives 63 fragments per degree into the TP
S2Conv L=32 -> TensorProduct mst -> GenConv K=8
"""

#: a 1,000-layer chain: generated-module size and import must grow linearly with the layer count
CHAIN = "Input s2 L=4 C=1 -> S2Conv C=2 L=4 N=2" + "\n  -> SO3Conv C=2 L=4 N=2" * 1000 + "\n"

L32_FULL = """\
# stress case, no target: the FULL tensor product at L=32 (O(L^5): 8208 paths, 7.5M CG entries)
Input s2 L=32 C=1
  -> TensorProduct full
"""

COMPILE_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
import sphc
t1 = time.perf_counter()
text = open(sys.argv[1]).read()
src = sphc.compile_source(text, sys.argv[1])
t2 = time.perf_counter()
open(sys.argv[2], "w").write(src)
lines = src.splitlines()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
print(json.dumps({"import": t1 - t0, "compile": t2 - t1, "bytes": len(src.encode()), "lines": len(lines),
                  "longest": max(map(len, lines)), "peak_mib": peak}))
"""

IMPORT_CHILD = """
import importlib, json, sys, time
sys.path.insert(0, sys.argv[1])
t0 = time.perf_counter()
mod = importlib.import_module(sys.argv[2])
t1 = time.perf_counter()
if sys.argv[3] == "construct":
    mod.Model()
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "construct": t2 - t1 if sys.argv[3] == "construct" else None}))
"""

BARE_CHILD = """
import json, time
t0 = time.perf_counter()
import torch, sphc.runtime
print(json.dumps({"import": time.perf_counter() - t0}))
"""

SYMPY_CHILD = """
import json, random, sys, time
t0 = time.perf_counter()
from sympy.physics.quantum.cg import CG
t_import = time.perf_counter() - t0
rng = random.Random(int(sys.argv[2]))
lmax, n = 15, int(sys.argv[1])
times = []
seen = set()
while len(times) < n:
    l1, l2 = rng.randint(1, lmax), rng.randint(1, lmax)
    l = rng.randint(abs(l1 - l2), min(l1 + l2, lmax))
    m1 = rng.randint(-l1, l1)
    m2 = rng.randint(max(-l2, -l - m1), min(l2, l - m1))
    if (l1, m1, l2, m2, l) in seen:
        continue
    seen.add((l1, m1, l2, m2, l))
    t = time.perf_counter()
    float(CG(l1, m1, l2, m2, l, m1 + m2).doit())
    times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"median": times[len(times) // 2], "mean": sum(times) / len(times),
                  "n": n, "import": t_import}))
"""


@dataclass
class Case:
    key: str
    label: str
    path: Path
    target_cold: float | None
    target_warm: float | None
    import_check: bool = False
    target_import: float = 2.0
    target_peak_mib: float | None = None
    construct: bool = True  # also time Model() (the sketch's reference tables do not fit in memory)


def _cg_entries(text: str) -> int:
    import sphc

    return sum(x.cg_entries for x in sphc.check_source(text).layers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 run each, skip the L=32 full stress case")
    ap.add_argument("--runs", type=int, default=None, help="runs per measurement (default 3, quick 1)")
    ap.add_argument("--no-sympy", action="store_true", help="skip the sympy per-coefficient baseline")
    ap.add_argument("--no-stress", action="store_true", help="skip the L=32 full-mix stress case")
    args = ap.parse_args()
    runs = args.runs or (1 if args.quick else 3)

    work = Path(tempfile.mkdtemp(prefix="sphc-bench-compile-"))
    cases = [
        Case("mnist", "examples/mnist.sph (L=20, MST)", work / "mnist.sph", 10.0, 1.0, True),
        Case(
            "efficient",
            "examples/efficient.sph (L=32 in, MST ≤ L=12)",
            work / "efficient.sph",
            10.0,
            1.0,
            True,
        ),
        Case("l16", "L=16 MST efficient layer", work / "l16.sph", 10.0, 1.0),
        Case("l32", "L=32 MST (TP at L=32)", work / "l32.sph", 30.0, 1.0, True),
        Case(
            "sketch",
            "README sketch (S2Conv L=32 → TP mst → GenConv)",
            work / "sketch.sph",
            5.0,
            1.0,
            True,
            1.0,
            500,
        ),
        Case("chain", "1,000-layer SO3Conv chain", work / "chain.sph", None, None, True),
    ]
    texts = {
        "mnist": (REPO / "examples" / "mnist.sph").read_text(),
        "sketch": SKETCH,
        "chain": CHAIN,
        "efficient": (REPO / "examples" / "efficient.sph").read_text(),
        "l16": L16_MST,
        "l32": L32_MST,
    }
    if not (args.quick or args.no_stress):
        cases.append(Case("f32", "L=32 FULL TP (stress, no target)", work / "f32.sph", None, None))
        texts["f32"] = L32_FULL
    for c in cases:
        c.path.write_text(texts[c.key])
    entries = {c.key: _cg_entries(texts[c.key]) for c in cases}

    print(machine())
    print(f"load average at start: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"runs per measurement: {runs} (median reported); temp dir {work} (removed at the end)\n")

    rows, import_rows, size_rows, results = [], [], [], {}
    for c in cases:
        cold, cold_in, warm, warm_in, size, peaks = [], [], [], [], 0, []
        out_py = work / f"gen_{c.key}.py"
        for r in range(runs):
            cache_dir = work / f"cache-{c.key}-{r}"
            env = {"SPHC_CACHE_DIR": str(cache_dir)}
            env_drop = {"SPHC_NO_CACHE": ""}
            w, j = run_child(COMPILE_CHILD, [str(c.path), str(out_py)], {**env, **env_drop})
            cold.append(w)
            cold_in.append(j["compile"])
            size, shape = j["bytes"], (j["lines"], j["longest"])
            peaks.append(j["peak_mib"])
            w, j = run_child(COMPILE_CHILD, [str(c.path), str(out_py)], {**env, **env_drop})
            warm.append(w)
            warm_in.append(j["compile"])
            peaks.append(j["peak_mib"])
        peak = max(peaks)
        size_rows.append(
            (
                c.label,
                f"{size / 2**20:.2f} MiB",
                f"{shape[0]:,}",
                str(shape[1]),
                f"{peak:.0f} MiB",
                f"≤ {c.target_peak_mib} MiB" if c.target_peak_mib else "-",
                verdict(peak, c.target_peak_mib) if c.target_peak_mib else "info",
            )
        )
        results[c.key] = (median(cold), median(warm))
        for kind, e2e, inproc, target in (
            ("cold", cold, cold_in, c.target_cold),
            ("warm", warm, warm_in, c.target_warm),
        ):
            m = median(e2e)
            rows.append(
                (
                    c.label,
                    kind,
                    f"{entries[c.key]:,}",
                    fmt_s(m),
                    fmt_s(median(inproc)),
                    f"≤ {target:g} s" if target else "-",
                    verdict(m, target) if target else "info",
                )
            )
        print(f"  compiled {c.label}: cold {fmt_s(median(cold))}, warm {fmt_s(median(warm))}", flush=True)

        if c.import_check:
            mod_dir = work / f"mod_{c.key}"
            mod_dir.mkdir()
            (mod_dir / f"gen_{c.key}.py").write_text(out_py.read_text())
            imp, bare, cons = [], [], []
            for _ in range(runs):
                mode = "construct" if c.construct else "import"
                _, j = run_child(IMPORT_CHILD, [str(mod_dir), f"gen_{c.key}", mode], flags=["-B"])
                imp.append(j["import"])
                cons.append(j["construct"])
                _, j = run_child(BARE_CHILD, flags=["-B"])
                bare.append(j["import"])
            net = median(imp) - median(bare)
            import_rows.append(
                (
                    c.label,
                    f"{size / 2**20:.2f} MiB",
                    fmt_s(median(imp)),
                    fmt_s(median(bare)),
                    fmt_s(net),
                    f"≤ {c.target_import:g} s",
                    verdict(net, c.target_import),
                    fmt_s(median(cons)) if c.construct else "not built",
                )
            )
            print(f"  imported {c.label}: net {fmt_s(net)}", flush=True)

    print(
        table(
            (
                "model",
                "cache",
                "CG entries",
                "end-to-end",
                "in-process compile",
                "target",
                "result",
            ),
            rows,
            "Compile time (median; end-to-end = fresh interpreter incl. `import sphc`)",
        )
    )
    print(
        table(
            ("model", "module size", "lines", "longest line", "compile peak RSS", "target", "result"),
            size_rows,
            "Generated module and compiler memory (peak RSS of the compiling interpreter, cold or warm)",
        )
    )
    print(
        table(
            (
                "generated module",
                "size",
                "import (python -B)",
                "bare torch+sphc.runtime",
                "net import",
                "target",
                "result",
                "Model() (info)",
            ),
            import_rows,
            "Import of the generated module (median, fresh interpreter, no .pyc)",
        )
    )

    if not args.no_sympy:
        n = 20 if args.quick else 60
        sym = [run_child(SYMPY_CHILD, [str(n), str(seed)])[1] for seed in range(1 if args.quick else 3)]
        per = median([s["mean"] for s in sym])
        per_med = median([s["median"] for s in sym])
        srows = []
        for c in (c for c in cases if entries[c.key]):
            est = per * entries[c.key]
            ours = results[c.key][0]
            srows.append(
                (
                    c.label,
                    f"{entries[c.key]:,}",
                    fmt_s(est),
                    fmt_s(ours),
                    f"{est / ours:,.0f}x" if ours else "-",
                )
            )
        print(
            table(
                ("model", "CG entries", "sympy, EXTRAPOLATED", "sphc cold end-to-end", "speed-up"),
                srows,
                f"sympy baseline: CG(...).doit() mean {fmt_s(per)} / median {fmt_s(per_med)} per "
                f"coefficient (measured on {n}x{len(sym)} random coefficients, l <= 15; "
                "extrapolated linearly to each model's CG entry count)",
            )
        )

    print("\nAnchors from the issue, for scale:")
    for a in ANCHORS:
        print(f"  - {a}")
    print(f"load average at end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
