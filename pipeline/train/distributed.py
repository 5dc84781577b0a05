"""torch.distributed for the training engine: the same code path for 1 and N processes.

Under torchrun (RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set) the group spans its workers; in a
plain process (the throughput stage, tests) it is a world of one over an in-process store. The backend is nccl
on GPU and gloo on CPU. Model code never sees any of this (the trainer wraps the model in DDP from outside).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import sys
from typing import Any

import torch
import torch.distributed as dist

from pipeline.train.launch import under_torchrun


@dataclasses.dataclass(frozen=True)
class Dist:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def die_with_launcher() -> None:
    """Linux: have the kernel SIGKILL this process when its parent (the torchrun agent) dies.

    torchrun starts workers in their own sessions, so a SIGKILL of the agent (OOM killer, scheduler, a user's
    kill -9) would otherwise leave orphan workers that keep training and overwrite the checkpoints a resumed
    run is using (seen in the SIGKILL-resume test).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:  # the launcher died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def setup(device: str = "auto", timeout_s: int = 1800) -> Dist:
    """Initialize the process group (always, even for one process, so 1 and N run the same code): torchrun's
    workers, or else a world of one. `device`: auto (a GPU when there is one), cpu or cuda.

    faulthandler: a native abort in a worker (SIGABRT/SIGSEGV in gloo, nccl or a kernel) prints every thread's Python
    stack to the worker's stderr, which torchrun passes on; without it torchrun only reports the signal."""
    import faulthandler

    group: dict[str, Any] = {"timeout": datetime.timedelta(seconds=timeout_s)}
    if under_torchrun():
        faulthandler.enable(all_threads=True)
        die_with_launcher()
        rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    else:  # no rendezvous, no port, and no environment variables that would make this look like torchrun
        rank, local_rank, world = 0, 0, 1
        group.update(store=dist.HashStore(), rank=0, world_size=1)
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        dist.init_process_group("nccl", device_id=dev, **group)
    else:
        dev = torch.device("cpu")
        dist.init_process_group("gloo", **group)
    return Dist(rank, local_rank, world, dev)


def device_name(device: torch.device | str) -> str:
    """What trained: the GPU's name, or the CPU and the threads torch uses."""
    import platform

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def leave_together() -> None:
    """The end of a successful run: every rank waits here until all are done, so no rank shuts its connections
    down (or exits) while another still evaluates, writes results or communicates."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def teardown() -> None:
    """Release the process group (also after an error, where a barrier could hang: no synchronization here).

    Collect garbage first, so that a DDP wrapper the caller dropped (it holds the group) is gone before the group
    shuts down, not destroyed later during interpreter finalization."""
    import gc

    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()


def all_reduce_means(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean over ranks of each value, in one all-reduce (every rank passes the same keys in the same order)."""
    means = all_reduce_mean(torch.tensor(list(values.values()), device=device)).tolist()
    return dict(zip(values, means))


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    objects: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(objects, obj)
    return objects


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is True on any rank (for stopping together: guards, cancellation)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
