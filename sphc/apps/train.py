"""Training and evaluation of compiled models on Spherical MNIST (``sphc train``).

The experiment of the paper's first table (docs/CONVENTIONS.md §10): train on non-rotated (NR) or rotated (R)
digits, test on both. A run lives in one directory: ``checkpoint.pt`` (written atomically every
``checkpoint_every`` steps and at every epoch end, so an interrupted run resumes losing at most one
interval) and ``metrics.json``; ``sphc train --plots`` adds PNG pictures (``plots.py``). The planar baseline (``baseline=
"planar"``) trains an ordinary CNN on the same sampled grids seen as 2-D images.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from sphc.errors import SphcError

SPLITS = ("nr", "r")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; a resumed run must have the same values."""

    model: str
    out: str = field(compare=False)  # the checkpoint's own directory: a moved run still resumes
    data: str = "spherical-mnist"
    train: str = "nr"
    test: tuple[str, ...] = ("nr", "r")
    epochs: int = field(default=5, compare=False)  # a finished run may be continued for more epochs
    batch: int = 32
    lr: float = 1e-3
    subset: int | None = None
    test_subset: int | None = None
    seed: int = 0
    baseline: str | None = None
    data_path: str | None = None
    checkpoint_every: int = 100
    device: str = field(default="cpu", compare=False)  # may change between resumes

    def __post_init__(self):
        # absolute paths, so metrics.json and resuming work from any directory (sphc plot elsewhere)
        object.__setattr__(self, "model", str(Path(self.model).resolve()))
        if self.data_path is not None:
            object.__setattr__(self, "data_path", str(Path(self.data_path).resolve()))
        if self.data != "spherical-mnist":
            raise SphcError(f"unknown data set {self.data!r}; the available one is spherical-mnist")
        for split in (self.train, *self.test):
            if split not in SPLITS:
                raise SphcError(f"unknown split {split!r}; use nr (non-rotated) or r (rotated)")
        if self.baseline not in (None, "planar"):
            raise SphcError(f"unknown baseline {self.baseline!r}; the available one is planar")
        for name in ("epochs", "batch", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise SphcError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SphcError(f"--lr must be a positive number, got {self.lr}")

    def identity(self) -> dict:
        """The fields a resumed run must share with the checkpoint."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}


class PlanarCNN(nn.Module):
    """The planar baseline (≈58k parameters at L=20): the MW grid seen as an L × (2L−1) image."""

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


def build_model(config: TrainConfig) -> nn.Module:
    """The compiled sphc model, or the planar baseline at the model's input shape."""
    from sphc.compiler.pipeline import load

    model = load(config.model).Model()
    if config.baseline == "planar":
        model = PlanarCNN(model.input_shape)
    return model


def _data(config: TrainConfig, input_shape: tuple[int, int, int]):
    from sphc.data.mnist import spherical_mnist

    C, L, _ = input_shape
    if C != 1:
        raise SphcError(
            f"{config.model} expects {C} input channels, but Spherical MNIST has 1 (use Input ... C=1)"
        )
    load = lambda split, kind, subset: spherical_mnist(  # noqa: E731
        split, L, kind == "r", seed=config.seed, subset=subset, source=config.data_path
    )
    train = load("train", config.train, config.subset)
    tests = {kind: load("test", kind, config.test_subset) for kind in config.test}
    return train, tests


def _save(path: Path, state: dict) -> None:
    """Atomic: write a temporary file in the same directory, then rename over the old checkpoint."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".checkpoint-", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _resume(path: Path, config: TrainConfig) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say so instead of a deep traceback
        raise SphcError(f"cannot resume from {path}: {e.__class__.__name__}: {e}".splitlines()[0]) from None
    stored = state.get("config", {})
    diff = [k for k, v in config.identity().items() if stored.get(k) != v]
    if diff:
        raise SphcError(
            f"{path.parent} holds a run with another configuration ({', '.join(diff)} differ); "
            "use a new --out directory"
        )
    return state


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int, device: str) -> float:
    """Accuracy as a fraction in [0, 1]."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(x[i : i + batch]).to(device)
        correct += int((model(xb).argmax(1).cpu() == torch.from_numpy(y[i : i + batch])).sum())
    return correct / max(len(x), 1)


@contextlib.contextmanager
def _run_directory(out: Path):
    """Create ``out`` (and missing parents); if the run fails, remove those that are still empty."""
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SphcError(f"cannot create the run directory {out}: {e.strerror}") from None
    try:
        yield out
    except BaseException:
        for p in created:  # innermost first; a checkpoint keeps its directory (the run can resume)
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


def train(config: TrainConfig, progress: bool = True) -> dict:
    """Train (or resume) and evaluate; returns the metrics also written to ``out/metrics.json``."""
    with _run_directory(Path(config.out)) as out:
        return _train(config, out, progress)


def _train(config: TrainConfig, out: Path, progress: bool) -> dict:
    torch.manual_seed(config.seed)
    model = build_model(config).to(config.device)
    (x, y), tests = _data(config, model.input_shape)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    ckpt_path = out / "checkpoint.pt"
    state = _resume(ckpt_path, config)
    epoch, done, history, wall = 0, 0, [], 0.0
    steps = math.ceil(len(x) / config.batch)
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        epoch, done, history, wall = state["epoch"], state["step"], state["history"], state["wall"]
        torch.set_rng_state(state["rng"])  # dropout masks continue as if never interrupted
        print(
            f"resuming from {ckpt_path}: {len(history):,} of {config.epochs * steps:,} steps done, "
            f"continuing at epoch {epoch + 1} step {done + 1}"
            if epoch < config.epochs
            else f"resuming from {ckpt_path}: all {config.epochs} epochs done, evaluating",
            file=sys.stderr,
        )
    bar = tqdm(total=config.epochs * steps, initial=epoch * steps + done, disable=not progress, unit="step")
    start = time.perf_counter() - wall

    def checkpoint(epoch: int, step: int) -> None:
        _save(ckpt_path, {
            "config": config.identity(), "model": model.state_dict(), "optimizer": opt.state_dict(),
            "epoch": epoch, "step": step, "history": history, "wall": time.perf_counter() - start,
            "rng": torch.get_rng_state(),
        })  # fmt: skip

    while epoch < config.epochs:
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        for step in range(done, steps):
            idx = order[step * config.batch : (step + 1) * config.batch].numpy()
            xb, yb = torch.from_numpy(x[idx]).to(config.device), torch.from_numpy(y[idx]).to(config.device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append({"epoch": epoch, "step": step, "loss": loss.item()})
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{history[-1]['loss']:.3f}")
            if (step + 1) % config.checkpoint_every == 0 and step + 1 < steps:
                checkpoint(epoch, step + 1)
        epoch, done = epoch + 1, 0
        checkpoint(epoch, 0)
    bar.close()
    accuracy = {
        f"{config.train}/{kind}": evaluate(model, *data, config.batch, config.device)
        for kind, data in tests.items()
    }
    metrics = {
        "model": config.model,
        "baseline": config.baseline,
        "params": sum(p.numel() for p in model.parameters()),
        "accuracy": accuracy,
        "train_size": len(x),
        "test_size": {k: len(v[0]) for k, v in tests.items()},
        "epochs": config.epochs,
        "wall_time_s": round(time.perf_counter() - start, 1),
        "loss_history": [h["loss"] for h in history],
        "input_shape": list(model.input_shape),
        "config": config.identity(),
    }
    if config.baseline is None:  # the promise: rotating the input sphere leaves the prediction unchanged
        metrics["equivariance_error"] = equivariance_error(model, config.seed)
        metrics["equivariance_seed"] = config.seed
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def equivariance_error(model: nn.Module, seed: int) -> float:
    """The trained model's invariance error in float64 on inputs and rotations drawn from ``seed``:
    the same model always gets the same number, and training's random state is left untouched."""
    from sphc.apps.equivariance import model_invariance_error

    probe = copy.deepcopy(model).cpu().double().eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_invariance_error(probe, batch=4, rotations=4, rng=np.random.default_rng(seed))


def summary(metrics: dict) -> str:
    """The final table a user sees."""
    what = "planar CNN baseline" if metrics["baseline"] else metrics["model"]
    lines = [f"{what}: {metrics['params']:,} parameters, {metrics['train_size']:,} training digits, "
             f"{metrics['epochs']} epochs, {metrics['wall_time_s']:.0f} s"]  # fmt: skip
    lines += [f"  accuracy {k.upper():6s} {100 * v:6.2f} %" for k, v in metrics["accuracy"].items()]
    if "equivariance_error" in metrics:
        seed = metrics.get("equivariance_seed")
        lines.append(
            f"  mean relative equivariance error (float64, 4 inputs x 4 rotations, seed {seed}): "
            f"{metrics['equivariance_error']:.1e}"
        )
    return "\n".join(lines)
