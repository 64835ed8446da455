"""Molecule data benchmark: QM9 loading, Coulomb-sphere throughput, and the two baselines' errors.

* **Loading** the whole of QM9 (130,831 molecules) from the qm9pack CSVs, each run in a fresh
  interpreter: cold (a new, empty ``SPHC_CACHE_DIR``: parse the CSVs, then write the cache) and warm
  (a second interpreter on the filled directory). Floors measured in the same run: one
  ``csv.reader`` pass over the files that keeps nothing (the least a CSV parse costs), and reading
  the cache entry's bytes from disk.
* **Spheres** at L=10 on the first ``--spheres`` molecules of the default 7,165-molecule subset,
  median of ``--runs``: the batched numpy path (``coulomb_spheres``), the same code called one
  molecule at a time, and a pure-Python per-point loop (timed on 3 molecules, extrapolated). Floor:
  writing the float64 pair-weight tensor once (n A^2 P values, A trimmed per chunk as the code does)
  at a memory rate measured in the same run.
* **Baselines** (atom counts; sorted Coulomb matrix + Laplacian KRR) on the default subset:
  RMSE / MAE in kcal/mol on the held-out fold, for ``--folds`` folds (mean ± std when more than one).

    python benchmarks/bench_molecules.py              # fold 0 only (~4 min on 2 shared cores)
    python benchmarks/bench_molecules.py --folds 5    # all folds (~12 min)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from _common import fmt_s, machine, median, run_child, table  # noqa: E402

LOAD_CHILD = """
import json, time
t = time.perf_counter()
from sphc.data.molecules import load_qm9
t1 = time.perf_counter()
mols = load_qm9("all", progress=False)
print(json.dumps({"import": t1 - t, "s": time.perf_counter() - t1, "n": len(mols)}))
"""

CSV_FLOOR_CHILD = """
import csv, json, sys, time
from sphc.data.molecules import qm9_csv_files
csv.field_size_limit(sys.maxsize)
t = time.perf_counter()
rows = 0
for path in qm9_csv_files():
    with open(path, newline="") as f:
        for _ in csv.reader(f):
            rows += 1
print(json.dumps({"s": time.perf_counter() - t, "rows": rows}))
"""


def bench_load(runs: int) -> str:
    cold, warm, floor, read, imports = [], [], [], [], []
    n = None
    for _ in range(runs):
        cache = tempfile.mkdtemp(prefix="sphc-bench-mol-")
        try:
            _, c = run_child(LOAD_CHILD, env={"SPHC_CACHE_DIR": cache})
            _, w = run_child(LOAD_CHILD, env={"SPHC_CACHE_DIR": cache})
            entry = max(Path(cache).rglob("*.npz"), key=lambda p: p.stat().st_size)
            t = time.perf_counter()
            entry.read_bytes()
            read.append(time.perf_counter() - t)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        cold.append(c["s"])
        warm.append(w["s"])
        imports += [c["import"], w["import"]]
        n = c["n"]
        floor.append(run_child(CSV_FLOOR_CHILD)[1]["s"])
    rows = [
        (
            "cold: parse 3 CSVs + write cache",
            fmt_s(median(cold)),
            fmt_s(median(floor)),
            "csv.reader pass, nothing kept",
        ),
        ("warm: read cache", fmt_s(median(warm)), fmt_s(median(read)), "read the cache entry's bytes"),
        ("(import sphc.data.molecules, not included)", fmt_s(median(imports)), "", "torch-free"),
    ]
    return table(
        ("full QM9 load (in-process)", "median", "floor", "floor is"),
        rows,
        f"Loading all {n:,} QM9 molecules (median of {runs} fresh interpreters)",
    )


def _stream_rate(nbytes: int) -> float:
    """Bytes/s of an in-place multiply over a float64 buffer of ``nbytes`` (read + write counted once)."""
    buf = np.ones(max(1, nbytes // 8))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        np.multiply(buf, 1.0000001, out=buf)
        times.append(time.perf_counter() - t)
    return buf.nbytes / median(times)


def bench_spheres(n: int, runs: int, L: int = 10) -> str:
    from sphc.data import molecules as M
    from sphc.data.mnist import mw_grid_points

    mols = M.load_qm9(progress=False)
    radius = M.default_radius(mols)
    part = mols.take(np.arange(n))
    grid = mw_grid_points(L)
    chunk = 4
    # Values the batched code must at least write: n_chunk * A_chunk^2 * P pair weights (float64).
    values = sum(
        len(c) * c.charges.shape[1] ** 2 * grid[..., 0].size
        for c in (part.take(np.arange(s, min(n, s + chunk))) for s in range(0, n, chunk))
    )
    rate = _stream_rate(values * 8 // max(1, n // chunk))  # a buffer the size of one chunk's tensor
    floor = values * 8 / rate
    batched = [_timed(lambda: M.coulomb_spheres(part, L, radius, chunk=chunk)) for _ in range(runs)]
    per_mol = [
        _timed(lambda: [M.coulomb_spheres(part.take([m]), L, radius) for m in range(n)]) for _ in range(runs)
    ]
    few = 3
    t = time.perf_counter()
    for m in range(few):
        _python_spheres(part, m, grid, radius)
    python = (time.perf_counter() - t) / few * n
    rows = [
        ("coulomb_spheres (batched, chunk 4)", fmt_s(median(batched)), f"{n / median(batched):,.0f}", "1.0"),
        (
            "same, one molecule per call",
            fmt_s(median(per_mol)),
            f"{n / median(per_mol):,.0f}",
            f"{median(per_mol) / median(batched):.1f}",
        ),
        (
            f"pure Python per point (extrapolated from {few})",
            fmt_s(python),
            f"{n / python:,.0f}",
            f"{python / median(batched):.0f}",
        ),
        (
            f"floor: write {values / 1e6:.0f} M float64 pair weights at {rate / 1e9:.1f} GB/s",
            fmt_s(floor),
            f"{n / floor:,.0f}",
            f"{floor / median(batched):.2f}",
        ),
    ]
    return table(
        ("spheres at L=10", "time", "molecules/s", "time / batched"),
        rows,
        f"Coulomb spheres, {n} QM9 molecules (default subset), L={L}, p=2, median of {runs}",
    )


def _python_spheres(mols, m: int, grid: np.ndarray, radius: float) -> list[float]:
    """The textbook loop over atoms, grid points and other atoms, for the baseline row."""
    z, p = mols.charges[m], mols.positions[m]
    out = []
    for i in range(len(z)):
        if z[i] == 0:
            continue
        for u in grid.reshape(-1, 3):
            x = p[i] + radius * u
            for j in range(len(z)):
                if j != i and z[j]:
                    out.append(z[i] * z[j] / float(((x - p[j]) ** 2).sum()))
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_baselines(folds: int) -> str:
    from sphc.apps.molecule_baselines import BASELINES, run_baseline
    from sphc.data.molecules import load_qm9

    mols = load_qm9(progress=False)
    results = {name: [run_baseline(name, mols, fold) for fold in range(folds)] for name in BASELINES}
    rows = []
    for name, rs in results.items():
        for r in rs:
            hyper = f"gamma {r['gamma']:.2e}, alpha {r['alpha']:.0e}" if "gamma" in r else ""
            rows.append(
                (
                    name,
                    r["fold"],
                    f"{r['rmse_kcal_mol']:.2f}",
                    f"{r['mae_kcal_mol']:.2f}",
                    fmt_s(r["wall_time_s"]),
                    hyper,
                )
            )
        if len(rs) > 1:
            rmse = [r["rmse_kcal_mol"] for r in rs]
            mae = [r["mae_kcal_mol"] for r in rs]
            rows.append(
                (
                    name,
                    "mean ± std",
                    f"{statistics.mean(rmse):.2f} ± {statistics.stdev(rmse):.2f}",
                    f"{statistics.mean(mae):.2f} ± {statistics.stdev(mae):.2f}",
                    "",
                    "",
                )
            )
    return table(
        ("baseline", "fold", "RMSE kcal/mol", "MAE kcal/mol", "fit + predict", "chosen"),
        rows,
        f"Baselines on the default QM9 subset ({len(mols):,} molecules, 5 seeded folds, seed 0)",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--spheres", type=int, default=1024, help="molecules in the sphere timing")
    p.add_argument("--folds", type=int, default=1, help="how many folds the baselines run (1..5)")
    p.add_argument("--skip", nargs="*", default=(), choices=("load", "spheres", "baselines"))
    args = p.parse_args()
    print(machine())
    if "load" not in args.skip:
        print(bench_load(args.runs), flush=True)
    if "spheres" not in args.skip:
        print(bench_spheres(args.spheres, args.runs), flush=True)
    if "baselines" not in args.skip:
        print(bench_baselines(args.folds), flush=True)


if __name__ == "__main__":
    main()
