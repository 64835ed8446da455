"""DistributedDataParallel over two CPU processes (gloo): a generated model's averaged gradients and
one optimiser step equal a single-process run on the whole batch, in float64; and
``torchrun --nproc_per_node 2 -m sphc train`` on digits, molecules and shapes trains the same model as
one process with the same global batch (float32: equal up to summation order).

Each rank builds the model from the same seed (so the same initial weights, checked before DDP's
broadcast could hide a difference), runs one forward/backward on its half of a batch the parent
drew, then one SGD step. Norm normalises by the statistics of the batch it sees, so (as BatchNorm
without SyncBatchNorm) each rank normalises its half by the half's own statistics; the reference
does the same, one forward per half, with the mean loss over the whole batch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sphc

MODEL = (
    "Input s2 L=6 C=1 -> S2Conv C=3 L=5 N=2 -> ReLU -> EfficientLayer mst L=4 K=4 tau=2 tau_u=2 -> Norm"
    " -> Invariant -> Dense 3"
)
SEED, LR, BATCH = 1234, 0.1, 6

WORKER = r"""
import sys
import torch
from torch.nn.parallel import DistributedDataParallel
torch.set_num_threads(1)
import sphc
from sphc.apps import distributed

procs, path = distributed.from_environment(), sys.argv[1]
data = torch.load(path + "/data.pt")


def run(rank):  # a function, as in `sphc train`: its DDP wrapper is garbage when the group goes
    torch.manual_seed(data["seed"])
    model = sphc.load(data["model"]).Model().double()
    initial = [p.detach().clone() for p in model.parameters()]
    ddp = DistributedDataParallel(model)
    half = data["x"].shape[0] // 2
    x, target = data["x"][rank * half : (rank + 1) * half], data["target"][rank * half : (rank + 1) * half]
    loss = torch.nn.functional.cross_entropy(ddp(x), target)  # mean over this rank's half
    loss.backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=data["lr"])
    opt.step()
    torch.save(
        {"initial": initial, "grads": grads, "after": [p.detach().clone() for p in model.parameters()]},
        path + f"/rank{rank}.pt",
    )


# sphc's own process group: gloo on CPU, and the teardown that keeps gloo from aborting a rank
with distributed.process_group(procs, "cpu"):
    run(procs.rank)
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference(x: torch.Tensor, target: torch.Tensor) -> tuple[list, list, list]:
    torch.manual_seed(SEED)
    model = sphc.load(MODEL).Model().double()
    initial = [p.detach().clone() for p in model.parameters()]
    half = x.shape[0] // 2
    losses = [
        torch.nn.functional.cross_entropy(
            model(x[i * half : (i + 1) * half]), target[i * half : (i + 1) * half]
        )
        for i in range(2)
    ]
    (sum(losses) / 2).backward()  # the mean loss over the whole batch (equal halves)
    grads = [p.grad.detach().clone() for p in model.parameters()]
    torch.optim.SGD(model.parameters(), lr=LR).step()
    return initial, grads, [p.detach().clone() for p in model.parameters()]


def _close(a: list, b: list, rtol: float = 1e-10) -> bool:
    assert len(a) == len(b)
    return all(torch.allclose(u, v, rtol=rtol, atol=rtol * float(v.abs().max())) for u, v in zip(a, b))


def test_ddp_two_ranks_match_single_process(tmp_path: Path):
    x = torch.randn(BATCH, 1, 6, 11, dtype=torch.float64)  # fresh data every run
    target = torch.randint(0, 3, (BATCH,))
    torch.save({"model": MODEL, "seed": SEED, "lr": LR, "x": x, "target": target}, tmp_path / "data.pt")
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": "2",
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path)],
            env={**env, "RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {r} failed:\n{out[-4000:]}"
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    initial, grads, after = _reference(x, target)
    assert all(g.abs().max() > 0 for g in grads)  # every parameter is trained
    for r, res in enumerate(ranks):
        assert _close(res["initial"], initial, rtol=0.0), f"rank {r}: same seed, different initial weights"
        assert _close(res["grads"], grads), f"rank {r}: averaged gradients differ from the single-process run"
        assert _close(res["after"], after), f"rank {r}: parameters after one SGD step differ"
    # the ranks agree with each other exactly: the all-reduce hands both the same average
    assert _close(ranks[0]["grads"], ranks[1]["grads"], rtol=0.0)
    assert _close(ranks[0]["after"], ranks[1]["after"], rtol=0.0)


def test_ddp_skips_constant_tables_but_syncs_running_stats():
    """Transform and index tables are identical on every rank: DDP need not broadcast them each step."""
    model = sphc.load(MODEL).Model()
    ignored = set(model._ddp_params_and_buffers_to_ignore)
    buffers = dict(model.named_buffers())
    assert any("tables" in n for n in ignored) and any("fast_cg" in n for n in ignored)
    assert ignored <= set(buffers)
    running = [n for n in buffers if n.endswith("running_sq")]
    assert running and not ignored & set(running)


# ------------------------------------------------------------------ `torchrun ... -m sphc train`

# No Norm and no dropout: per-process batch statistics and dropout masks are the only things a
# data-parallel run cannot share with a single process (sphc/apps/distributed.py).
TRAIN_MODELS = {
    "mnist": "Input s2 L=6 C=1 -> S2Conv C=3 L=5 N=2 -> ReLU -> EfficientLayer mst L=4 K=4 tau=2"
    " -> Invariant -> Dense 10",
    "molecules": "Input s2 L=4 C=5 set=true -> S2Conv C=3 L=4 N=2 -> ReLU -> EfficientLayer mst L=2 K=4"
    " tau=2 -> Invariant -> Dense 8 act=relu -> SetSum -> Dense 1",
    "shapes": "Input s2 L=6 C=6 -> S2Conv C=3 L=4 N=2 -> ReLU -> EfficientLayer mst L=2 K=4 tau=2"
    " -> Invariant -> Dense 13",
}


def _train_args(kind: str, tmp_path: Path) -> list[str]:
    """Odd global batches, so the two processes' shards differ in size."""
    if kind == "mnist":
        return ["--subset", "40", "--test-subset", "16", "--batch", "9"]
    if kind == "shapes":
        return ["--data", "synthetic-shapes", "--subset", "26", "--test-subset", "13", "--batch", "7"]
    from _molecule_files import write_molecules

    root = tmp_path / "xyz"
    root.mkdir()
    write_molecules(root, np.random.default_rng(), 30)
    return ["--data", "xyz", "--data-path", str(root), "--batch", "9"]


def _torchrun(argv: list[str], cwd: Path) -> str:
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "sphc", *argv]  # fmt: skip
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stderr


@pytest.mark.parametrize("kind", ["mnist", "molecules", "shapes"])
def test_torchrun_training_equals_a_single_process_run(kind: str, tmp_path: Path):
    from sphc.apps.cli import main

    model = tmp_path / "model.sph"
    model.write_text(TRAIN_MODELS[kind] + "\n")
    lr = 3e-3
    args = [*_train_args(kind, tmp_path), "--lr", str(lr), "--quiet"]
    assert main(["train", str(model), "--out", str(tmp_path / "one"), "--epochs", "2", *args]) == 0
    if kind == "molecules":  # one epoch, then resumed for a second one: the resumed run continues
        _torchrun(["train", str(model), "--out", str(tmp_path / "ddp"), "--epochs", "1", *args], tmp_path)
        err = _torchrun(
            ["train", str(model), "--out", str(tmp_path / "ddp"), "--epochs", "2", *args], tmp_path
        )
        assert err.count("resuming from") == 1  # rank 0 reports, once
    else:
        _torchrun(["train", str(model), "--out", str(tmp_path / "ddp"), "--epochs", "2", *args], tmp_path)
    one, ddp = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "ddp"))
    assert (one["processes"], ddp["processes"]) == (1, 2)
    assert len(ddp["loss_history"]) == len(one["loss_history"]) > 4
    np.testing.assert_allclose(ddp["loss_history"], one["loss_history"], rtol=2e-5)
    weights = [torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["model"] for d in ("one", "ddp")]
    params = {n for n, _ in sphc.load(model).Model().named_parameters()}
    for name, w in weights[0].items():
        # Adam divides each gradient by its own running RMS, so where a gradient is ~0 (a dead ReLU
        # unit) the all-reduce's rounding is amplified to a fraction of a step of size lr (seen: 0.2 lr
        # on 6 of 150 weights); everything else, and every buffer, agrees to 1e-4
        slack = lr / 2 if name in params else 0.0
        torch.testing.assert_close(
            weights[1][name], w, rtol=1e-4, atol=1e-5 * float(w.abs().max()) + 1e-7 + slack
        )
    if kind == "molecules":
        assert ddp["rmse_kcal_mol"] == pytest.approx(one["rmse_kcal_mol"], rel=1e-4)
    else:
        assert ddp["accuracy"] == one["accuracy"]
    assert not list((tmp_path / "ddp").glob(".checkpoint-*"))  # rank 0 alone wrote, atomically
