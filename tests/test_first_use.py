"""What a new user meets after `sphc train`: plots from anywhere, resume messages, reproducible
equivariance figures, and failures that leave no directories behind (issue "Robustness and first use")."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import matplotlib
import pytest
import torch

from sphc.apps import plots
from sphc.apps import train as training
from sphc.apps.cli import main

matplotlib.use("Agg")

TINY = "Input s2 L=6 C=1 -> S2Conv C=2 L=4 N=2 -> EfficientLayer mst L=3 K=4 -> Invariant -> Dense 10\n"
ARGS = ["--subset", "32", "--test-subset", "16", "--epochs", "1", "--batch", "16", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One finished tiny run, trained with a *relative* model path from its own directory."""
    root = tmp_path_factory.mktemp("first-use")
    (root / "tiny.sph").write_text(TINY)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["train", "tiny.sph", "--out", "runs/a", *ARGS]) == 0
    finally:
        os.chdir(cwd)
    return root / "runs" / "a"


def test_the_run_records_absolute_paths_and_the_input_shape(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    assert Path(m["model"]).is_absolute() and Path(m["model"]).is_file()
    assert m["config"]["model"] == m["model"]
    assert m["input_shape"] == [1, 6, 11]


def test_plot_works_from_another_directory(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["plot", str(run_dir), "-o", "pics"]) == 0, capsys.readouterr().err
    for name in ("digits.png", "curves.png", "accuracy.png"):
        assert (tmp_path / "pics" / name).read_bytes().startswith(b"\x89PNG")


def test_plot_of_an_old_run_with_a_relative_model_path_is_a_user_error(run_dir, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    m = json.loads((old / "metrics.json").read_text())
    del m["input_shape"]
    m["model"] = "tiny.sph"  # what runs written before paths were resolved hold
    (old / "metrics.json").write_text(json.dumps(m))
    code = main(["plot", str(old), "-o", str(tmp_path / "pics")])
    err = capsys.readouterr().err
    assert code == 1 and "tiny.sph" in err and "internal error" not in err
    assert not (tmp_path / "pics").exists()


def test_plot_into_an_existing_file_is_a_user_error_and_leaves_nothing(run_dir, tmp_path, capsys):
    target = tmp_path / "taken.png"
    target.write_bytes(b"keep me")
    code = main(["plot", str(run_dir), "-o", str(target)])
    err = capsys.readouterr().err
    assert code == 1 and f"{target} is a file" in err and "internal error" not in err
    assert target.read_bytes() == b"keep me"


def test_plot_of_a_missing_run_leaves_no_directory(tmp_path, capsys):
    out = tmp_path / "new" / "pics"
    code = main(["plot", str(tmp_path / "nothing"), "-o", str(out)])
    assert code == 1 and "has no metrics.json" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_plot_that_fails_while_drawing_removes_what_it_created(run_dir, tmp_path, monkeypatch, capsys):
    def broken(path, runs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "plot_accuracy", broken)
    out = tmp_path / "a" / "b"
    code = main(["plot", str(run_dir), "-o", str(out)])
    assert code == 1 and "No space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_failed_train_leaves_no_empty_out_directory(tmp_path, capsys):
    bad = tmp_path / "bad.sph"
    bad.write_text("Input s2 L=6 -> Bogus\n")
    code = main(["train", str(bad), "--out", str(tmp_path / "runs" / "x"), *ARGS])
    assert code == 1 and "unknown layer `Bogus`" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_an_existing_out_directory_is_kept_when_train_fails(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    code = main(["train", str(tmp_path / "missing.sph"), "--out", str(out), *ARGS])
    assert code == 1 and out.is_dir()


def test_resuming_says_so(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    model = metrics["model"]
    assert main(["train", model, "--out", str(copy), *ARGS]) == 0
    err = capsys.readouterr().err
    assert f"resuming from {copy / 'checkpoint.pt'}: all 1 epochs done, evaluating" in err
    more = [*ARGS[:5], "2", *ARGS[6:]]  # --epochs 2: continue the finished run
    assert main(["train", model, "--out", str(copy), *more]) == 0
    err = capsys.readouterr().err
    assert f"resuming from {copy / 'checkpoint.pt'}: 2 of 4 steps done, continuing at epoch 2 step 1" in err


def test_the_equivariance_error_is_seeded_and_reported(run_dir, capsys):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["equivariance_seed"] == metrics["config"]["seed"] == 0
    model = training.build_model(training.TrainConfig(model=metrics["model"], out=str(run_dir)))
    model.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"])
    state = torch.get_rng_state()
    again = [training.equivariance_error(model, seed=0) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state)  # training's random stream is not disturbed
    assert again[0] == again[1] == metrics["equivariance_error"]
    assert training.equivariance_error(model, seed=1) != again[0]
    assert "seed 0" in training.summary(metrics)


@pytest.mark.parametrize("steps, window", [(1, 1), (9, 1), (40, 4), (200, 20), (5000, 20)])
def test_the_loss_smoothing_window_is_shorter_than_the_run(steps, window):
    assert plots.smoothing_window(steps) == window


def _run(name: str, acc: dict[str, float], steps: int) -> dict:
    return {
        "model": f"/x/{name}.sph",
        "baseline": None,
        "accuracy": acc,
        "loss_history": [2.3 / (1 + 0.1 * i) for i in range(steps)],
        "config": {"train": "nr", "seed": 0},
    }


def test_a_short_run_still_draws_a_loss_curve():
    fig = plots.curves_figure([_run("short", {"nr/nr": 0.5}, 6)])
    ax = fig.axes[0]
    assert ax.get_title() == "Training loss"
    smooth = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert len(smooth) == 1 and len(smooth[0].get_xdata()) >= 5  # a curve, not a single point
    plots._pyplot().close(fig)


def test_the_accuracy_legend_hides_no_bar():
    runs = [
        _run("a", {"nr/nr": 0.99, "nr/r": 0.98}, 10),
        {**_run("b", {"nr/nr": 0.97, "nr/r": 0.11}, 10), "baseline": "planar"},
        _run("c", {"nr/nr": 0.95, "nr/r": 0.94}, 10),
    ]
    fig = plots.accuracy_figure(runs)
    fig.tight_layout()
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [p.get_window_extent(renderer) for p in ax.patches]
    labels = [t.get_window_extent(renderer) for t in ax.texts]  # the values printed on the bars
    assert len(bars) == 6 and len(labels) == 6
    assert not any(legend.overlaps(b) for b in bars + labels)
    assert fig.bbox.contains(legend.x0, legend.y0)  # and not cut off the picture
    assert ax.get_title() == "Test accuracy"
    plots._pyplot().close(fig)
