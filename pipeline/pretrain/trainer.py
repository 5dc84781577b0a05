"""Pretraining on the shared engine (pipeline/train/trainer.py): what data2vec 2.0 and its baselines add to a
plain run.

- the EMA teacher steps after every update (fairseq `examples/data2vec/models/data2vec2.py` `set_num_updates`);
- a budget: max_updates, or a wall-clock budget of the training loop (`budget_seconds`, max_updates then only
  caps it), which the cosine schedule also follows; budget-<fraction>.pt at each of `checkpoint_fractions` of it
  (the benchmark trains each of its budgets as a complete run instead: pipeline/pretrain/stage.py);
- the summary records the training FLOPs when `flops_per_update` is given (Trainer.step_flops);
- fairseq's collapse guard (min_target_var / min_pred_var after guard_after_updates, on each logged record);
- best.pt: the lowest logged loss, judged when last.pt is written.

Checkpoints hold "student" and "teacher" (the EMA teacher is not a registered submodule) besides the engine's keys.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from pipeline.errors import TrainingStopped
from pipeline.train import distributed
from pipeline.train.launch import RunOptions
from pipeline.train.optim import lr_factor
from pipeline.train.trainer import Trainer, config_digest

# Settings a run may change and still resume (train longer, checkpoint or log more often).
RESUMABLE_CHANGES = ("max_updates", "budget_seconds", "checkpoint_every", "checkpoint_fractions", "log_every", "guard_after_updates",
                     "compile")


def budget_spent(cfg, updates: int, train_seconds: float) -> bool:
    """Whether a run that has trained `updates` in `train_seconds` has used up the budget of `cfg` (its wall-clock
    budget, or else max_updates; under a wall-clock budget max_updates is only a cap, and the loader stops there)."""
    return train_seconds >= cfg.budget_seconds if cfg.budget_seconds else updates >= cfg.max_updates


def fractions_saved(cfg, saved: list, budget: str) -> bool:
    """Whether budget-<f>.pt of every checkpoint fraction of this budget were saved."""
    done = {fraction for fraction, b in (m for m in saved if isinstance(m, list)) if b == budget}
    return set(cfg.checkpoint_fractions) <= done


def check_collapse(stats: dict[str, float], model_cfg, cfg, update: int) -> None:
    """fairseq's guard: after a warm-up, stop when target or prediction std falls under its threshold."""
    if update <= cfg.guard_after_updates:
        return
    for key, floor in (("target_var", model_cfg.min_target_var), ("pred_var", model_cfg.min_pred_var)):
        if floor > 0 and key in stats and stats[key] < floor:
            raise TrainingStopped(f"{key} {stats[key]:.4g} < {floor} at update {update}: representation collapse; "
                                  "stopped, last good checkpoint kept")


class Pretrainer(Trainer):
    """Pretrains `model_cfg` (any method: model.build_model) on the shards in `shard_dir` as `cfg`
    (pipeline/pretrain/config.py PretrainConfig) says. `tokenizer_path`: the text tokenizer (text only)."""

    def __init__(self, cfg, model_cfg, dist, out: Path | None, shard_dir: Path, tokenizer_path: Path | None,
                 run: RunOptions = RunOptions()):
        self.shard_dir, self.tokenizer_path = shard_dir, tokenizer_path
        self.desc, self.title = f"pretrain {cfg.modality}/{cfg.method}", f"{cfg.modality} {cfg.method} ({cfg.preset})"
        # budget-<f>.pt belong to one budget (a wall-clock one, or else max_updates)
        self.budget = f"{cfg.budget_seconds}s" if cfg.budget_seconds else f"{cfg.max_updates}u"
        self.spent = False  # a finished run (budget spent, its checkpoints saved) trains nothing more
        self.flops_per_update: int | None = None  # FLOPs of one update (all ranks), when counted: into the summary
        self.init: Path | None = None  # continued pretraining: a checkpoint whose student and teacher start the run
        super().__init__(cfg, model_cfg, dist, out, run)

    def build_model(self):
        from model.build import build_model

        return build_model(self.model_cfg)

    def build_data(self):
        from pipeline.pretrain.data import PretrainBatches

        return PretrainBatches(self.cfg, self.model_cfg, self.shard_dir, "train", self.tokenizer_path)

    @property
    def lr(self) -> float:
        return self.cfg.resolved_lr()

    def initial_state(self) -> dict[str, Any]:
        return {"best_loss": math.inf, "saved_fractions": []}

    def run_identity(self) -> dict[str, str]:
        """The config minus RESUMABLE_CHANGES, the model config, the shard index and (text) the tokenizer."""
        from pipeline.io import files_digest

        settings = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in RESUMABLE_CHANGES}
        tokenizer = self.tokenizer_path if self.cfg.modality == "text" else None
        identity = {"config": config_digest({"pretrain": settings, "model": self.model_cfg.to_dict()}),
                    "data": files_digest([self.shard_dir / "index.json", tokenizer])}
        return identity | ({"init": files_digest([self.init])} if self.init is not None else {})

    def model_state(self) -> dict[str, Any]:
        teacher = self.model.teacher
        return {"student": self.model.state_dict(), "teacher": teacher.state_dict() if teacher is not None else {}}

    def load_model_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["student"])
        if self.model.teacher is not None:
            self.model.teacher.load_state_dict(ckpt["teacher"])

    def resumable(self, ckpt: dict[str, Any]) -> bool:
        """Not when it trained past this (smaller) budget, or checkpoint_fractions gained a fraction it has passed:
        the checkpoints the benchmark needs cannot be made any more, so the run starts over."""
        if budget_spent(self.cfg, ckpt["update"], ckpt["train_seconds"]) and not fractions_saved(
                self.cfg, ckpt["saved_fractions"], self.budget):
            self.say(f"{self.out / 'last.pt'} has trained {ckpt['update']} updates / {ckpt['train_seconds']:.1f} s, past "
                     f"this budget ({self.budget}) without its checkpoints at fractions {self.cfg.checkpoint_fractions}: "
                     "starting fresh")
            return False
        return True

    def after_resume(self) -> None:
        """After a budget change (train longer) budget-<f>.pt are saved again at the new budget's fractions, and the
        earlier budget's files are removed so a sweep never mixes two budgets. A fresh run with `init` starts from
        that checkpoint's student and EMA teacher."""
        if self.init is not None and self.state["update"] == 0:
            from pipeline.train import checkpoint

            self.load_model_state(checkpoint.load(self.init, self.device))
        self.spent = budget_spent(self.cfg, self.state["update"], self.state["train_seconds"])
        if self.spent and self.cfg.budget_seconds:
            self.stop_reason = "budget_seconds"
        saved = [m for m in self.state["saved_fractions"] if isinstance(m, list) and m[1] == self.budget]
        self.state["saved_fractions"] = saved
        if self.dist.is_main:
            kept = {f"budget-{fraction:g}.pt" for fraction, _ in saved}
            for stale in self.out.glob("budget-*.pt"):
                if stale.name not in kept:
                    stale.unlink()

    def stop_update(self) -> int:
        return self.state["update"] if self.spent else self.cfg.max_updates

    def effective_batch(self) -> dict[str, Any]:
        clones = self.model_cfg.mask.clone_batch
        return {**super().effective_batch(), "clone_batch": clones, "student_rows_per_update": self.cfg.batch_size * clones}

    def resolved_config(self) -> dict[str, Any]:
        """Also the text tokenizer and its vocabulary digest, which fine-tuning checks its tokenizer against."""
        from pipeline.data.tokenizer import load, vocab_digest

        cfg = self.cfg
        text = cfg.modality == "text"
        tokenizer = {"tokenizer": str(self.tokenizer_path) if text else None,
                     "tokenizer_vocab_sha256": vocab_digest(load(self.tokenizer_path)) if text else None}
        return {"pretrain": dataclasses.asdict(cfg), "model": self.model_cfg.to_dict(), **tokenizer, **super().resolved_config(),
                "lr": {"base": cfg.lr, "resolved": self.lr, "rule": cfg.lr_scaling, "reference_batch_size": cfg.reference_batch_size,
                       "note": "fewer devices reproduce a larger run by raising grad_accum at the same batch_size"}}

    def describe(self) -> str:
        e = self.effective_batch()
        return (f"effective batch: {e['per_rank_micro_batch']} per rank x {e['world_size']} ranks x {e['grad_accum']} "
                f"accumulation = {e['samples_per_update']} samples x {e['clone_batch']} clones = "
                f"{e['student_rows_per_update']} student rows per update; lr {self.lr:g} ({self.cfg.lr_scaling} scaling)")

    def after_step(self, done: int, stats: dict[str, float]) -> None:
        """The cosine also follows the wall-clock budget (optim.lr_factor); the EMA teacher steps."""
        if self.cfg.budget_seconds:
            time_fraction = distributed.all_reduce_means({"t": self.elapsed() / self.cfg.budget_seconds}, self.device)["t"]
            factor = lr_factor(done, self.cfg.warmup_updates, self.cfg.max_updates, self.min_lr_ratio, time_fraction)
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        stats["ema_decay"] = self.model.ema_step(done)

    def on_log(self, record: dict[str, Any]) -> None:
        """The collapse guard, on the logged stats (averaged over ranks, so every rank stops alike)."""
        check_collapse(record, self.model_cfg, self.cfg, record["update"])

    def end_of_update(self, done: int) -> bool:
        """budget-<f>.pt once f of the budget has passed; last.pt (and best.pt when the logged loss is the lowest
        yet) every checkpoint_every updates and at the end; stop when the wall-clock budget is spent."""
        cfg, elapsed = self.cfg, self.state["train_seconds"]
        # a wall-clock decision differs between ranks by microseconds: take any rank's, so all stop together
        over_time = cfg.budget_seconds is not None and distributed.broadcast_flag(elapsed >= cfg.budget_seconds, self.device)
        for fraction in cfg.checkpoint_fractions:
            if cfg.budget_seconds:
                reached = distributed.broadcast_flag(elapsed >= fraction * cfg.budget_seconds, self.device)
            else:
                reached = done >= fraction * cfg.max_updates
            if reached and [fraction, self.budget] not in self.state["saved_fractions"]:
                self.state["saved_fractions"].append([fraction, self.budget])
                self.save(f"budget-{fraction:g}.pt")
        if self.checkpoint_due(done) or over_time:
            is_best = self.mean_loss < self.state["best_loss"]
            self.state["best_loss"] = min(self.state["best_loss"], self.mean_loss)
            self.save("last.pt")
            if is_best:
                self.save("best.pt")
        if over_time:
            self.stop_reason = "budget_seconds"
        return over_time

    def finish(self) -> dict[str, Any]:
        checkpoints = sorted(p.name for p in self.out.glob("*.pt")) if self.dist.is_main else []
        flops = {} if self.flops_per_update is None else {
            "flops_per_update": self.flops_per_update, "pretrain_flops": self.flops_per_update * self.state["update"]}
        return {"method": self.cfg.method, "modality": self.cfg.modality, "preset": self.cfg.preset, "seed": self.cfg.seed,
                "checkpoints": checkpoints, **flops}
