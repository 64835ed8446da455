"""Shared helpers for the benchmarks: fresh-subprocess runs, medians, tables, machine description.

Benchmarks are run as scripts (``python benchmarks/bench_*.py``); this file sits next to them and is
imported as a plain module. Nothing here imports torch or sphc at module level, so a parent process
that only launches children stays light.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def run_child(
    code: str,
    argv: Sequence[str] = (),
    env: dict[str, str] | None = None,
    flags: Sequence[str] = (),
) -> tuple[float, dict]:
    """Run ``code`` in a fresh interpreter: ``python FLAGS -c CODE ARGV`` (cwd = repo root, on sys.path).

    The child must print one JSON object as its last stdout line. Returns (parent-measured wall
    seconds including interpreter start-up, the parsed JSON). Raises RuntimeError with the child's
    stderr on failure.
    """
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    t = time.perf_counter()
    proc = subprocess.run(
        [PYTHON, *flags, "-c", textwrap.dedent(code), *argv],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"child failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    return wall, json.loads(lines[-1])


def fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    if x < 0:  # a difference of two noisy medians can come out negative
        return "-" + fmt_s(-x)
    if x >= 100:
        return f"{x:.0f} s"
    if x >= 1:
        return f"{x:.2f} s"
    if x >= 1e-3:
        return f"{x * 1e3:.1f} ms"
    return f"{x * 1e6:.1f} µs"


def fmt_mib(nbytes: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:.1f} MiB"


def table(head: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None) -> str:
    """A GitHub-markdown table (also readable as plain text)."""
    cells = [[str(c) for c in head]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    if title:
        out.insert(0, f"\n### {title}\n")
    return "\n".join(out)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    """One paragraph describing where the numbers come from."""
    try:
        import torch

        tv = f"torch {torch.__version__} ({torch.get_num_threads()} intra-op threads)"
    except ImportError:  # pragma: no cover
        tv = "torch not importable"
    try:
        import numpy

        nv = f"numpy {numpy.__version__}"
    except ImportError:  # pragma: no cover
        nv = "numpy ?"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"CPU: {cpu_model()}, {cores} usable cores; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}; {tv}; {nv}; "
        f"run {datetime.datetime.now().isoformat(timespec='seconds')}"
    )


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "FAIL"


# ---------------------------------------------------------------- cost growth with L (bench_layer, bench_kernels)

#: The paper's asymptotic cost of one tensor product per mixing set (docs/CONVENTIONS.md §8), as fitted exponents.
GROWTH_CLAIMS = {"full": "O(L^5) → 5", "mst": "O(L^4) → 4", "rmst": "O(L^3 log L) → ~3.3-3.6"}


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(ys) against log(xs): the fitted exponent of ys ~ xs^k."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def growth_tables(
    results: dict[tuple[str, int], tuple[float, int, float]],
    title: str,
    cost_name: str = "MACs",
    cost_unit: str = "M MAC",
    cost_scale: float = 1e-6,
) -> tuple[str, str]:
    """(time table, slope table) of a cost-growth measurement.

    ``results[(mix, L)] = (seconds, paths, analytic cost)``; mixes appear in ``GROWTH_CLAIMS`` order,
    each fitted over the L it has (at least two). The analytic cost (MACs, FLOPs) is fitted the same
    way: it is the noise-free reference for the measured exponent.
    """
    mixes = [m for m in GROWTH_CLAIMS if any(k[0] == m for k in results)]
    Ls = sorted({L for _, L in results})
    rows = []
    for L in Ls:
        row = [str(L)]
        for mix in mixes:
            if (mix, L) in results:
                t, n, c = results[(mix, L)]
                row.append(f"{fmt_s(t)} ({n} paths, {c * cost_scale:.2f}{cost_unit})")
            else:
                row.append("-")
        rows.append(row)
    t1 = table(("L", *mixes), rows, title)
    fits = []
    for mix in mixes:
        xs = [L for L in Ls if (mix, L) in results]
        if len(xs) < 2:
            fits.append((mix, "-", "-", "-", GROWTH_CLAIMS[mix]))
            continue
        ts = [results[(mix, L)][0] for L in xs]
        cs = [results[(mix, L)][2] for L in xs]
        fits.append(
            (
                mix,
                f"{loglog_slope(xs, ts):.2f}",
                f"{loglog_slope(xs, cs):.2f}",
                f"{loglog_slope(xs[-2:], ts[-2:]):.2f}",
                GROWTH_CLAIMS[mix],
            )
        )
    t2 = table(
        ("mix", "fitted exponent, time", f"fitted exponent, {cost_name}", "local slope, last 2 L", "paper"),
        fits,
        f"log-log slopes over L = {', '.join(map(str, Ls))}",
    )
    return t1, t2


def interleaved(fns: dict, rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each function over ``rounds`` rounds (noise bursts hit all alike).

    Each round visits the functions in a fresh random order (fixed seed), and times each one right after an
    untimed call of the same function: steady-state, warm-cache times, with no function always following the
    one that evicts the caches (the pyssht loop).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rng = random.Random(0)
    keys = list(fns)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        rng.shuffle(keys)
        for k in keys:
            fns[k]()
            t = time.perf_counter()
            fns[k]()
            out[k].append(time.perf_counter() - t)
    return out
