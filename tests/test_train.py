"""`sphc train` at tiny scale: shapes, determinism under a seed, checkpoint resume, loss decreases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sphc.apps import train as training
from sphc.apps.cli import main
from sphc.apps.train import PlanarCNN, TrainConfig, train
from sphc.errors import SphcError

TINY = (
    "Input s2 L=8 C=1 -> S2Layer C=4 L=6 N=2 -> EfficientLayer mst L=4 K=8 tau=2 -> Invariant -> Dense 10\n"
)


@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.sph"
    path.write_text(TINY)
    return path


def _config(model_file: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model=str(model_file), out=str(out), epochs=1, batch=16, lr=3e-3, subset=256, test_subset=64)
    return TrainConfig(**{**base, **kw})


def test_train_writes_metrics_and_the_loss_decreases(model_file, tmp_path):
    metrics = train(_config(model_file, tmp_path / "run", epochs=2), progress=False)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["accuracy"] == metrics["accuracy"]
    assert set(saved["accuracy"]) == {"nr/nr", "nr/r"}
    assert all(0.0 <= a <= 1.0 for a in saved["accuracy"].values())
    assert saved["params"] == sum(
        p.numel() for p in training.build_model(_config(model_file, tmp_path)).parameters()
    )
    loss = saved["loss_history"]
    assert len(loss) == 2 * 16  # 256 digits / batch 16, two epochs
    assert sum(loss[-8:]) / 8 < sum(loss[:8]) / 8, loss
    assert 0 <= saved["equivariance_error"] < 0.5  # pointwise layers: approximate, but bounded


def test_same_seed_same_run(model_file, tmp_path):
    a = train(_config(model_file, tmp_path / "a"), progress=False)
    b = train(_config(model_file, tmp_path / "b"), progress=False)
    assert a["loss_history"] == b["loss_history"] and a["accuracy"] == b["accuracy"]
    c = train(_config(model_file, tmp_path / "c", seed=1), progress=False)
    assert c["loss_history"] != a["loss_history"]


def test_an_interrupted_run_resumes_where_it_stopped(model_file, tmp_path, monkeypatch):
    reference = train(_config(model_file, tmp_path / "ref", checkpoint_every=3), progress=False)
    calls = {"n": 0}
    real_step = torch.optim.Adam.step

    def crash_after_seven(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 7:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", crash_after_seven)
    with pytest.raises(KeyboardInterrupt):
        train(_config(model_file, tmp_path / "run", checkpoint_every=3), progress=False)
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 6)  # the last checkpoint before the crash at step 8
    resumed = train(_config(model_file, tmp_path / "run", checkpoint_every=3), progress=False)
    assert len(resumed["loss_history"]) == len(reference["loss_history"])
    torch.testing.assert_close(resumed["loss_history"], reference["loss_history"], rtol=1e-5, atol=1e-6)
    assert resumed["accuracy"] == reference["accuracy"]


def test_resuming_with_another_configuration_is_refused(model_file, tmp_path):
    train(_config(model_file, tmp_path / "run"), progress=False)
    with pytest.raises(SphcError, match="another configuration"):
        train(_config(model_file, tmp_path / "run", lr=1e-2), progress=False)


def test_planar_baseline_has_the_papers_budget():
    params = sum(p.numel() for p in PlanarCNN((1, 20, 39)).parameters())
    assert abs(params - 58_000) <= 0.05 * 58_000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--train", "x"], "unknown split 'x'"),
        (["--test", "nr,rotated"], "unknown split 'rotated'"),
        (["--data", "cifar"], "unknown data set 'cifar'"),
        (["--epochs", "0"], "--epochs must be >= 1"),
    ],
)
def test_bad_arguments_are_one_line_errors(model_file, tmp_path, capsys, argv, message):
    code = main(["train", str(model_file), "--out", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err


def test_a_model_whose_input_does_not_match_the_data_is_refused(tmp_path, capsys):
    model = tmp_path / "rgb.sph"
    model.write_text("Input s2 L=8 C=3 -> S2Conv C=2 N=2 -> Invariant -> Dense 10\n")
    code = main(["train", str(model), "--out", str(tmp_path / "run"), "--subset", "32"])
    err = capsys.readouterr().err
    assert code == 1 and "expects 3 input channels" in err and "Traceback" not in err


def test_cli_train_and_plot(model_file, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        str(model_file),
        "--out",
        str(out),
        "--subset",
        "64",
        "--test-subset",
        "32",
        "--epochs",
        "1",
    ]
    assert main([*argv, "--quiet", "--plots"]) == 0
    text = capsys.readouterr().out
    assert "NR/NR" in text and "NR/R" in text and "equivariance error" in text
    for name in ("digits.png", "curves.png", "accuracy.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert main(["plot", str(out), "-o", str(tmp_path / "pics")]) == 0
    assert (tmp_path / "pics" / "accuracy.png").exists()
