"""Atomization-energy regression on sets of Coulomb spheres (``sphc train --data qm9|qm7|xyz``).

Why it is built this way:

* **Residual trick (Cohen et al.).** A least-squares model on atom-type counts
  (``molecule_baselines.AtomCountModel``) is fitted on the training folds first; the network learns
  what it leaves, so it never spends capacity on the large, trivially extensive part of the energy.
  Both stages are scored on the held-out fold (``--no-residual`` trains on the energies directly).
* **Standardised targets.** The network's output is the residual minus its training mean, over its
  training standard deviation, with an MSE loss; predictions are mapped back to kcal/mol.
* **Input normalisation.** Sphere values span 0 to ~140 and their scale differs by element, so each
  channel is shifted and scaled by its mean and standard deviation over the training atoms' samples.
  One constant per channel: a rotation-equivariant map (a constant is invariant), fitted on the
  training folds only.
* **Batches trimmed.** Molecules are padded to the data set's largest; each batch is cut to its own
  largest molecule (atoms come first in each row), so padding costs less. Padding contributes
  exactly nothing either way (docs/CONVENTIONS.md §7.12).
* **Checks on the trained model** (``metrics["checks"]``), on up to ``CHECK_MOLECULES`` held-out
  molecules with spheres recomputed from coordinates: permuting each molecule's atoms must change the
  prediction by float rounding only; rotating each molecule by its own Haar-random rotation changes
  it by a reported amount (the input sampling is only approximately equivariant).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sphc.apps.molecule_baselines import regression_metrics
from sphc.apps.tasks import Task, check_splits, is_set_model, predict, seeded_choice
from sphc.errors import SphcError

#: Held-out molecules the permutation / rotation checks and the per-epoch learning curve use (the
#: paper-scale model needs seconds per molecule on a CPU; the curve and checks are estimates).
CHECK_MOLECULES = 500
CURVE_MOLECULES = 500
_PURPOSE_TEST, _PURPOSE_CHECK = 11, 12


def _compressed(x: np.ndarray) -> np.ndarray:
    """log1p of the Coulomb potentials, the one place the model's inputs are transformed.

    Near a neighbour the potentials grow as 1/r^p and span orders of magnitude; uncompressed, a few
    such samples made training unstable (held-out RMSE jumping 10x between epochs). A pointwise map
    of the signal commutes with rotations, so equivariance is untouched; padding stays 0.
    """
    return np.log1p(x)


class MoleculeTask(Task):
    """Sets of spheres in, one energy out; a molecule's atoms are the set's elements."""

    data_sets = ("qm9", "qm7", "xyz")
    fitted_baselines = ("atom-counts", "coulomb-krr")
    pictures = ("predicted.png", "errors.png", "learning_curve.png")

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        check_splits(config)
        if config.train != "nr":
            raise SphcError(
                "--train r does not apply to molecules: they train as given; the trained model's "
                "response to rotated molecules is measured and reported in metrics.json"
            )
        if config.data == "qm9" and config.data_path is not None:
            raise SphcError(
                "--data qm9 reads the qm9pack wheel and takes no --data-path; use --data qm7 "
                "--data-path FILE.mat or --data xyz --data-path DIR for your own molecules"
            )
        if config.data != "qm9" and config.data_path is None:
            what = "a qm7.mat file" if config.data == "qm7" else "a directory of .xyz files"
            raise SphcError(f"--data {config.data} needs --data-path: {what}")
        if config.data == "qm7" and not config.data_path.endswith(".mat"):
            raise SphcError(f"--data qm7 expects a .mat file (QM7's layout), got {config.data_path}")
        if config.data == "xyz" and not Path(config.data_path).is_dir():
            raise SphcError(f"--data xyz expects a directory of .xyz files, got {config.data_path}")
        from sphc.data.molecules import N_FOLDS

        if not 0 <= config.fold < N_FOLDS:
            raise SphcError(f"--fold must be in 0..{N_FOLDS - 1}, got {config.fold}")

    # ------------------------------------------------------------------------------ the data

    def _molecules(self, progress: bool):
        from sphc.data.molecules import fold_indices, load_molecules

        c = self.config
        source = "qm9" if c.data == "qm9" else c.data_path
        mols = load_molecules(source, c.subset, c.max_heavy_atoms, c.seed, progress=progress)
        train, test = fold_indices(mols, c.fold)
        test = test[seeded_choice(len(test), c.test_subset, c.seed, _PURPOSE_TEST)]
        if len(train) < 2 or len(test) == 0:
            raise SphcError(
                f"{mols.source}: fold {c.fold} leaves {len(train)} training / {len(test)} held-out "
                "molecules; use more molecules (--subset)"
            )
        return mols, train, test

    def load(self, model: nn.Module, progress: bool) -> None:
        from sphc.apps.molecule_baselines import AtomCountModel
        from sphc.data.molecules import molecule_spheres

        c = self.config
        if not is_set_model(model):
            raise SphcError(
                f"{c.model} takes one sphere per example, but a molecule is a set of spheres (one per "
                "atom): use a set model, Input s2 L=... C=5 set=true ... SetSum (examples/qm7.sph)"
            )
        self.mols, self.train_idx, self.test_idx = self._molecules(progress)
        C, L, _ = model.input_shape
        if len(self.mols.elements) != C:
            raise SphcError(
                f"{c.model} expects {C} input channels, but {self.mols.source} has one per element "
                f"({' '.join(self.mols.elements)}): use Input ... C={len(self.mols.elements)}"
            )
        self.spheres = molecule_spheres(self.mols, L, progress=progress)  # one radius for every fold
        self.n_atoms = self.mols.n_atoms
        self.first_stage = AtomCountModel.fit(self.mols.take(self.train_idx)) if c.residual else None
        self.base = self.first_stage.predict(self.mols) if self.first_stage else np.zeros(len(self.mols))
        rest = self.mols.energy[self.train_idx] - self.base[self.train_idx]
        self.target_mean = float(rest.mean())
        self.target_std = float(rest.std()) or 1.0
        self.input_mean, self.input_std = self._channel_statistics()
        self.n_train = len(self.train_idx)

    def _channel_statistics(self, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and one shared standard deviation of the training atoms' log1p samples."""
        x, mask = self.spheres.x, self.spheres.mask
        C = x.shape[2]
        s, s2, n = np.zeros(C), np.zeros(C), 0
        for i in range(0, len(self.train_idx), chunk):
            idx = self.train_idx[i : i + chunk]
            atoms = _compressed(x[idx][mask[idx]].astype(np.float64))  # (atoms, C, L, 2L-1)
            s += atoms.sum(axis=(0, 2, 3))
            s2 += (atoms**2).sum(axis=(0, 2, 3))
            n += atoms.shape[0] * atoms.shape[2] * atoms.shape[3]
        mean = s / n
        # one scale for all channels: a rare element's channel (F: ~1 % of the molecules) is almost
        # always 0, so its own standard deviation is tiny and its rare non-zero values would become
        # tens of sigmas — a few CF3 molecules were then mispredicted by ~400 kcal/mol. A shared scale
        # keeps the elements' potentials in their physical proportion.
        std = float(np.sqrt(max(float(np.mean(s2 / n - mean**2)), 0.0))) or 1.0
        return mean, np.full(C, std)

    def inputs(
        self, x: np.ndarray, mask: np.ndarray, n_atoms: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised model arguments (x, mask) of molecules, trimmed to the largest one.

        The potentials are compressed first (``_compressed``), then standardised.
        """
        width = max(1, int(n_atoms.max(initial=1)))
        xt = torch.from_numpy(_compressed(x[:, :width]))
        m = torch.from_numpy(self.input_mean.astype(np.float32))[:, None, None]
        s = torch.from_numpy(self.input_std.astype(np.float32))[:, None, None]
        return (xt - m) / s, torch.from_numpy(np.ascontiguousarray(mask[:, :width]))

    def _at(self, molecules: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs(self.spheres.x[molecules], self.spheres.mask[molecules], self.n_atoms[molecules])

    def batch(self, index):
        molecules = self.train_idx[index]
        target = (self.mols.energy[molecules] - self.base[molecules] - self.target_mean) / self.target_std
        return self._at(molecules), torch.from_numpy(target.astype(np.float32))

    def losses(self, output, target):
        return (output.reshape(-1) - target) ** 2

    def _to_kcal(self, output: np.ndarray, molecules: np.ndarray) -> np.ndarray:
        return self.base[molecules] + self.target_mean + self.target_std * output.reshape(-1)

    def predict_kcal(self, model: nn.Module, molecules: np.ndarray, device: str) -> np.ndarray:
        """Predicted energies (kcal/mol) of the loaded molecules at ``molecules``."""
        out = predict(model, lambda i: self._at(molecules[i]), len(molecules), device, self.config.batch)
        return self._to_kcal(out, molecules)

    def epoch_end(self, model, device):
        curve = self.test_idx[: min(len(self.test_idx), CURVE_MOLECULES)]
        pred = self.predict_kcal(model, curve, device)
        return {"heldout_rmse_kcal_mol": regression_metrics(self.mols.energy[curve], pred)["rmse_kcal_mol"]}

    # -------------------------------------------------------------------------- evaluation

    def state(self) -> dict:
        fs = self.first_stage
        return {
            "elements": list(self.mols.elements),
            "sphere_radius_angstrom": self.spheres.radius,
            "sphere_power": self.spheres.power,
            "input_mean": self.input_mean.tolist(),
            "input_std": self.input_std.tolist(),
            "target_mean_kcal_mol": self.target_mean,
            "target_std_kcal_mol": self.target_std,
            "atom_count_weights_kcal_mol": (
                dict(zip(fs.elements, fs.weights.tolist(), strict=True)) if fs else None
            ),
            "atom_count_bias_kcal_mol": fs.bias if fs else None,
        }

    def _common(self) -> dict:
        return {
            "source": self.mols.source,
            "fold": self.config.fold,
            "molecules": len(self.mols),
            "train_size": int(len(self.train_idx)),
            "test_size": int(len(self.test_idx)),
        }

    def evaluate(self, model, device, out):
        test, y = self.test_idx, self.mols.energy[self.test_idx]
        pred = self.predict_kcal(model, test, device)
        final = regression_metrics(y, pred)
        stages = {"network": final}
        if self.first_stage:
            stages = {"atom-counts": regression_metrics(y, self.base[test]), "atom-counts + network": final}
        _save_predictions(out, self.mols.ids[test], y, pred, self.base[test] if self.first_stage else None)
        return {
            **self._common(),
            **final,
            "stages": stages,
            "residual": self.config.residual,
            "task_state": self.state(),
            "checks": self.checks(model, device),
        }

    def checks(self, model: nn.Module, device: str) -> dict:
        """Permutation and rotation of held-out molecules, spheres recomputed from the coordinates."""
        from sphc.data.mnist import random_rotations
        from sphc.data.molecules import coulomb_spheres, permute_atoms, rotate

        rng = np.random.default_rng(np.random.SeedSequence([self.config.seed, _PURPOSE_CHECK]))
        chosen = self.test_idx[np.sort(rng.permutation(len(self.test_idx))[:CHECK_MOLECULES])]
        mols = self.mols.take(chosen)
        L, radius, power = self.spheres.L, self.spheres.radius, self.spheres.power

        def energies(m) -> np.ndarray:
            x = coulomb_spheres(m, L, radius, power)
            out = predict(
                model, lambda i: self.inputs(x[i], m.mask[i], m.n_atoms[i]), len(m), device, self.config.batch
            )
            return self._to_kcal(out, chosen)

        reference = energies(mols)
        A = mols.charges.shape[1]
        perm = np.tile(np.arange(A), (len(mols), 1))
        for row, n in enumerate(mols.n_atoms):  # shuffle the real atoms; padding stays last
            perm[row, :n] = rng.permutation(n)
        permuted = np.abs(energies(permute_atoms(mols, perm)) - reference)
        rotation_seed = int(rng.integers(2**31))
        rotated = np.abs(energies(rotate(mols, random_rotations(len(mols), rotation_seed))) - reference)
        return {
            "molecules": int(len(mols)),
            "permutation_max_abs_change_kcal_mol": float(permuted.max()),
            "rotation_mean_abs_change_kcal_mol": float(rotated.mean()),
            "rotation_max_abs_change_kcal_mol": float(rotated.max()),
            "rotation_seed": rotation_seed,
        }

    def fit_baseline(self, out, progress):
        from sphc.apps.molecule_baselines import baseline_predictions
        from sphc.data.molecules import fold_indices

        start = time.perf_counter()
        self.mols, self.train_idx, self.test_idx = self._molecules(progress)
        pred, extra = baseline_predictions(
            self.config.baseline, self.mols, self.config.fold, self.config.seed
        )
        pred = pred[np.searchsorted(fold_indices(self.mols, self.config.fold)[1], self.test_idx)]
        y = self.mols.energy[self.test_idx]
        _save_predictions(out, self.mols.ids[self.test_idx], y, pred, None)
        return {
            **self._common(),
            **regression_metrics(y, pred),
            "fit": extra,
            "params": None,
            "wall_time_s": round(time.perf_counter() - start, 1),
        }

    # ------------------------------------------------------------------- reading the results

    @staticmethod
    def summary(metrics):
        c = metrics["config"]
        what = f"{metrics['baseline']} baseline" if metrics["baseline"] else metrics["model"]
        size = f"{metrics['params']:,} parameters, " if metrics.get("params") else ""
        lines = [
            f"{what}: {size}{metrics['molecules']:,} molecules ({metrics['source']}), fold {c['fold']}: "
            f"{metrics['train_size']:,} train / {metrics['test_size']:,} held out, {metrics['wall_time_s']:.0f} s"
        ]
        for name, m in metrics.get("stages", {"": metrics}).items():
            label = f"{name:22s}" if name else f"{'':22s}"
            lines.append(
                f"  {label} RMSE {m['rmse_kcal_mol']:7.2f}  MAE {m['mae_kcal_mol']:7.2f}  kcal/mol (held-out fold)"
            )
        if "checks" in metrics:
            k = metrics["checks"]
            lines.append(
                f"  permuting atoms changes predictions by at most {k['permutation_max_abs_change_kcal_mol']:.1e} "
                f"kcal/mol; rotating molecules by {k['rotation_mean_abs_change_kcal_mol']:.3f} on average "
                f"(max {k['rotation_max_abs_change_kcal_mol']:.3f}) over {k['molecules']} molecules"
            )
        return lines

    @staticmethod
    def draw(runs, run_dirs, out):
        from sphc.apps import plots

        predictions = [load_predictions(d) for d in run_dirs]
        return [
            plots.plot_predicted(out / "predicted.png", runs, predictions),
            plots.plot_errors(out / "errors.png", runs, predictions),
            plots.plot_learning_curve(out / "learning_curve.png", runs),
        ]


PREDICTIONS = "predictions.npz"


def _save_predictions(out: Path, ids, y_true, y_pred, first_stage) -> None:
    arrays = {"ids": np.asarray(ids), "y_true": np.asarray(y_true), "y_pred": np.asarray(y_pred)}
    if first_stage is not None:
        arrays["first_stage"] = np.asarray(first_stage)
    np.savez(out / PREDICTIONS, **arrays)


def load_predictions(run_dir: Path) -> dict[str, np.ndarray]:
    """The held-out predictions a molecule run wrote (``predictions.npz``)."""
    path = Path(run_dir) / PREDICTIONS
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise SphcError(f"cannot read {path}: {e}") from None
