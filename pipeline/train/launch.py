"""How a training stage starts: the operational flags every torchrun stage shares, and the run under torchrun.

`python -m pipeline pretrain|finetune ... --nproc N` (N > 1) outside torchrun runs the same command under torchrun
(`launch`: the elastic agent of `torchrun --standalone --nproc-per-node N` in this process); inside torchrun
(LOCAL_RANK set), and with --nproc 1 (a world of one, pipeline/train/distributed.py), the stage trains in this
process. So 1 and N processes, one machine or many (call torchrun yourself with --nnodes/--rdzv-*), run the
same code.

Exit statuses survive the launch: a worker that stops on bad input (UserInputError, exit 2) or a guard
(TrainingStopped, exit 3) writes its one-line message to torchrun's per-worker error file (TORCHELASTIC_ERROR_FILE,
which the agent reads back into `ChildFailedError.failures`); `launch` raises the same error again, so the command
exits 2 or 3 with that line printed last, after torchrun's own log lines. SIGTERM/SIGINT/SIGHUP/SIGQUIT to the
launcher reach the workers (the agent forwards them and waits), and the launcher then dies of the same signal.

No torch at import: the CLI builds its argument parser, and checks that it is not yet under torchrun, without it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

from pipeline.errors import TrainingStopped, UserInputError

# Set for the workers of `launch`: the launcher prints their error line, so they do not print it themselves.
LAUNCHED = "PIPELINE_LAUNCHED"
# The errors a worker hands to the launcher by name (its exit status: 2, 3); anything else is a crash (exit 1).
HANDED_ON = {"UserInputError": UserInputError, "TrainingStopped": TrainingStopped}
# the signals torchrun's agent turns into SignalException and forwards to the workers
FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")


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
    """Run this command under torchrun (`--standalone --nproc-per-node args.nproc`), its elastic agent in this
    process. Returns when every worker has succeeded (rank 0 printed the summary). Raises a worker's
    UserInputError or TrainingStopped again with its message (`report_error`); a worker that crashed otherwise
    raises torchrun's ChildFailedError (its traceback is above, in the worker's stderr); a signal to this process
    is forwarded to the workers, and then this process dies of it (exit 128 + signal number for a shell)."""
    if args.nproc < 1:
        raise UserInputError("--nproc must be at least 1")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    torchrun = parse_args(["--standalone", f"--nproc-per-node={args.nproc}", "-m", "pipeline", *_without_nproc(argv)])
    sys.stdout.flush()
    sys.stderr.flush()
    handlers = {name: signal.getsignal(getattr(signal, name)) for name in FORWARDED_SIGNALS}
    environ = dict(os.environ)  # torchrun sets OMP_NUM_THREADS and its own variables here, for the workers
    os.environ[LAUNCHED] = "1"
    try:
        run(torchrun)
    except ChildFailedError as e:
        error = worker_error(e.failures.values())
        if error is None:
            raise
        raise error from None
    except SignalException as e:  # the workers have had the signal and are gone: die of it, as they did
        signal.signal(e.sigval, signal.SIG_DFL)
        os.kill(os.getpid(), e.sigval)
    finally:
        os.environ.clear()
        os.environ.update(environ)
        for name, handler in handlers.items():  # the agent's handlers raise SignalException: not past the run
            signal.signal(getattr(signal, name), handler)


def report_error(error: Exception, message: str) -> bool:
    """In a torchrun worker ending on `error` (a UserInputError or TrainingStopped) with its one-line `message`:
    write them to torchrun's error file for this worker, which the agent reads when the worker exits (elastic's
    ProcessFailure: "message" and "timestamp"). Returns True when `launch` will print the message (the worker
    need not); False outside torchrun, or under a torchrun the user started (print it here)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE") if under_torchrun() else None
    if not path:
        return False
    record = {"message": message, "timestamp": int(time.time()), "pipeline_error": type(error).__name__}
    Path(path).write_text(json.dumps(record), encoding="utf-8")
    return os.environ.get(LAUNCHED) == "1"


def worker_error(failures) -> Exception | None:
    """The error to raise again for torchrun's failed workers (elastic ProcessFailure: error_file_data, timestamp):
    the first one a worker reported with `report_error`; the others' failures (a peer's connection reset, the
    agent's SIGTERM) follow from it. None when no worker reported one (a crash)."""
    reported = [f for f in failures if isinstance(f.error_file_data, dict) and f.error_file_data.get("pipeline_error") in HANDED_ON]
    if not reported:
        return None
    first = min(reported, key=lambda f: f.timestamp)
    return HANDED_ON[first.error_file_data["pipeline_error"]](first.message)


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
