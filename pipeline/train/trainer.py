"""The training engine every recipe shares (in the manner of torchtitan's `Trainer`): set-up, resume in one call,
`train_step`, the loop, checkpoints, logs, and leaving together.

One update is grad_accum micro-batches on each of world_size ranks; DDP all-reduces the gradients on the last
micro-batch only. The global batch of an update is a pure function of (seed, update) (pipeline/train/loader.py),
so 1 and N processes, with or without accumulation, train on the same samples; last.pt holds every rank's RNG
state, so a resumed run continues exactly. A NaN/Inf loss stops the run before the optimizer step
(TrainingStopped, exit 3), keeping the last good checkpoint.

A recipe subclasses Trainer (pipeline/pretrain/trainer.py `Pretrainer`, pipeline/finetune/trainer.py
`Finetuner`): it sets its own attributes, then calls `Trainer.__init__`, which builds through the hooks
`build_model`, `build_data`, `param_groups` and `lr_lambda`; the other hooks (below, in the order a run calls
them) default to what a plain run does. The throughput stage times `train_step` of the same object.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from pipeline.errors import TrainingStopped
from pipeline.train import checkpoint, distributed
from pipeline.train.distributed import Dist
from pipeline.train.launch import RunOptions
from pipeline.train.loader import default_workers, make_loader, updates
from pipeline.train.log import TrainLog
from pipeline.train.optim import AUTOCAST_DTYPES, lr_factor, param_groups, resolve_precision


def seed_rank(seed: int, rank: int) -> None:
    """Per-rank RNG streams for dropout, layer-drop and noise tokens (data order, crops and masks do not come
    from these: they are functions of (seed, update, sample id))."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + 1000 * (rank + 1))


def config_digest(settings: Any) -> str:
    """A short digest of JSON-able `settings` (keys sorted): the config part of a run's identity."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def clear_outputs(out: Path, names: tuple[str, ...]) -> None:
    """--fresh, or last.pt of another run: remove what an earlier run left (checkpoints, `names`, TensorBoard)."""
    for path in [*out.glob("*.pt"), *(out / name for name in names)]:
        path.unlink(missing_ok=True)
    shutil.rmtree(out / "tb", ignore_errors=True)


class Trainer:
    """Trains `build_model()` on `build_data()` as `cfg` says, in process group `dist`, writing to `out`.

    `cfg` (a recipe config) gives seed, batch_size, grad_accum, micro_batch(world_size), max_updates, lr, min_lr,
    warmup_updates, betas, eps, weight_decay, clip_norm (0 = none), precision, log_every and checkpoint_every, and
    may give compile (torch.compile the model in place).
    `out` may be None for a trainer that only steps (the throughput stage); `fit` writes there.
    Subclasses set `desc` (progress bar), `title` (loss curve) and may set `what` (the resume message) and
    `outputs` (files of a run besides *.pt and tb/, removed when a run starts over).
    """

    what = "run (hyper-parameters, model or data differ)"
    tb_prefix = "pretrain"
    outputs: tuple[str, ...] = ("metrics.jsonl", "summary.json", "loss_curve.png", "config.json")
    desc = title = "train"

    def __init__(self, cfg, model_cfg, dist: Dist, out: Path | None, run: RunOptions = RunOptions()):
        self.cfg, self.model_cfg, self.dist, self.out, self.run = cfg, model_cfg, dist, out, run
        self.device = dist.device
        torch.use_deterministic_algorithms(self.device.type == "cpu")
        torch.set_flush_denormal(True)  # denormal floats slow CPU matmuls ~10x (measured on the tiny image preset)
        # identical initial weights on every rank (DDP broadcasts rank 0's, but an EMA teacher is outside DDP)
        torch.manual_seed(cfg.seed)
        self.model = self.build_model().to(self.device)
        if getattr(cfg, "compile", False):
            # in place (nn.Module.compile): parameter names, state_dict and the EMA teacher stay as they are
            self.model.compile()
        self.dataset = self.build_data()
        self.precision, self.precision_reason = resolve_precision(cfg.precision, self.device)
        self.dtype = AUTOCAST_DTYPES[self.precision]
        self.optimizer = torch.optim.AdamW(self.param_groups(), lr=self.lr, betas=cfg.betas, eps=cfg.eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_lambda())
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype is torch.float16)
        seed_rank(cfg.seed, dist.rank)
        # a world of one trains the model itself: DDP would still copy every gradient into its buckets and
        # all-reduce them over one rank (the same numbers, a few percent of a small model's step on a CPU)
        self.ddp = self.model if dist.world_size == 1 else DDP(
            self.model, device_ids=[dist.local_rank] if self.device.type == "cuda" else None,
            find_unused_parameters=self.find_unused_parameters())
        self.state: dict[str, Any] = {"update": 0, "train_seconds": 0.0, **self.initial_state()}
        self.stop_reason = "max_updates"
        self.tokens_per_sample: float | None = None
        self.mean_loss = math.inf  # mean loss of the latest log window
        self.identity: dict[str, Any] = {}  # run_identity(), once resume() has computed it
        self.resolved: dict[str, Any] = {}
        self.log: TrainLog | None = None
        self._started = time.perf_counter() - self.state["train_seconds"]

    # ------------------------------------------------------------------------------------------------------
    # hooks: building (called by __init__, after seeding)

    def build_model(self) -> nn.Module:
        """The model, with `forward(batch) -> (loss, stats)`."""
        raise NotImplementedError

    def build_data(self):
        """The training dataset (pipeline/train/loader.py), with `tokens_per_sample(batch)`."""
        raise NotImplementedError

    @property
    def lr(self) -> float:
        return self.cfg.lr

    def param_groups(self) -> list[dict]:
        return param_groups(self.model, self.cfg.weight_decay)

    def lr_lambda(self) -> Callable[[int], float]:
        """The learning-rate factor of an update: linear warmup, then cosine down to min_lr."""
        return lambda u: lr_factor(u, self.cfg.warmup_updates, self.cfg.max_updates, self.min_lr_ratio)

    @property
    def min_lr_ratio(self) -> float:
        return self.cfg.min_lr / self.lr if self.lr else 0.0

    def find_unused_parameters(self) -> bool:
        """Whether DDP must look for parameters without a gradient (skipped blocks under layerdrop)."""
        return self.model_cfg.encoder.layerdrop > 0

    # ------------------------------------------------------------------------------------------------------
    # hooks: checkpoints and the run's description

    def initial_state(self) -> dict[str, Any]:
        """What a recipe keeps in its checkpoints besides update and train_seconds (best score, ...)."""
        return {}

    def run_identity(self) -> dict[str, Any]:
        """What the run is a function of: last.pt resumes only a run with the same identity."""
        raise NotImplementedError

    def model_state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict()}

    def load_model_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])

    def resumable(self, ckpt: dict[str, Any]) -> bool:
        """Whether last.pt of this run can continue (False: start over; say why)."""
        return True

    def after_resume(self) -> None:
        """Once the state is that of last.pt (or a fresh one) on every rank, before anything is written."""

    def stop_update(self) -> int:
        """The update the loader stops before."""
        return self.cfg.max_updates

    def effective_batch(self) -> dict[str, Any]:
        return {"per_rank_micro_batch": self.cfg.micro_batch(self.dist.world_size), "world_size": self.dist.world_size,
                "grad_accum": self.cfg.grad_accum, "samples_per_update": self.cfg.batch_size}

    def resolved_config(self) -> dict[str, Any]:
        """config.json, also stored in every checkpoint (made JSON-plain)."""
        return {"effective_batch": self.effective_batch(), "device": str(self.device), "precision": self.precision}

    def describe(self) -> str:
        """The first log line."""
        e = self.effective_batch()
        return (f"{self.cfg.max_updates} updates of {e['samples_per_update']} samples ({e['per_rank_micro_batch']} per "
                f"rank x {e['world_size']} ranks x {e['grad_accum']} accumulation); lr {self.lr:g}")

    # ------------------------------------------------------------------------------------------------------
    # hooks: the loop

    def before_step(self, update: int) -> None:
        """Before the micro-batches of (0-based) `update`."""

    def after_step(self, done: int, stats: dict[str, float]) -> None:
        """After the optimizer and scheduler step that completed `done` updates; may add to `stats` (this rank's,
        averaged over its micro-batches). A guard that must stop every rank alike belongs in `on_log`, whose
        record holds the stats averaged over ranks."""

    def log_due(self, done: int) -> bool:
        """Whether the update writes a line to metrics.jsonl (its loss: the mean since the previous line)."""
        return done % self.cfg.log_every == 0 or done == self.cfg.max_updates

    def on_log(self, record: dict[str, Any]) -> None:
        """Before `record` (stats averaged over ranks) is written, on every rank: validation adds its scores here;
        may raise TrainingStopped."""

    def checkpoint_due(self, done: int) -> bool:
        return done % self.cfg.checkpoint_every == 0 or done == self.cfg.max_updates

    def end_of_update(self, done: int) -> bool:
        """Checkpoints after the update and its log line; True stops training."""
        if self.checkpoint_due(done):
            self.save("last.pt")
        return False

    def finish(self) -> dict[str, Any]:
        """After the last update, on every rank: the recipe's part of the summary (a final evaluation, ...)."""
        return {}

    # ------------------------------------------------------------------------------------------------------
    # the engine

    def fit(self) -> dict[str, Any]:
        """Resume (or start), train until the budget is spent or a hook stops, finish, and leave together; every
        rank calls it. Returns the summary (rank 0 also writes summary.json). Raises TrainingStopped when a guard
        stops training, UserInputError for a batch size the world size does not divide."""
        self.resume()
        self.resolved = json.loads(json.dumps(self.resolved_config(), default=str))
        self.log = TrainLog(self.out, self.dist.is_main, progress=self.run.progress, total=self.cfg.max_updates,
                            initial=self.state["update"], desc=self.desc, title=self.title, tb_prefix=self.tb_prefix)
        if self.dist.is_main:
            (self.out / "config.json").write_text(json.dumps(self.resolved, indent=2) + "\n")
        self.log.info(self.describe())
        self.log.info(f"precision {self.precision} ({self.precision_reason})")
        workers = self.run.workers if self.run.workers is not None else default_workers(self.dist.world_size)
        loader = make_loader(self.dataset, self.cfg, self.dist.rank, self.dist.world_size, self.state["update"],
                             self.stop_update(), workers)
        self.train_loop(loader)
        summary = self.log.finish({**self.summary(), **self.finish()})
        del loader
        self.ddp = None  # DDP holds the process group: drop it before the ranks leave (distributed.teardown)
        distributed.leave_together()
        return summary

    def resume(self) -> None:
        """Continue from out/last.pt when it is this run's (same identity, `resumable`): model, optimizer,
        scheduler, grad scaler, state, and this rank's RNG when the world size is the same. Otherwise (or with
        --fresh) start fresh, rank 0 clearing what an earlier run left. Ends with `after_resume`."""
        last = self.out / "last.pt"
        self.identity = self.run_identity()
        ckpt = checkpoint.load(last, self.device) if last.exists() and not self.run.fresh else None
        if ckpt is not None and ckpt.get("identity") != self.identity:
            self.say(f"{last} is from another {self.what}: starting fresh (--out DIR keeps runs apart)")
            ckpt = None
        if ckpt is not None and not self.resumable(ckpt):
            ckpt = None
        torch.distributed.barrier()  # every rank has looked at last.pt before rank 0 may remove it
        if self.dist.is_main and (self.run.fresh or (last.exists() and ckpt is None)):
            clear_outputs(self.out, self.outputs)
        torch.distributed.barrier()
        if ckpt is not None:
            self.load_model_state(ckpt)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.state = {k: ckpt[k] for k in self.state}
            if ckpt["world_size"] == self.dist.world_size:
                checkpoint.set_rng_state(ckpt["rng"][self.dist.rank])
            else:
                self.say(f"resuming on {self.dist.world_size} processes from a {ckpt['world_size']}-process checkpoint: "
                         "data order and masks continue exactly, dropout RNG streams restart")
        self.after_resume()

    def train_loop(self, loader) -> None:
        """Updates until the loader ends or `end_of_update` stops; a progress line per update (this rank's
        figures), a metrics.jsonl line per `log_due` update. The stats of a log line come in one all-reduce: the
        loss averaged over the updates since the previous line, the other stats those of the update, both
        averaged over ranks; none per update (each would stall a GPU)."""
        self._started = time.perf_counter() - self.state["train_seconds"]
        resumed_at = (self.state["update"], self.state["train_seconds"])
        window: list[float] = []
        self.model.train()
        for _, micro_batches in updates(loader, self.cfg.grad_accum):
            stats = self.train_step(micro_batches)
            done = self.state["update"]
            elapsed = self.state["train_seconds"] = self.elapsed()
            # train_seconds is the loop's own time (waiting for batches, the steps): logs, validation and
            # checkpoint writes are a recipe's choices, not the cost of training
            with self.untimed():
                samples_per_s = self.cfg.batch_size * (done - resumed_at[0]) / max(1e-9, elapsed - resumed_at[1])
                record = {"update": done, "seconds": round(elapsed, 3), "samples_per_s": samples_per_s,
                          "tokens_per_s": samples_per_s * (self.tokens_per_sample or 0), **stats}
                self.log.step(record)
                window.append(stats["loss"])
                if self.log_due(done):
                    stats = distributed.all_reduce_means({**stats, "loss": sum(window) / len(window)}, self.device)
                    record.update(stats)
                    self.mean_loss = stats["loss"]  # the same on every rank: best.pt is judged alike
                    window = []
                    self.on_log(record)
                    self.log.write(record)
                stop = self.end_of_update(done)
            if stop:
                break

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """One update from this rank's micro-batches (dicts of tensors, the model's inputs): forward and backward
        under autocast (DDP syncs on the last micro-batch only), unscale, clip, NaN/Inf guard, optimizer step,
        grad scaler update, scheduler step, then `after_step`. Returns this rank's loss and model stats averaged
        over its micro-batches, with lr (of scale 1) and grad_norm (before clipping); the loop averages them over
        ranks when it logs. One host sync per update (the guard needs one), no collective beyond DDP's. Raises
        TrainingStopped on a NaN/Inf loss or gradient, before the optimizer step."""
        update = self.state["update"]
        self.before_step(update)
        n = len(micro_batches)
        total: torch.Tensor | None = None
        for k, mb in enumerate(micro_batches):
            mb = {key: v.to(self.device, non_blocking=True) for key, v in mb.items()}
            if self.tokens_per_sample is None:
                self.tokens_per_sample = self.dataset.tokens_per_sample(mb)
            sync = contextlib.nullcontext() if k == n - 1 or not isinstance(self.ddp, DDP) else self.ddp.no_sync()
            with sync, torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                loss, stats = self.ddp(mb)
                if update == self.run.debug_nan_at_update:
                    loss = loss * float("nan")
                self.scaler.scale(loss / n).backward()
            values = {"loss": loss.detach(), **stats}
            # the stats stay on the device until the one read below
            vector = torch.stack([torch.as_tensor(v, device=self.device).detach().float().reshape(()) for v in values.values()])
            total = vector / n if total is None else total + vector / n
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.clip_norm if self.cfg.clip_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], clip)
        *means, grad_norm = torch.cat([total, grad_norm.detach().float().reshape(1).to(self.device)]).tolist()
        stats = dict(zip(values, means))
        self.guard(update, stats["loss"], grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state["update"] = update + 1
        self.after_step(update + 1, stats)
        group = self.optimizer.param_groups[0]
        stats.update(lr=group["lr"] / group.get("lr_scale", 1.0), grad_norm=grad_norm)
        return stats

    def guard(self, update: int, loss: float, grad_norm: float) -> None:
        """Stop before the optimizer step on a NaN/Inf, every rank alike. The gradient norm is the same on every
        rank (DDP averaged the gradients) and a NaN/Inf loss on any rank makes it NaN/Inf, so it decides without a
        collective; under fp16 an Inf gradient is the grad scaler's business (it skips the step), so there the
        loss itself is averaged over ranks and checked. Raises TrainingStopped."""
        if not self.scaler.is_enabled() and math.isfinite(grad_norm):
            return
        loss = distributed.all_reduce_means({"loss": loss}, self.device)["loss"]  # every rank comes here
        if self.scaler.is_enabled() and math.isfinite(loss):
            return
        what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {grad_norm} (loss {loss:.4g})"
        kept = f" in {self.out / 'last.pt'}" if self.out is not None else ""
        raise TrainingStopped(f"{what} at update {update}; stopped, last good checkpoint kept{kept}")

    def first_update(self) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches of update 0 (the model's inputs, on the device): the first batch of every run
        with this seed and data config (pipeline/train/loader.py), read in this process."""
        loader = make_loader(self.dataset, self.cfg, self.dist.rank, self.dist.world_size, 0, 1, workers=0)
        _, micro_batches = next(updates(loader, self.cfg.grad_accum))
        return [{k: v.to(self.device) for k, v in mb.items()} for mb in micro_batches]

    def step_flops(self, micro_batches: list[dict[str, torch.Tensor]]) -> int:
        """FLOPs of one `train_step` on this rank's `micro_batches`, summed over ranks: the `counted` figure of
        `count_flops`, which covers every method's ops."""
        return self.count_flops(micro_batches)["counted"]

    def count_flops(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """FLOPs of one `train_step` on this rank's `micro_batches`, summed over ranks, two ways
        (model/flops.py): {"counted": corrected FlopCounterMode total, "analytic": per-module formula
        total, "components": {component: analytic FLOPs}}. Forward and backward of everything the step runs
        (student, EMA teacher, decoder), every block included: layerdrop is off while it counts
        (model/flops.py). A pure function of the model config and the batch shapes (speech: also of the utterance
        lengths, which set the masks).

        The step is taken: weights, optimizer, schedule and RNG move on. Count on a trainer that is timed
        afterwards (the throughput stage) or thrown away (the benchmark's runs)."""
        from model import flops

        # eagerly even with compile: true, so both counts see every op and module call
        with (torch.compiler.set_stance("force_eager"), flops.without_layerdrop(self.model), flops.counter() as counter,
              flops.analytic(self.model) as analytic):
            self.train_step(micro_batches)
        names = list(analytic.components)
        totals = torch.tensor([counter.get_total_flops(), analytic.total, *analytic.components.values()],
                              dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(totals)
        counted, total, *parts = totals.tolist()
        return {"counted": counted, "analytic": total, "components": dict(zip(names, parts))}

    def save(self, name: str) -> None:
        """out/`name` (rank 0, atomically): the model (`model_state`), optimizer, scheduler, grad scaler, every
        rank's RNG state, the world size, identity, resolved config and state. A collective: every rank calls it."""
        rngs = distributed.all_gather(checkpoint.rng_state())
        if self.dist.is_main:
            checkpoint.save(self.out / name, {
                **self.model_state(), "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rngs, "world_size": self.dist.world_size,
                "identity": self.identity, "config": self.resolved, **self.state})

    def summary(self) -> dict[str, Any]:
        return {"stop_reason": self.stop_reason, "updates": self.state["update"], "train_seconds": self.state["train_seconds"],
                "world_size": self.dist.world_size, "device": str(self.device), "effective_batch": self.effective_batch(),
                "tokens_per_sample": self.tokens_per_sample, "precision": self.precision}

    def elapsed(self) -> float:
        """Training seconds of the run so far (across resumes; time in `untimed` blocks left out)."""
        return time.perf_counter() - self._started

    @contextlib.contextmanager
    def untimed(self):
        """What runs inside (validation) is not training time: the clock resumes where the last update left it."""
        try:
            yield
        finally:
            self._started = time.perf_counter() - self.state["train_seconds"]

    def say(self, message: str) -> None:
        """A line on stderr from rank 0 (before the log exists)."""
        if self.dist.is_main:
            print(message, file=sys.stderr)
