"""DistributedDataParallel over two CPU processes (gloo): a generated model's averaged gradients and
one optimiser step equal a single-process run on the whole batch, in float64.

Each rank builds the model from the same seed (so the same initial weights, checked before DDP's
broadcast could hide a difference), runs one forward/backward on its half of a batch the parent
drew, then one SGD step. Norm normalises by the statistics of the batch it sees, so (as BatchNorm
without SyncBatchNorm) each rank normalises its half by the half's own statistics; the reference
does the same, one forward per half, with the mean loss over the whole batch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

import sphc

MODEL = (
    "Input s2 L=6 C=1 -> S2Conv C=3 L=5 N=2 -> ReLU -> EfficientLayer mst L=4 K=4 tau=2 tau_u=2 -> Norm"
    " -> Invariant -> Dense 3"
)
SEED, LR, BATCH = 1234, 0.1, 6

WORKER = r"""
import os, sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
torch.set_num_threads(1)
import sphc

rank, path = int(os.environ["RANK"]), sys.argv[1]
data = torch.load(path + "/data.pt")
dist.init_process_group("gloo", rank=rank, world_size=2)
try:
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
finally:
    dist.destroy_process_group()
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
