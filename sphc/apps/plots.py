"""Pictures of a Spherical MNIST run (``sphc plot``, ``sphc train --plots``), drawn with matplotlib.

Three PNGs: digits on the sphere (Mollweide projection, non-rotated and rotated), training-loss
curves, and the accuracy table as a bar chart. The Agg backend is used, so no display is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _orthographic(ax, values: np.ndarray, L: int) -> None:
    """The hemisphere around the digit's centre of mass, seen from outside (not mirrored)."""
    from matplotlib.patches import Circle

    from sphc.data.mnist import mw_grid_points

    pts = mw_grid_points(L)[:-1].reshape(-1, 3)  # drop the repeated south-pole ring ...
    w = values[:-1].reshape(-1)
    pts, w = np.vstack([pts, mw_grid_points(L)[-1, :1]]), np.concatenate([w, values[-1, :1]])  # ... but once
    v = (pts * w[:, None]).sum(0)
    v = v / np.linalg.norm(v) if np.linalg.norm(v) > 0 else np.array([0.0, 0.0, -1.0])
    e1 = np.cross(v, [0.0, 0.0, 1.0] if abs(v[2]) < 0.9 else [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(v, e1)  # e1 × e2 = v points at the viewer
    vis = pts @ v > 0
    ax.tripcolor(pts[vis] @ e1, pts[vis] @ e2, w[vis], shading="gouraud", cmap="gray_r")
    ax.add_patch(Circle((0, 0), 1, fill=False, lw=0.8))
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_aspect("equal")
    ax.axis("off")


def plot_digits(path: Path, L: int, count: int = 4, seed: int = 0, source=None) -> Path:
    """A few test digits on the sphere: non-rotated (top) and rotated (bottom), each seen from
    outside the sphere above the digit (orthographic projection of that hemisphere)."""
    from sphc.data.mnist import spherical_mnist

    plt = _pyplot()
    fig, axes = plt.subplots(2, count, figsize=(2.6 * count, 5.4))
    for row, rotated in enumerate((False, True)):
        x, y = spherical_mnist("test", L, rotated, seed=seed, subset=count, source=source, progress=False)
        for i, ax in enumerate(axes[row]):
            _orthographic(ax, x[i, 0], L)
            ax.set_title(f"{'R' if rotated else 'NR'}: label {y[i]}", fontsize=9)
    fig.suptitle(f"Spherical MNIST on the MW grid, L={L} ({L}×{2 * L - 1} samples)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label(m: dict) -> str:
    return "planar CNN" if m.get("baseline") else f"sphc {Path(m['model']).name}"


def plot_curves(path: Path, runs: list[dict]) -> Path:
    """Training loss (moving average over 20 steps) of each run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in runs:
        loss = np.asarray(m["loss_history"], dtype=float)
        k = min(20, len(loss))
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid") if k else loss
        ax.plot(
            np.arange(len(smooth)) + k, smooth, label=f"{_label(m)} (train {m['config']['train'].upper()})"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (moving average)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy(path: Path, runs: list[dict]) -> Path:
    """Test accuracy per run and train/test regime (NR/NR, NR/R, R/R)."""
    plt = _pyplot()
    regimes = sorted({k for m in runs for k in m["accuracy"]})
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(len(runs), 1)
    for j, m in enumerate(runs):
        vals = [100 * m["accuracy"].get(r, np.nan) for r in regimes]
        bars = ax.bar(np.arange(len(regimes)) + j * width, vals, width, label=_label(m))
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(np.arange(len(regimes)) + width * (len(runs) - 1) / 2, [r.upper() for r in regimes])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_runs(run_dirs: list[Path], out: Path, L: int | None = None) -> list[Path]:
    """All three pictures for one or more run directories (each holding a metrics.json)."""
    from sphc.errors import SphcError

    runs = []
    for d in run_dirs:
        f = Path(d) / "metrics.json"
        if not f.is_file():
            raise SphcError(f"{d} has no metrics.json: is it an `sphc train` output directory?")
        runs.append(json.loads(f.read_text()))
    out.mkdir(parents=True, exist_ok=True)
    if L is None:
        from sphc.compiler.pipeline import check_source

        L = check_source(Path(runs[0]["model"]).read_text(), runs[0]["model"]).model.input.L
    cfg = runs[0]["config"]
    return [
        plot_digits(out / "digits.png", L, seed=cfg["seed"], source=cfg.get("data_path")),
        plot_curves(out / "curves.png", runs),
        plot_accuracy(out / "accuracy.png", runs),
    ]
