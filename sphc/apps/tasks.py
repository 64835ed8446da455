"""What ``sphc train`` trains on: one ``Task`` per kind of data set, chosen by ``--data``.

A task owns everything that differs between experiments — loading the data at the model's input
shape, what a batch is, the per-example loss, the evaluation after training, the summary lines
and the pictures — so that ``sphc.apps.train`` holds one training loop (checkpoints, resume,
distributed data parallel) for all of them:

* ``spherical-mnist`` (this module): digit classification, NR/R splits (docs/CONVENTIONS.md §10);
* ``qm9``, ``qm7``, ``xyz`` (``molecule_task``): atomization-energy regression on sets of Coulomb
  spheres, with Cohen et al.'s residual trick and the atom-count / Coulomb-matrix baselines;
* ``synthetic-shapes``, ``shapes`` (``shape_task``): shape classification and SHREC'17 retrieval.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sphc.errors import SphcError

if TYPE_CHECKING:
    from sphc.apps.train import TrainConfig

SPLITS = ("nr", "r")
EVAL_BATCH = 64


class PlanarCNN(nn.Module):
    """The planar baseline (≈58k parameters at L=20, one channel): the MW grid seen as an
    L × (2L−1) image with C channels."""

    def __init__(self, input_shape: tuple[int, int, int], classes: int = 10):
        super().__init__()
        self.input_shape = input_shape
        C = input_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(C, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d((2, 4)),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(512, 48), nn.ReLU(), nn.Linear(48, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def compiled_model(config: TrainConfig) -> nn.Module:
    from sphc.compiler.pipeline import load

    return load(config.model).Model()


def is_set_model(model: nn.Module) -> bool:
    """Whether a compiled model takes a set of spheres per example (``Input ... set=true``)."""
    return bool(getattr(getattr(model, "input", None), "set", False))


@torch.no_grad()
def output_size(model: nn.Module) -> int:
    """The number of outputs per example, found by one forward pass in evaluation mode."""
    probe = copy.deepcopy(model).cpu().eval()
    x = torch.zeros(1, *probe.input_shape, dtype=next(probe.parameters()).dtype)
    return int(probe(x).shape[-1])


def seeded_choice(n: int, k: int | None, seed: int, purpose: int) -> np.ndarray:
    """Sorted indices of ``k`` of ``n`` items drawn from ``seed`` (all of them when k is None or >= n)."""
    if k is None or k >= n:
        return np.arange(n)
    rng = np.random.default_rng(np.random.SeedSequence([seed, purpose]))
    return np.sort(rng.choice(n, size=k, replace=False))


@torch.no_grad()
def predict(model: nn.Module, inputs, count: int, device: str, batch: int = EVAL_BATCH) -> np.ndarray:
    """Model outputs (count, outputs) float64 in evaluation mode; ``inputs(index)`` gives a batch's
    arguments. The model's training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, count, batch):
        args = inputs(np.arange(i, min(count, i + batch)))
        out.append(model(*(a.to(device) for a in args)).double().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 1))


class Task:
    """One kind of experiment. Subclasses set the class attributes and implement the hooks."""

    #: ``--data`` values this task serves.
    data_sets: ClassVar[tuple[str, ...]] = ()
    #: ``--baseline`` values: networks (trained by the loop) and fitted models (no loop).
    network_baselines: ClassVar[tuple[str, ...]] = ()
    fitted_baselines: ClassVar[tuple[str, ...]] = ()
    #: Pictures ``sphc plot`` draws for runs of this task (file names).
    pictures: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: TrainConfig):
        self.config = config
        self.n_train = 0

    @classmethod
    def check(cls, config: TrainConfig) -> None:
        """Refuse option values that make no sense for this task (a ``SphcError`` naming the flag)."""
        baselines = cls.network_baselines + cls.fitted_baselines
        if config.baseline is not None and config.baseline not in baselines:
            raise SphcError(
                f"unknown baseline {config.baseline!r} for --data {config.data}; "
                f"the available one{'s are' if len(baselines) > 1 else ' is'} {', '.join(baselines)}"
            )

    # --------------------------------------------------------------------------- the hooks

    def build_model(self) -> nn.Module:
        """The network to train: the compiled model, or a network baseline at its input shape."""
        return compiled_model(self.config)

    def load(self, model: nn.Module, progress: bool) -> None:
        """Load (or fetch from the disk cache) everything the run needs; sets ``n_train``."""
        raise NotImplementedError

    def batch(self, index: np.ndarray) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """(model arguments, target) of the training examples at ``index`` (CPU tensors)."""
        raise NotImplementedError

    def losses(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-example losses; the loop averages them over the global batch."""
        raise NotImplementedError

    def epoch_end(self, model: nn.Module, device: str) -> dict | None:
        """Something to record after each epoch (the learning curve), or None."""
        return None

    def evaluate(self, model: nn.Module, device: str, out: Path) -> dict:
        """The trained model's metrics (and any files it writes into ``out``)."""
        raise NotImplementedError

    def fit_baseline(self, out: Path, progress: bool) -> dict:
        """Metrics of a fitted (not trained) baseline, for ``fitted_baselines``."""
        raise NotImplementedError

    def state(self) -> dict:
        """What the run derived from the training data (normalisations, a first-stage fit): stored in
        checkpoints and metrics so the trained network can be used again."""
        return {}

    # ------------------------------------------------------------------ reading the results

    @staticmethod
    def summary(metrics: dict) -> list[str]:
        raise NotImplementedError

    @staticmethod
    def draw(runs: list[dict], run_dirs: list[Path], out: Path) -> list[Path]:
        raise NotImplementedError


class MnistTask(Task):
    """Spherical MNIST digit classification (the paper's first table)."""

    data_sets = ("spherical-mnist",)
    network_baselines = ("planar",)
    pictures = ("digits.png", "curves.png", "accuracy.png")

    @classmethod
    def check(cls, config: TrainConfig) -> None:
        super().check(config)
        check_splits(config)

    def build_model(self) -> nn.Module:
        model = compiled_model(self.config)
        return PlanarCNN(model.input_shape) if self.config.baseline == "planar" else model

    def load(self, model: nn.Module, progress: bool) -> None:
        from sphc.data.mnist import spherical_mnist

        config = self.config
        C, L, _ = model.input_shape
        refuse_set_model(model, config, "a digit is one sphere")
        if C != 1:
            raise SphcError(
                f"{config.model} expects {C} input channels, but Spherical MNIST has 1 (use Input ... C=1)"
            )

        def load(split: str, kind: str, subset: int | None):
            return spherical_mnist(
                split,
                L,
                kind == "r",
                seed=config.seed,
                subset=subset,
                source=config.data_path,
                progress=progress,
            )

        self.x, self.y = load("train", config.train, config.subset)
        self.tests = {kind: load("test", kind, config.test_subset) for kind in config.test}
        self.n_train = len(self.x)

    def batch(self, index):
        return (torch.from_numpy(self.x[index]),), torch.from_numpy(self.y[index])

    def losses(self, output, target):
        return F.cross_entropy(output, target, reduction="none")

    def evaluate(self, model, device, out):
        accuracy = {}
        for kind, (x, y) in self.tests.items():
            scores = predict(
                model, lambda i, x=x: (torch.from_numpy(x[i]),), len(x), device, self.config.batch
            )
            accuracy[f"{self.config.train}/{kind}"] = float((scores.argmax(1) == y).mean()) if len(y) else 0.0
        metrics = {"accuracy": accuracy, "test_size": {k: len(v[0]) for k, v in self.tests.items()}}
        if self.config.baseline is None:
            metrics.update(invariance_probe(model, self.config.seed))
        return metrics

    @staticmethod
    def summary(metrics):
        lines = [run_heading(metrics, "training digits")]
        lines += [f"  accuracy {k.upper():6s} {100 * v:6.2f} %" for k, v in metrics["accuracy"].items()]
        return lines + invariance_lines(metrics)

    @staticmethod
    def draw(runs, run_dirs, out):
        from sphc.apps import plots

        cfg = runs[0]["config"]
        L = plots.input_L(runs[0], run_dirs[0])
        return [
            plots.plot_digits(out / "digits.png", L, seed=cfg["seed"], source=cfg.get("data_path")),
            plots.plot_curves(out / "curves.png", runs),
            plots.plot_accuracy(out / "accuracy.png", runs),
        ]


def refuse_set_model(model: nn.Module, config: TrainConfig, why: str) -> None:
    if is_set_model(model):
        raise SphcError(
            f"{config.model} takes a set of spheres per example (Input ... set=true), but {why}: "
            "remove set=true and the SetSum / SetMean / SetPool layer"
        )


def check_splits(config: TrainConfig) -> None:
    for split in (config.train, *config.test):
        if split not in SPLITS:
            raise SphcError(f"unknown split {split!r}; use nr (non-rotated) or r (rotated)")


def invariance_probe(model: nn.Module, seed: int) -> dict:
    """The trained model's invariance error in float64 on inputs and rotations drawn from ``seed``:
    the same model always gets the same number, and training's random state is left untouched."""
    from sphc.apps.equivariance import model_invariance_error

    probe = copy.deepcopy(model).cpu().double().eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        error = model_invariance_error(probe, batch=4, rotations=4, rng=np.random.default_rng(seed))
    return {"equivariance_error": error, "equivariance_seed": seed}


def run_heading(metrics: dict, trained_on: str) -> str:
    """The first line of a classification run's summary: what was trained, on how much, how long."""
    what = "planar CNN baseline" if metrics["baseline"] else metrics["model"]
    return (
        f"{what}: {metrics['params']:,} parameters, {metrics['train_size']:,} {trained_on}, "
        f"{metrics['epochs']} epochs, {metrics['wall_time_s']:.0f} s"
    )


def invariance_lines(metrics: dict) -> list[str]:
    if "equivariance_error" not in metrics:
        return []
    return [
        f"  mean relative equivariance error (float64, 4 inputs x 4 rotations, seed "
        f"{metrics.get('equivariance_seed')}): {metrics['equivariance_error']:.1e}"
    ]


def task_class(data: str) -> type[Task]:
    """The task serving ``--data data``."""
    from sphc.apps.molecule_task import MoleculeTask
    from sphc.apps.shape_task import ShapeTask

    for cls in (MnistTask, MoleculeTask, ShapeTask):
        if data in cls.data_sets:
            return cls
    names = [d for cls in (MnistTask, MoleculeTask, ShapeTask) for d in cls.data_sets]
    raise SphcError(f"unknown data set {data!r}; the available ones are {', '.join(names)}")


def data_sets() -> tuple[str, ...]:
    from sphc.apps.molecule_task import MoleculeTask
    from sphc.apps.shape_task import ShapeTask

    return MnistTask.data_sets + MoleculeTask.data_sets + ShapeTask.data_sets
