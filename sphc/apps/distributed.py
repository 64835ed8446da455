"""Data-parallel training across processes (``torchrun --nproc_per_node N -m sphc train ...``).

Why it is built this way:

* **One code path.** A plain ``sphc train`` is a world of one process; ``torchrun`` sets ``RANK``,
  ``WORLD_SIZE`` and ``LOCAL_RANK`` and the same loop runs in every process, with gloo on the CPU
  and NCCL on CUDA devices (one device per process, ``cuda:LOCAL_RANK``).
* **The global batch is the batch.** ``--batch`` is the number of examples per optimiser step over
  all processes; each process takes its contiguous shard of every global batch (``shard``). A
  process's loss is its examples' summed loss divided by the *global* batch size, times the world
  size, so DDP's gradient average equals the single-process gradient of the mean loss (exactly, up
  to float rounding), whatever the shard sizes. Layers that use batch statistics (``Norm`` in
  training) see each process's shard only, as BatchNorm does without SyncBatchNorm.
* **Rank 0 owns the run directory**: it alone writes checkpoints and ``metrics.json`` and evaluates;
  every process reads the same checkpoint when resuming, so a resumed run continues on any number
  of processes.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from sphc.errors import SphcError

#: Long enough for rank 0's evaluation or data preparation while the others wait at a collective.
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def from_environment() -> Processes:
    """The ``torchrun`` environment, or a single process when it is absent."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise SphcError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise SphcError(f"RANK={rank} WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    return Processes(rank, world, local)


def process_device(device: str, procs: Processes) -> str:
    """The device this process trains on: ``cuda`` means this process's own GPU under torchrun."""
    if procs.distributed and device == "cuda":
        return f"cuda:{procs.local_rank}"
    return device


@contextlib.contextmanager
def process_group(procs: Processes, device: str):
    """Join the process group (gloo on CPU, NCCL on CUDA) for the duration of a run."""
    if not procs.distributed:
        yield
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend, rank=procs.rank, world_size=procs.world, timeout=TIMEOUT)
    try:
        yield
        # Only on success (a failed peer would never arrive): no rank tears down its connections
        # while another still uses them.
        dist.barrier()
    finally:
        # A DistributedDataParallel wrapper (reference cycles) still holding the group would free it
        # at interpreter exit, where gloo's threads abort the process ("terminate called without an
        # active exception", SIGABRT, seen under load); collect it while the group still exists.
        gc.collect()
        dist.destroy_process_group()


def barrier(procs: Processes) -> None:
    if procs.distributed:
        dist.barrier()


@contextlib.contextmanager
def main_first(procs: Processes):
    """Rank 0 runs the block first (filling sphc's disk cache), then the others (reading it)."""
    if not procs.main:
        barrier(procs)
    yield
    if procs.main:
        barrier(procs)


def shard(index: np.ndarray, procs: Processes) -> np.ndarray:
    """This process's contiguous part of a global batch (sizes differ by at most one)."""
    return np.array_split(index, procs.world)[procs.rank]


def global_sum(value: torch.Tensor, procs: Processes) -> torch.Tensor:
    """``value`` summed over the processes (a detached copy)."""
    value = value.detach().clone()
    if procs.distributed:
        dist.all_reduce(value)
    return value


def check_batch(batch: int, procs: Processes) -> None:
    if batch < procs.world:
        raise SphcError(
            f"--batch {batch} is the global batch over {procs.world} processes: it must be at least "
            f"{procs.world} so that every process gets an example"
        )
