"""Training and evaluation of compiled models (``sphc train``): one loop for every task.

What is trained on, the loss and the evaluation belong to a ``Task`` (``tasks.py``: Spherical
MNIST; ``molecule_task.py``: QM9 / QM7 / xyz energies; ``shape_task.py``: 3-D shapes and retrieval);
this module owns what they share. A run lives in one directory: ``checkpoint.pt`` (written
atomically every ``checkpoint_every`` steps and at every epoch end, so an interrupted run resumes
losing at most one interval) and ``metrics.json``; ``sphc train --plots`` adds PNG pictures
(``plots.py``). Under ``torchrun`` the same loop trains data-parallel (``distributed.py``).
"""

from __future__ import annotations

import contextlib
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
from tqdm import tqdm

from sphc.apps import distributed
from sphc.apps.tasks import PlanarCNN, Task, invariance_probe, task_class
from sphc.errors import SphcError

SCHEDULES = ("constant", "cosine")
__all__ = ["PlanarCNN", "TrainConfig", "build_model", "equivariance_error", "summary", "train"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; a resumed run must have the same values."""

    model: str
    out: str = field(compare=False)  # the checkpoint's own directory: a moved run still resumes
    data: str = "spherical-mnist"
    train: str = "nr"
    test: tuple[str, ...] = ("nr", "r")
    epochs: int = field(default=5, compare=False)  # a finished run may be continued for more epochs
    batch: int = 32  # the global batch: all processes together under torchrun
    lr: float = 1e-3
    subset: int | str | None = None  # an integer, or "all" (molecules: the whole source)
    test_subset: int | None = None
    seed: int = 0
    baseline: str | None = None
    data_path: str | None = None
    checkpoint_every: int = 100
    device: str = field(default="cpu", compare=False)  # may change between resumes
    fold: int | None = None  # molecules: the held-out fold (default 0)
    max_heavy_atoms: int | None = None  # molecules
    residual: bool = True  # molecules: Cohen et al.'s residual trick
    schedule: str = "constant"  # learning rate: constant, or cosine decay to 0 over the run

    def __post_init__(self):
        # absolute paths, so metrics.json and resuming work from any directory (sphc plot elsewhere)
        object.__setattr__(self, "model", str(Path(self.model).resolve()))
        object.__setattr__(self, "test", tuple(self.test))
        if self.data_path is not None:
            object.__setattr__(self, "data_path", str(Path(self.data_path).expanduser().resolve()))
        task = task_class(self.data)
        for name in ("epochs", "batch", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise SphcError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SphcError(f"--lr must be a positive number, got {self.lr}")
        if (
            self.subset is not None
            and self.subset != "all"
            and not (isinstance(self.subset, int) and self.subset >= 1)
        ):
            raise SphcError(f"--subset must be a positive integer or 'all', got {self.subset!r}")
        if self.test_subset is not None and self.test_subset < 1:
            raise SphcError(f"--test-subset must be a positive integer, got {self.test_subset}")
        if self.schedule not in SCHEDULES:
            raise SphcError(f"unknown --schedule {self.schedule!r}; use {' or '.join(SCHEDULES)}")
        molecules = self.data in task_class("qm9").data_sets
        for name in ("fold", "max_heavy_atoms"):
            if getattr(self, name) is not None and not molecules:
                raise SphcError(
                    f"--{name.replace('_', '-')} applies to molecule data (--data qm9, qm7 or xyz)"
                )
        if not self.residual and not molecules:
            raise SphcError("--no-residual applies to molecule data (--data qm9, qm7 or xyz)")
        if molecules and self.fold is None:
            object.__setattr__(self, "fold", 0)
        if self.subset == "all" and not molecules:
            object.__setattr__(self, "subset", None)
        task.check(self)

    def identity(self) -> dict:
        """The fields a resumed run must share with the checkpoint."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}


_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING
}


def build_model(config: TrainConfig) -> nn.Module:
    """The network ``config`` trains: the compiled model, or a network baseline at its input shape."""
    return task_class(config.data)(config).build_model()


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


def _stored(stored: dict, key: str):
    value = stored.get(key, _DEFAULTS.get(key))
    return tuple(value) if isinstance(value, list) else value


def _resume(path: Path, config: TrainConfig) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say so instead of a deep traceback
        raise SphcError(f"cannot resume from {path}: {e.__class__.__name__}: {e}".splitlines()[0]) from None
    stored = state.get("config", {})  # a field added since the checkpoint was written has its default
    diff = [k for k, v in config.identity().items() if _stored(stored, k) != v]
    if diff:
        raise SphcError(
            f"{path.parent} holds a run with another configuration ({', '.join(diff)} differ); "
            "use a new --out directory"
        )
    return state


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


def train(config: TrainConfig, progress: bool = True) -> dict | None:
    """Train (or resume) and evaluate; returns the metrics also written to ``out/metrics.json``.

    Under ``torchrun`` every process calls this; rank 0 returns the metrics, the others None.
    """
    procs = distributed.from_environment()
    device = distributed.process_device(config.device, procs)
    task = task_class(config.data)(config)
    with distributed.process_group(procs, device):
        if not procs.main:
            return _train(config, task, Path(config.out), False, procs, device)
        with _run_directory(Path(config.out)) as out:
            return _train(config, task, out, progress, procs, device)


def _rank_seed(config: TrainConfig, procs: distributed.Processes, epoch: int, step: int) -> int:
    """Dropout seed of a process other than rank 0 (rank 0 keeps the single-process stream)."""
    return int(np.random.SeedSequence([config.seed, procs.rank, epoch, step]).generate_state(1)[0])


def _lr(config: TrainConfig, step: int, total: int) -> float:
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    return config.lr


def _train(
    config: TrainConfig, task: Task, out: Path, progress: bool, procs: distributed.Processes, device: str
) -> dict | None:
    if config.baseline in task.fitted_baselines:  # no network: fit, score, write metrics
        if not procs.main:
            return None
        metrics = task.fit_baseline(out, progress)
        metrics = {"model": config.model, "baseline": config.baseline, **metrics, "config": config.identity()}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics
    distributed.check_batch(config.batch, procs)
    torch.manual_seed(config.seed)
    model = task.build_model().to(device)
    with distributed.main_first(procs):
        task.load(model, progress and procs.main)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    ckpt_path = out / "checkpoint.pt"
    state = _resume(ckpt_path, config)
    epoch, done, history, epochs_log, wall = 0, 0, [], [], 0.0
    steps = math.ceil(task.n_train / config.batch)
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        epoch, done, history, wall = state["epoch"], state["step"], state["history"], state["wall"]
        epochs_log = state.get("epoch_history", [])
        torch.set_rng_state(state["rng"])  # dropout masks continue as if never interrupted
        if procs.main:
            print(
                f"resuming from {ckpt_path}: {len(history):,} of {config.epochs * steps:,} steps done, "
                f"continuing at epoch {epoch + 1} step {done + 1}"
                if epoch < config.epochs
                else f"resuming from {ckpt_path}: all {config.epochs} epochs done, evaluating",
                file=sys.stderr,
            )
    if not procs.main:
        torch.manual_seed(_rank_seed(config, procs, epoch, done))
    net = model
    if procs.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None)
    bar = tqdm(total=config.epochs * steps, initial=epoch * steps + done, disable=not progress, unit="step")
    start = time.perf_counter() - wall

    def checkpoint(epoch: int, step: int) -> None:
        if not procs.main:
            return
        _save(ckpt_path, {
            "config": config.identity(), "model": model.state_dict(), "optimizer": opt.state_dict(),
            "epoch": epoch, "step": step, "history": history, "epoch_history": epochs_log,
            "wall": time.perf_counter() - start, "rng": torch.get_rng_state(), "task_state": task.state(),
        })  # fmt: skip

    while epoch < config.epochs:
        net.train()
        order = torch.randperm(
            task.n_train, generator=torch.Generator().manual_seed(config.seed * 1000 + epoch)
        )
        for step in range(done, steps):
            index = order[step * config.batch : (step + 1) * config.batch].numpy()
            mine, weight = distributed.shard(index, procs), 1.0
            if len(mine) == 0:  # a last batch smaller than the world: take part with zero weight
                mine, weight = index[:1], 0.0
            args, target = task.batch(mine)
            losses = task.losses(net(*(a.to(device) for a in args)), target.to(device))
            loss = losses.sum() * (weight * procs.world / len(index))  # DDP averages: global mean loss
            for group in opt.param_groups:
                group["lr"] = _lr(config, epoch * steps + step, config.epochs * steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "loss": float(distributed.global_sum(loss, procs)) / procs.world,
                }
            )
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{history[-1]['loss']:.3f}")
            if (step + 1) % config.checkpoint_every == 0 and step + 1 < steps:
                checkpoint(epoch, step + 1)
        epoch, done = epoch + 1, 0
        if procs.main:
            record = task.epoch_end(model, device)
            if record is not None:
                epochs_log.append({"epoch": epoch, "steps": len(history), **record})
        checkpoint(epoch, 0)
    bar.close()
    if not procs.main:
        return None
    train_time = time.perf_counter() - start
    metrics = {
        "model": config.model,
        "baseline": config.baseline,
        "params": sum(p.numel() for p in model.parameters()),
        "train_size": task.n_train,
        "epochs": config.epochs,
        "processes": procs.world,
        "train_time_s": round(train_time, 1),
        "loss_history": [h["loss"] for h in history],
        "epoch_history": epochs_log,
        "input_shape": list(model.input_shape),
        "config": config.identity(),
    }
    metrics.update(task.evaluate(model, device, out))
    metrics["wall_time_s"] = round(time.perf_counter() - start, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def equivariance_error(model: nn.Module, seed: int) -> float:
    """The trained model's invariance error in float64 on inputs and rotations drawn from ``seed``."""
    return invariance_probe(model, seed)["equivariance_error"]


def summary(metrics: dict) -> str:
    """The final table a user sees."""
    return "\n".join(task_class(metrics["config"].get("data", "spherical-mnist")).summary(metrics))
