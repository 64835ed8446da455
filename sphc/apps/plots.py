"""Pictures of ``sphc train`` runs (``sphc plot``, ``sphc train --plots``), drawn with matplotlib.

Which pictures a run gets is its task's choice (``Task.draw``): Spherical MNIST — digits on the
sphere (non-rotated and rotated), training-loss curves, the accuracy chart; molecules — predicted
against true energies, the error histogram, the learning curve; shapes — a few meshes with their six
spherical channels, the retrieval table, loss curves and accuracy. The Agg backend is used, so no
display is needed.
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
    if m.get("baseline") == "planar":
        return "planar CNN"
    return f"{m['baseline']} baseline" if m.get("baseline") else f"sphc {Path(m['model']).name}"


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
    ax.set_xlabel("train / test (NR = non-rotated, R = rotated)")
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
    missing = [k for k in ("model", "config") if k not in m]
    if missing:
        raise SphcError(f"{f} lacks {', '.join(missing)}: is it the metrics.json of an `sphc train` run?")
    return m


def input_L(m: dict, where: Path) -> int:
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


def plot_runs(run_dirs: list[Path], out: Path) -> list[Path]:
    """The pictures of one or more run directories (each holding a metrics.json) of one task.

    Every input is checked before ``out`` is created, and a directory this call created is removed
    again if drawing fails, so a failed ``sphc plot`` leaves nothing behind.
    """
    from sphc.apps.tasks import task_class

    runs = [_read_run(d) for d in run_dirs]
    tasks = [task_class(m["config"].get("data", "spherical-mnist")) for m in runs]
    if len(set(tasks)) > 1:
        kinds = ", ".join(dict.fromkeys(m["config"]["data"] for m in runs))
        raise SphcError(f"these runs are of different kinds ({kinds}); plot each kind separately")
    if tasks[0].__name__ == "MnistTask":
        for m, d in zip(runs, run_dirs):
            missing = [k for k in ("accuracy", "loss_history") if k not in m]
            if missing:
                raise SphcError(
                    f"{Path(d) / 'metrics.json'} lacks {', '.join(missing)}: is it the metrics.json of an `sphc train` run?"
                )
    if out.exists() and not out.is_dir():
        raise SphcError(f"{out} is a file, but sphc plot writes PNG files into a directory (-o DIR)")
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        return tasks[0].draw(runs, [Path(d) for d in run_dirs], out)
    except BaseException as e:
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)
        if isinstance(e, OSError):
            raise SphcError(f"cannot write the plots into {out}: {e.strerror or e}") from None
        raise


# ------------------------------------------------------------------------------------ molecules


def _trained(runs: list[dict]) -> list[dict]:
    return [m for m in runs if m.get("loss_history")]


def plot_predicted(path: Path, runs: list[dict], predictions: list[dict]) -> Path:
    """Predicted against true atomization energy on the held-out fold, one panel per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 4.2), squeeze=False)
    for ax, m, p in zip(axes[0], runs, predictions):
        y, yhat = p["y_true"], p["y_pred"]
        lo, hi = float(min(y.min(), yhat.min())), float(max(y.max(), yhat.max()))
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        ax.scatter(y, yhat, s=4, alpha=0.5)
        ax.set_xlabel("true (kcal/mol)")
        ax.set_ylabel("predicted (kcal/mol)")
        ax.set_title(f"{_label(m)}\nfold {m['config']['fold']}: RMSE {m['rmse_kcal_mol']:.2f}", fontsize=9)
        ax.set_aspect("equal")
    fig.suptitle("Atomization energy, held-out molecules")
    return _save(fig, path)


def plot_errors(path: Path, runs: list[dict], predictions: list[dict]) -> Path:
    """Histogram of predicted − true on the held-out fold, every run on one axis."""
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    errors = [p["y_pred"] - p["y_true"] for p in predictions]
    span = max(float(np.quantile(np.abs(e), 0.99)) for e in errors) or 1.0
    bins = np.linspace(-span, span, 61)
    for m, e in zip(runs, errors):
        ax.hist(np.clip(e, -span, span), bins=bins, histtype="step", lw=1.2,
                label=f"{_label(m)} (MAE {m['mae_kcal_mol']:.2f})")  # fmt: skip
    ax.set_xlabel("predicted − true (kcal/mol; the outer 1% clipped to the edge bins)")
    ax.set_ylabel("molecules")
    ax.set_title("Errors on the held-out fold")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_learning_curve(path: Path, runs: list[dict]) -> Path:
    """Training RMSE (moving average, kcal/mol) per step and held-out RMSE after each epoch."""
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    for m in _trained(runs):
        std = m["task_state"]["target_std_kcal_mol"]
        rmse = std * np.sqrt(np.asarray(m["loss_history"], dtype=float))
        k = smoothing_window(len(rmse))
        smooth = np.sqrt(np.convolve(rmse**2, np.ones(k) / k, mode="valid"))
        line = ax.plot(np.arange(len(smooth)) + k, smooth, label=f"{_label(m)}: training batches")[0]
        ep = m.get("epoch_history", [])
        if ep:
            ax.plot([e["steps"] for e in ep], [e["heldout_rmse_kcal_mol"] for e in ep], "o-",
                    color=line.get_color(), label=f"{_label(m)}: held-out, after each epoch")  # fmt: skip
    for m in runs:
        if m.get("baseline"):
            ax.axhline(m["rmse_kcal_mol"], ls="--", lw=0.8, color="gray")
            ax.annotate(f"{m['baseline']} {m['rmse_kcal_mol']:.2f}", (0, m["rmse_kcal_mol"]), fontsize=7,
                        xytext=(2, 2), textcoords="offset points", color="gray")  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("RMSE (kcal/mol)")
    ax.set_yscale("log")
    ax.set_title("Learning curve")
    ax.legend(fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------------------- shapes


def plot_shapes(path: Path, signals, meshes: dict, count: int = 4) -> Path:
    """The first test shape of ``count`` classes: the mesh, then its six channels on the MW grid
    (rows θ from the north pole down, columns φ: an equirectangular picture of the sphere)."""
    from sphc.data.meshes import CHANNELS

    picks = [int(np.flatnonzero(signals.y == c)[0]) for c in np.unique(signals.y)][:count]
    plt = _pyplot()
    fig = plt.figure(figsize=(2.2 * (1 + len(CHANNELS)), 2.0 * len(picks)))
    cols = 1 + len(CHANNELS)
    for row, i in enumerate(picks):
        ax = fig.add_subplot(len(picks), cols, row * cols + 1, projection="3d")
        build = meshes.get(str(signals.ids[i]))
        if build is not None:
            mesh = build()
            v = mesh.vertices - mesh.vertices.mean(axis=0)
            ax.plot_trisurf(v[:, 0], v[:, 1], v[:, 2], triangles=mesh.faces, color="0.7", lw=0)
            ax.set_box_aspect(np.ptp(v, axis=0) + 1e-9)
        ax.set_axis_off()
        ax.set_title(str(signals.category[i]), fontsize=8)
        for c, name in enumerate(CHANNELS):
            ax = fig.add_subplot(len(picks), cols, row * cols + 2 + c)
            ax.imshow(signals.x[i, c], cmap="viridis", aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=8)
    L = signals.x.shape[2]
    fig.suptitle(f"Test shapes and their six channels on the MW grid, L={L} ({L}×{2 * L - 1} rays)")
    return _save(fig, path)


def plot_retrieval(path: Path, runs: list[dict]) -> Path:
    """The SHREC'17 metrics of every run and train/test regime, as a table."""
    from sphc.apps.retrieval import METRICS

    header = ["run", "train/test", *(f"micro {k}" for k in METRICS), *(f"macro {k}" for k in METRICS)]
    rows = [
        [
            _label(m),
            regime.upper(),
            *(f"{v:.3f}" for v in r["micro"].values()),
            *(f"{v:.3f}" for v in r["macro"].values()),
        ]  # fmt: skip
        for m in runs
        for regime, r in m["retrieval"].items()
    ]
    fig, ax = _pyplot().subplots(figsize=(12, 0.9 + 0.32 * len(rows)))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(header))))
    ax.set_title("SHREC'17 retrieval metrics (rankings from the classifier)", fontsize=10)
    return _save(fig, path)
