"""How a training stage starts: the operational flags every torchrun stage shares, and the re-execution under
torchrun.

`python -m pipeline pretrain|finetune ...` outside torchrun replaces itself by `torchrun --standalone
--nproc-per-node N -m pipeline ...` (`launch`); inside torchrun (LOCAL_RANK set) the stage trains. So 1 and N
processes, one machine or many (call torchrun yourself with --nnodes/--rdzv-*), run the same code.

No torch here: the CLI builds its argument parser, and checks that it is not yet under torchrun, without it.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from pipeline.errors import UserInputError


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The operational flags of every torchrun stage (pretrain, finetune): not hyper-parameters, so not in the
    run's identity."""
    p.add_argument("--nproc", type=int, default=1, help="processes on this machine (torchrun --nproc-per-node)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--workers", type=int, help="DataLoader workers per process (default: from the CPU count)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing last.pt instead of resuming from it")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug-nan-at-update", type=int, help=argparse.SUPPRESS)  # tests: inject a NaN loss


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What the run flags ask of the Trainer (pipeline/train/trainer.py)."""

    fresh: bool = False  # ignore last.pt and clear the outputs of an earlier run
    workers: int | None = None  # DataLoader workers per process; None: pipeline/train/loader.py default_workers
    progress: bool = True
    debug_nan_at_update: int | None = None  # tests: the loss of this (0-based) update becomes NaN

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        return cls(fresh=args.fresh, workers=args.workers, progress=not args.no_progress,
                   debug_nan_at_update=args.debug_nan_at_update)


def launch(args: argparse.Namespace, argv: list[str]) -> None:
    """Replace this process by torchrun running the same command (same PID: signals reach torchrun)."""
    if args.nproc < 1:
        raise UserInputError("--nproc must be at least 1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "pipeline", *_without_nproc(argv)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)


def _without_nproc(argv: list[str]) -> list[str]:
    """Workers do not need --nproc, and torchrun's argument parser would take it for an abbreviation of its own
    --nproc-per-node."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out
