"""Baselines for atomization-energy regression, on the same molecules and folds as the spherical model.

* ``atom-counts``: least squares (with bias) on how many atoms of each element a molecule has. It
  is also the first stage of Cohen et al.'s residual trick (the network learns what it leaves).
* ``coulomb-krr``: kernel ridge regression on the sorted Coulomb matrix with a Laplacian kernel
  (Rupp et al. 2012; sorted by row norm as in Hansen et al. 2013). Coulomb matrices use atomic
  units (Bohr), as defined. The kernel width and ridge strength are chosen on a seeded validation
  split carved from the training folds (never the held-out fold), then the model is refit on all
  training folds. The width grid is relative to the median L1 distance, so it adapts to the data set.

``run_baseline`` returns a metrics dict (RMSE and MAE in kcal/mol on the held-out fold);
``python -m sphc.apps.molecule_baselines --fold 0`` prints them as a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sphc.data.molecules import (
    BOHR_ANGSTROM,
    N_FOLDS,
    Molecules,
    atom_counts,
    fold_indices,
    load_molecules,
)
from sphc.errors import SphcError

BASELINES = ("atom-counts", "coulomb-krr")
#: Laplacian kernel widths tried, as multiples of 1 / (median L1 distance between training matrices).
GAMMA_FACTORS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)
#: Ridge strengths tried (the kernel's diagonal is 1).
ALPHAS = (1e-9, 1e-6, 1e-3)
VALIDATION_FRACTION = 0.2


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """RMSE and MAE over all molecules (no dropped partial batch), in the targets' unit."""
    err = np.asarray(y_pred, np.float64) - np.asarray(y_true, np.float64)
    return {"rmse_kcal_mol": float(np.sqrt(np.mean(err**2))), "mae_kcal_mol": float(np.mean(np.abs(err)))}


# ------------------------------------------------------------------------------------- atom counts


@dataclass(frozen=True, eq=False)
class AtomCountModel:
    """E ~ sum over elements of count * weight + bias (kcal/mol), fitted by least squares."""

    elements: tuple[str, ...]
    weights: np.ndarray
    bias: float

    @classmethod
    def fit(cls, mols: Molecules) -> AtomCountModel:
        X = np.hstack([atom_counts(mols), np.ones((len(mols), 1))])
        coef = np.linalg.lstsq(X, mols.energy, rcond=None)[0]  # minimum norm if an element never occurs
        return cls(mols.elements, coef[:-1], float(coef[-1]))

    def predict(self, mols: Molecules) -> np.ndarray:
        if mols.elements != self.elements:
            raise SphcError(
                f"atom-count model fitted on elements {' '.join(self.elements)}, "
                f"applied to {' '.join(mols.elements)}"
            )
        return atom_counts(mols) @ self.weights + self.bias


# ---------------------------------------------------------------------------- sorted Coulomb matrix


def sorted_coulomb_matrices(mols: Molecules) -> np.ndarray:
    """float64 (n, A(A+1)/2): lower triangles of the Coulomb matrices, rows sorted by descending norm.

    M_ii = Z_i^2.4 / 2, M_ij = Z_i Z_j / |R_i - R_j| (Bohr); padding rows are zero and sort last.
    """
    z = mols.charges.astype(np.float64)
    r = mols.positions / BOHR_ANGSTROM
    real = mols.mask[:, :, None] & mols.mask[:, None, :]
    dist = np.linalg.norm(r[:, :, None] - r[:, None], axis=-1)
    off = np.divide(z[:, :, None] * z[:, None], dist, out=np.zeros_like(dist), where=real & (dist > 0))
    A = z.shape[1]
    M = np.where(np.eye(A, dtype=bool), (0.5 * z**2.4)[:, :, None], off)
    order = np.argsort(-np.linalg.norm(M, axis=2), axis=1, kind="stable")
    M = np.take_along_axis(np.take_along_axis(M, order[:, :, None], 1), order[:, None, :], 2)
    rows, cols = np.tril_indices(A)
    return M[:, rows, cols]


@dataclass(frozen=True, eq=False)
class CoulombKRR:
    """A fitted Laplacian-kernel ridge regression on sorted Coulomb matrices (targets centred)."""

    features: np.ndarray  # training matrices, (n_train, A(A+1)/2)
    dual: np.ndarray  # (n_train,) kernel ridge coefficients
    y_mean: float
    gamma: float
    alpha: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        from sklearn.metrics.pairwise import manhattan_distances

        return np.exp(-self.gamma * manhattan_distances(features, self.features)) @ self.dual + self.y_mean


def _krr_fit(dist: np.ndarray, y: np.ndarray, gamma: float, alpha: float) -> np.ndarray:
    from sklearn.kernel_ridge import KernelRidge

    return KernelRidge(alpha=alpha, kernel="precomputed").fit(np.exp(-gamma * dist), y).dual_coef_


def fit_coulomb_krr(
    features: np.ndarray,
    y: np.ndarray,
    seed: int = 0,
    gamma_factors: Sequence[float] = GAMMA_FACTORS,
    alphas: Sequence[float] = ALPHAS,
) -> tuple[CoulombKRR, dict]:
    """Grid-search (gamma, alpha) on a seeded validation split of the training set, refit on all of it.

    Returns the model and a record of the search (validation RMSE of every pair tried).
    """
    from sklearn.metrics.pairwise import manhattan_distances

    n = len(y)
    n_val = max(1, round(VALIDATION_FRACTION * n))
    if n - n_val < 2:
        raise SphcError(f"coulomb-krr: {n} training molecules are too few for a validation split")
    perm = np.random.default_rng(np.random.SeedSequence([seed, 2])).permutation(n)
    val, fit = perm[:n_val], perm[n_val:]
    dist = manhattan_distances(features)  # one matrix; the split's blocks are views of it
    y_mean = float(y[fit].mean())
    scale = float(np.median(dist[np.ix_(fit, fit)]))
    if scale <= 0:
        raise SphcError("coulomb-krr: the training molecules all have the same Coulomb matrix")
    search = []
    for factor in gamma_factors:
        gamma = factor / scale
        k_val = np.exp(-gamma * dist[np.ix_(val, fit)])
        for alpha in alphas:
            dual = _krr_fit(dist[np.ix_(fit, fit)], y[fit] - y_mean, gamma, alpha)
            rmse = float(np.sqrt(np.mean((k_val @ dual + y_mean - y[val]) ** 2)))
            search.append({"gamma": gamma, "alpha": alpha, "validation_rmse_kcal_mol": rmse})
    best = min(search, key=lambda s: s["validation_rmse_kcal_mol"])
    # A best width at the end of the grid means the grid should be moved for this data set.
    edge = best["gamma"] in (min(gamma_factors) / scale, max(gamma_factors) / scale)
    y_mean = float(y.mean())
    dual = _krr_fit(dist, y - y_mean, best["gamma"], best["alpha"])
    model = CoulombKRR(features, dual, y_mean, best["gamma"], best["alpha"])
    return model, {
        "best": best,
        "best_gamma_on_grid_edge": edge,
        "search": search,
        "n_validation": int(n_val),
    }


# ------------------------------------------------------------------------------------------ driver


def baseline_predictions(name: str, mols: Molecules, fold: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Fit baseline ``name`` on every fold but ``fold``: its predictions (kcal/mol) for the held-out
    molecules, in ``fold_indices`` order, and what the fit chose (weights or hyper-parameters)."""
    if name not in BASELINES:
        raise SphcError(f"unknown molecule baseline {name!r}; choose one of {', '.join(BASELINES)}")
    train, test = fold_indices(mols, fold)
    if len(train) == 0 or len(test) == 0:
        raise SphcError(
            f"{mols.source}: fold {fold} leaves {len(train)} training / {len(test)} test molecules"
        )
    if name == "atom-counts":
        model = AtomCountModel.fit(mols.take(train))
        extra = {"weights_kcal_mol": dict(zip(model.elements, model.weights.tolist(), strict=True))}
        extra["bias_kcal_mol"] = model.bias
        return model.predict(mols.take(test)), extra
    features = sorted_coulomb_matrices(mols)
    krr, search = fit_coulomb_krr(features[train], mols.energy[train], seed)
    return krr.predict(features[test]), {
        "gamma": krr.gamma,
        "alpha": krr.alpha,
        "hyperparameter_search": search,
    }


def run_baseline(name: str, mols: Molecules, fold: int, seed: int = 0) -> dict:
    """Fit baseline ``name`` on every fold but ``fold`` and score it on ``fold``: a metrics dict."""
    start = time.perf_counter()
    pred, extra = baseline_predictions(name, mols, fold, seed)
    train, test = fold_indices(mols, fold)
    return {
        "baseline": name,
        "source": mols.source,
        "fold": int(fold),
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        **regression_metrics(mols.energy[test], pred),
        "wall_time_s": round(time.perf_counter() - start, 2),
        **extra,
    }


def _table(rows: list[dict]) -> str:
    head = f"{'baseline':12s} {'fold':>4s} {'train':>6s} {'test':>6s} {'RMSE':>8s} {'MAE':>8s}  (kcal/mol)"
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['baseline']:12s} {r['fold']:>4} {r['n_train']:6d} {r['n_test']:6d} "
            f"{r['rmse_kcal_mol']:8.2f} {r['mae_kcal_mol']:8.2f}"
        )
    if len({r["fold"] for r in rows}) > 1:
        for name in dict.fromkeys(r["baseline"] for r in rows):
            rmse = np.array([r["rmse_kcal_mol"] for r in rows if r["baseline"] == name])
            mae = np.array([r["mae_kcal_mol"] for r in rows if r["baseline"] == name])
            lines.append(
                f"{name:12s} {'mean':>4s} {'':6s} {'':6s} {rmse.mean():5.2f}±{rmse.std(ddof=1):.2f} "
                f"{mae.mean():5.2f}±{mae.std(ddof=1):.2f}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sphc.apps.molecule_baselines", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", default="qm9", help="'qm9', a qm7.mat file or a directory of .xyz files")
    p.add_argument("--fold", default="0", help=f"held-out fold 0..{N_FOLDS - 1}, or 'all'")
    p.add_argument("--subset", default=None, help="number of molecules, or 'all' (default: QM9 7,165)")
    p.add_argument("--max-heavy-atoms", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline", choices=(*BASELINES, "all"), default="all")
    p.add_argument("--json", metavar="FILE", help="also write the metrics (a list of dicts) to FILE")
    args = p.parse_args(argv)
    try:
        folds = range(N_FOLDS) if args.fold == "all" else [_int(args.fold, "--fold")]
        subset = args.subset if args.subset in (None, "all") else _int(args.subset, "--subset")
        mols = load_molecules(args.data, subset, args.max_heavy_atoms, args.seed)
        names = BASELINES if args.baseline == "all" else (args.baseline,)
        rows = [run_baseline(name, mols, fold, args.seed) for fold in folds for name in names]
    except SphcError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    print(f"{mols.source}: {len(mols):,} molecules, up to {mols.charges.shape[1]} atoms")
    print(_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SphcError(f"{flag} expects an integer, got {text!r}") from None


if __name__ == "__main__":
    sys.exit(main())
