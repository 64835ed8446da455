"""`sphc train` on molecules and shapes at tiny scale: task plumbing, the residual trick, metrics that
agree with an independent recomputation, resume, the trained model's permutation invariance, the
fitted baselines, pictures, and one clear error per wrong option.

Molecules are written by the test as an .xyz directory (random geometries, energies = per-element
terms + a pairwise geometric term the network can learn); shapes come from the procedural stand-in.
Randomness is fresh on every run (module-scoped seeds, printed on failure).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _molecule_files import SYMBOLS, write_molecules

from sphc.apps import train as training
from sphc.apps.cli import main
from sphc.apps.retrieval import classifier_rankings, evaluate_rankings
from sphc.apps.train import TrainConfig, train
from sphc.errors import SphcError

MOLECULE_MODEL = (
    "Input s2 L=4 C=5 set=true -> S2Conv C=4 L=4 N=2 -> ReLU -> EfficientLayer mst L=2 K=4 tau=2"
    " -> Invariant -> Dense 16 act=relu -> SetSum -> Dense 8 act=relu -> Dense 1\n"
)
SHAPE_MODEL = (
    "Input s2 L=6 C=6 -> S2Conv C=4 L=4 N=2 -> ReLU -> EfficientLayer mst L=2 K=4 tau=2 -> Invariant"
    " -> Dense 20\n"  # 20 outputs for 13 classes: the first 13 are the logits
)


@pytest.fixture(scope="module")
def seed() -> int:
    return int(np.random.default_rng().integers(2**31))


@pytest.fixture(scope="module")
def molecules(tmp_path_factory, seed) -> dict:
    """An .xyz directory of 60 molecules and what the test knows about them (in file order)."""
    return write_molecules(tmp_path_factory.mktemp("xyz"), np.random.default_rng(seed), 60)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    (root / "molecules.sph").write_text(MOLECULE_MODEL)
    (root / "shapes.sph").write_text(SHAPE_MODEL)
    return {"molecules": root / "molecules.sph", "shapes": root / "shapes.sph"}


def _molecule_config(model_files, molecules, out: Path, **kw) -> TrainConfig:
    base = dict(
        model=str(model_files["molecules"]), out=str(out), data="xyz", data_path=str(molecules["root"]),
        epochs=2, batch=8, lr=3e-3,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _shape_config(model_files, out: Path, **kw) -> TrainConfig:
    base = dict(
        model=str(model_files["shapes"]), out=str(out), data="synthetic-shapes", subset=26, test_subset=13,
        epochs=1, batch=13, lr=3e-3,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def molecule_run(model_files, molecules, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "molecules"
    train(_molecule_config(model_files, molecules, out, epochs=6, fold=1), progress=False)
    return out


# ---------------------------------------------------------------------------------------- molecules


def test_the_residual_trick_and_the_metrics_match_an_independent_recomputation(molecule_run, molecules, seed):
    m = json.loads((molecule_run / "metrics.json").read_text())
    pred = np.load(molecule_run / "predictions.npz")
    fold = m["task_state"]  # what the run derived from its training folds
    held_out = pred["ids"]  # xyz ids are the sorted file numbers
    train_ids = np.setdiff1d(np.arange(60), held_out)
    assert m["train_size"] == len(train_ids) and m["test_size"] == len(held_out) > 0, seed
    # stage 1: least squares on the training molecules' atom counts (with a bias), written here
    X = np.hstack([molecules["counts"], np.ones((60, 1))])
    coef = np.linalg.lstsq(X[train_ids], molecules["energy"][train_ids], rcond=None)[0]
    first = X @ coef
    np.testing.assert_allclose(pred["first_stage"], first[held_out], rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(pred["y_true"], molecules["energy"][held_out], rtol=1e-12)
    np.testing.assert_allclose(
        [fold["atom_count_weights_kcal_mol"][e] for e in SYMBOLS], coef[:-1], rtol=1e-6, atol=1e-6
    )
    # the network learns the standardised rest
    rest = molecules["energy"][train_ids] - first[train_ids]
    assert fold["target_mean_kcal_mol"] == pytest.approx(rest.mean(), abs=1e-6)
    assert fold["target_std_kcal_mol"] == pytest.approx(rest.std(), rel=1e-9)
    # both stages scored on the held-out fold, in kcal/mol
    stage1 = m["stages"]["atom-counts"]
    assert stage1["rmse_kcal_mol"] == pytest.approx(np.sqrt(np.mean((first[held_out] - pred["y_true"]) ** 2)))
    err = pred["y_pred"] - pred["y_true"]
    assert m["rmse_kcal_mol"] == pytest.approx(np.sqrt(np.mean(err**2)))
    assert m["mae_kcal_mol"] == pytest.approx(np.mean(np.abs(err)))
    assert m["stages"]["atom-counts + network"]["rmse_kcal_mol"] == m["rmse_kcal_mol"]
    assert m["params"] == sum(p.numel() for p in training.build_model(_cfg_of(m)).parameters())
    loss = m["loss_history"]
    assert len(loss) == 6 * int(np.ceil(len(train_ids) / 8))
    per_epoch = np.asarray(loss).reshape(6, -1).mean(1)  # batch losses are noisy at batch 8
    assert per_epoch[-1] < per_epoch[0], (seed, per_epoch)
    assert [e["epoch"] for e in m["epoch_history"]] == list(range(1, 7))


def _cfg_of(metrics: dict) -> TrainConfig:
    return TrainConfig(**metrics["config"], out="unused")


def _trained_model(run: Path) -> torch.nn.Module:
    m = json.loads((run / "metrics.json").read_text())
    model = training.build_model(_cfg_of(m))
    model.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["model"])
    return model.eval()


def test_the_trained_molecule_model_is_permutation_invariant_to_rounding(molecule_run, seed):
    m = json.loads((molecule_run / "metrics.json").read_text())
    checks = m["checks"]
    std = m["task_state"]["target_std_kcal_mol"]
    # the run's own check: spheres recomputed for shuffled atoms, in kcal/mol
    assert checks["molecules"] == m["test_size"]
    assert 0 <= checks["permutation_max_abs_change_kcal_mol"] <= 1e-5 * std, (seed, checks)
    # rotating molecules changes predictions (input sampling), but far less than the error
    assert 0 < checks["rotation_mean_abs_change_kcal_mol"] < 0.5 * m["rmse_kcal_mol"], (seed, checks)
    # directly on the network: shuffle the set axis of random inputs, pad with NaN
    model = _trained_model(molecule_run)
    rng = np.random.default_rng(seed)
    x = torch.randn(6, 5, *model.input_shape)
    mask = torch.from_numpy(rng.random((6, 5)) < 0.7)
    mask[:, 0] = True
    with torch.no_grad():
        y = model(x, mask)
        perm = torch.stack([torch.from_numpy(rng.permutation(5)) for _ in range(6)])
        xp = torch.take_along_dim(x, perm[:, :, None, None, None], 1)
        yp = model(xp, torch.take_along_dim(mask, perm, 1))
        padded = torch.cat([x, torch.full((6, 3, *model.input_shape), float("nan"))], 1)
        ypad = model(padded, torch.cat([mask, torch.zeros(6, 3, dtype=torch.bool)], 1))
    torch.testing.assert_close(yp, y, rtol=1e-6, atol=1e-6 * float(y.abs().max()))
    torch.testing.assert_close(ypad, y, rtol=1e-6, atol=1e-6 * float(y.abs().max()))


def test_the_first_stage_of_a_network_run_is_the_atom_count_baseline(
    molecule_run, model_files, molecules, tmp_path
):
    run = json.loads((molecule_run / "metrics.json").read_text())
    base = train(
        _molecule_config(model_files, molecules, tmp_path / "counts", fold=1, baseline="atom-counts"),
        progress=False,
    )
    assert base["rmse_kcal_mol"] == pytest.approx(run["stages"]["atom-counts"]["rmse_kcal_mol"], rel=1e-9)
    assert base["test_size"] == run["test_size"] and not (tmp_path / "counts" / "checkpoint.pt").exists()
    krr = train(
        _molecule_config(model_files, molecules, tmp_path / "krr", fold=1, baseline="coulomb-krr"),
        progress=False,
    )
    pred = np.load(tmp_path / "krr" / "predictions.npz")
    assert krr["rmse_kcal_mol"] == pytest.approx(np.sqrt(np.mean((pred["y_pred"] - pred["y_true"]) ** 2)))
    assert {"gamma", "alpha"} <= set(krr["fit"])


def test_test_subset_picks_held_out_molecules(model_files, molecules, tmp_path):
    m = train(
        _molecule_config(model_files, molecules, tmp_path / "r", epochs=1, test_subset=4), progress=False
    )
    assert m["test_size"] == 4 and m["checks"]["molecules"] == 4
    assert len(np.load(tmp_path / "r" / "predictions.npz")["ids"]) == 4


def test_no_residual_trains_on_the_energies(model_files, molecules, tmp_path):
    m = train(
        _molecule_config(model_files, molecules, tmp_path / "r", epochs=1, residual=False), progress=False
    )
    assert list(m["stages"]) == ["network"] and m["task_state"]["atom_count_weights_kcal_mol"] is None
    train_e = np.setdiff1d(np.arange(60), np.load(tmp_path / "r" / "predictions.npz")["ids"])
    assert m["task_state"]["target_mean_kcal_mol"] == pytest.approx(molecules["energy"][train_e].mean())


# ------------------------------------------------------------------------------------------- shapes


@pytest.fixture(scope="module")
def shape_run(model_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "shapes"
    train(_shape_config(model_files, out), progress=False)
    return out


def test_shape_retrieval_metrics_are_those_of_the_classifier_rankings(shape_run):
    from sphc.data.synthetic_shapes import CLASSES, synthetic_shapes

    m = json.loads((shape_run / "metrics.json").read_text())
    assert m["classes"] == list(CLASSES) and m["train_size"] == 26 and m["test_size"] == {"nr": 13, "r": 13}
    model = _trained_model(shape_run)
    for kind in ("nr", "r"):
        test = synthetic_shapes("test", 6, kind == "r", seed=0, per_class=1, progress=False)
        with torch.no_grad():
            scores = model(torch.from_numpy(test.x)).double().numpy()[:, : len(CLASSES)]
        report = evaluate_rankings(
            classifier_rankings(scores, test.ids), test.ids, test.category, test.subcategory
        )
        got = m["retrieval"][f"nr/{kind}"]
        assert got["micro"] == pytest.approx(report.micro.as_dict(), abs=1e-6)
        assert got["macro"] == pytest.approx(report.macro.as_dict(), abs=1e-6)
        assert m["accuracy"][f"nr/{kind}"] == pytest.approx(float((scores.argmax(1) == test.y).mean()))
    assert "classifier" in m["retrieval_method"] and 0 <= m["equivariance_error"] < 0.5


def test_the_planar_baseline_trains_on_six_channel_grids(model_files, tmp_path):
    m = train(_shape_config(model_files, tmp_path / "planar", baseline="planar"), progress=False)
    model = training.build_model(_cfg_of(m))
    assert model.features[0].in_channels == 6 and model.head[-1].out_features == 13
    assert set(m["retrieval"]) == {"nr/nr", "nr/r"} and "equivariance_error" not in m


# ------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("kind", ["molecules", "shapes"])
def test_an_interrupted_run_resumes_where_it_stopped(kind, model_files, molecules, tmp_path, monkeypatch):
    def config(out):
        if kind == "molecules":
            return _molecule_config(model_files, molecules, out, epochs=2, checkpoint_every=2)
        return _shape_config(model_files, out, epochs=2, batch=4, checkpoint_every=2)

    reference = train(config(tmp_path / "ref"), progress=False)
    calls, real_step = {"n": 0}, torch.optim.Adam.step

    def crash_after_five(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "run"), progress=False)
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 4)
    resumed = train(config(tmp_path / "run"), progress=False)
    torch.testing.assert_close(resumed["loss_history"], reference["loss_history"], rtol=1e-5, atol=1e-6)
    if kind == "molecules":
        assert resumed["rmse_kcal_mol"] == pytest.approx(reference["rmse_kcal_mol"], rel=1e-4)
    else:
        assert resumed["retrieval"] == reference["retrieval"] and resumed["accuracy"] == reference["accuracy"]


# ------------------------------------------------------------------------------- CLI, plots, errors


def test_cli_trains_and_plots_each_kind(model_files, molecules, molecule_run, shape_run, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["train", str(model_files["molecules"]), "--data", "xyz", "--data-path", str(molecules["root"])]
    assert main([*argv, "--out", str(out), "--epochs", "1", "--batch", "16", "--quiet", "--plots"]) == 0
    text = capsys.readouterr().out
    assert "atom-counts + network" in text and "permuting atoms" in text
    for name in ("predicted.png", "errors.png", "learning_curve.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert main(["plot", str(shape_run), "-o", str(tmp_path / "pics")]) == 0
    for name in ("shapes.png", "retrieval.png", "curves.png", "accuracy.png"):
        assert (tmp_path / "pics" / name).read_bytes().startswith(b"\x89PNG")
    assert main(["plot", str(shape_run), str(molecule_run), "-o", str(tmp_path / "mixed")]) == 1
    assert "different kinds" in capsys.readouterr().err and not (tmp_path / "mixed").exists()


@pytest.mark.parametrize(
    "model, argv, message",
    [
        ("molecules", ["--data", "qm9", "--data-path", "x"], "takes no --data-path"),
        ("molecules", ["--data", "xyz"], "--data xyz needs --data-path"),
        ("molecules", ["--data", "qm7", "--data-path", "a.txt"], "expects a .mat file"),
        ("molecules", ["--data", "qm9", "--fold", "5"], "--fold must be in 0..4"),
        ("molecules", ["--data", "qm9", "--train", "r"], "--train r does not apply to molecules"),
        ("molecules", ["--data", "qm9", "--baseline", "planar"], "unknown baseline 'planar' for --data qm9"),
        ("molecules", ["--fold", "1"], "--fold applies to molecule data"),
        ("molecules", ["--no-residual"], "--no-residual applies to molecule data"),
        ("molecules", ["--baseline", "coulomb-krr"], "unknown baseline 'coulomb-krr'"),
        ("molecules", ["--subset", "8"], "takes a set of spheres per example"),  # a set model on digits
        ("shapes", ["--data", "synthetic-shapes", "--data-path", "x"], "takes no --data-path"),
        ("shapes", ["--data", "shapes"], "--data shapes needs --data-path DIR"),
        ("shapes", ["--data", "qm9", "--subset", "10"], "a molecule is a set of spheres"),
        ("molecules", ["--data", "xyz", "--data-path", "{empty}"], "no .xyz files"),
    ],
)
def test_bad_options_are_one_line_errors(model_files, tmp_path, capsys, model, argv, message):
    (tmp_path / "empty").mkdir()
    argv = [a.format(empty=tmp_path / "empty") for a in argv]
    code = main(["train", str(model_files[model]), "--out", str(tmp_path / "run"), "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_model_with_too_few_outputs_for_the_classes_is_refused(tmp_path):
    (tmp_path / "m.sph").write_text(SHAPE_MODEL.replace("Dense 20", "Dense 10"))
    with pytest.raises(SphcError, match="10 outputs but the data has 13 classes"):
        train(TrainConfig(model=str(tmp_path / "m.sph"), out=str(tmp_path / "r"), data="synthetic-shapes",
                          subset=13, test_subset=13), progress=False)  # fmt: skip


def test_a_plain_mesh_tree_is_split_by_class(tmp_path):
    from sphc.apps.shape_task import stratified_split

    category = np.repeat(np.array(["a", "b", "c"]), [10, 5, 2])
    tr, te = stratified_split(category, seed=3)
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(17))
    assert [int((category[te] == c).sum()) for c in "abc"] == [2, 1, 1]
    assert np.array_equal(stratified_split(category, seed=3)[1], te)
