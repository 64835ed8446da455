"""Pictures of a Spherical MNIST run (``sphc plot``, ``sphc train --plots``), drawn with matplotlib.

Three PNGs: digits on the sphere (Mollweide projection, non-rotated and rotated), training-loss
curves, and the accuracy table as a bar chart. The Agg backend is used, so no display is needed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from sphc.errors import SphcError


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


def smoothing_window(steps: int) -> int:
    """Moving-average width: 20 steps, but at most a tenth of the run, so short runs keep a curve."""
    return max(1, min(20, steps // 10))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_curves(path: Path, runs: list[dict]) -> Path:
    return _save(curves_figure(runs), path)


def plot_accuracy(path: Path, runs: list[dict]) -> Path:
    return _save(accuracy_figure(runs), path)


def curves_figure(runs: list[dict]):
    """Training loss of each run: every step faintly, and its moving average."""
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    windows = set()
    for m in runs:
        loss = np.asarray(m["loss_history"], dtype=float)
        k = smoothing_window(len(loss))
        windows.add(k)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid") if len(loss) else loss
        line = ax.plot(np.arange(1, len(loss) + 1), loss, lw=0.6, alpha=0.3)[0]
        ax.plot(
            np.arange(len(smooth)) + k,
            smooth,
            color=line.get_color(),
            label=f"{_label(m)} (train {m['config']['train'].upper()})",
        )
    ax.set_xlabel("step")
    window = f"{windows.pop()}-step" if len(windows) == 1 else "per-run"
    ax.set_ylabel(f"cross-entropy ({window} moving average)")
    ax.set_yscale("log")
    ax.set_title("Training loss")
    ax.legend()
    return fig


def accuracy_figure(runs: list[dict]):
    """Test accuracy per run and train/test regime (NR/NR, NR/R, R/R)."""
    regimes = sorted({k for m in runs for k in m["accuracy"]})
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    width = 0.8 / max(len(runs), 1)
    for j, m in enumerate(runs):
        vals = [100 * m["accuracy"].get(r, np.nan) for r in regimes]
        bars = ax.bar(np.arange(len(regimes)) + j * width, vals, width, label=_label(m))
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(np.arange(len(regimes)) + width * (len(runs) - 1) / 2, [r.upper() for r in regimes])
    ax.set_xlabel("train / test digits (NR = non-rotated, R = rotated)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Test accuracy")
    # below the axes, where no bar can be: inside, a legend hides whichever bar it lands on
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(len(runs), 3), frameon=False)
    return fig


def _read_run(d: Path) -> dict:
    f = Path(d) / "metrics.json"
    if not f.is_file():
        raise SphcError(f"{d} has no metrics.json: is it an `sphc train` output directory?")
    try:
        m = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SphcError(f"cannot read {f}: {e}") from None
    missing = [k for k in ("model", "accuracy", "loss_history", "config") if k not in m]
    if missing:
        raise SphcError(f"{f} lacks {', '.join(missing)}: is it the metrics.json of an `sphc train` run?")
    return m


def _input_L(m: dict, where: Path) -> int:
    """The model's input bandlimit: from metrics.json, or (runs of older sphc versions) the model file."""
    if "input_shape" in m:
        return int(m["input_shape"][1])
    from sphc.compiler.pipeline import check_source

    model = Path(m["model"])
    try:
        text = model.read_text(encoding="utf-8")
    except OSError as e:
        raise SphcError(
            f"cannot read {model}, the model of the run in {where}: {e.strerror}",
            hint="runs written by older sphc versions name the model relative to where training ran; "
            "run `sphc plot` from there",
        ) from None
    return check_source(text, str(model)).model.input.L


def plot_runs(run_dirs: list[Path], out: Path, L: int | None = None) -> list[Path]:
    """All three pictures for one or more run directories (each holding a metrics.json).

    Every input is checked before ``out`` is created, and a directory this call created is removed
    again if drawing fails, so a failed ``sphc plot`` leaves nothing behind.
    """
    runs = [_read_run(d) for d in run_dirs]
    if out.exists() and not out.is_dir():
        raise SphcError(f"{out} is a file, but sphc plot writes three PNG files into a directory (-o DIR)")
    if L is None:
        L = _input_L(runs[0], run_dirs[0])
    cfg = runs[0]["config"]
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        return [
            plot_digits(out / "digits.png", L, seed=cfg["seed"], source=cfg.get("data_path")),
            plot_curves(out / "curves.png", runs),
            plot_accuracy(out / "accuracy.png", runs),
        ]
    except BaseException as e:
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)
        if isinstance(e, OSError):
            raise SphcError(f"cannot write the plots into {out}: {e.strerror or e}") from None
        raise
