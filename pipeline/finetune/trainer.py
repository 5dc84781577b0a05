"""Fine-tuning on the shared engine (pipeline/train/trainer.py): what a downstream task adds to a plain run.

- the model: a pretrained encoder (or a fresh one, `scratch`) with the task head; AdamW groups with layer-wise
  learning-rate decay; the recipe's schedule (cosine, fairseq tri_stage or polynomial_decay);
- speech: only the CTC head trains for the first freeze_updates (fairseq wav2vec2_asr `freeze_finetune_updates`);
- validation every eval_every updates and after the last; best.pt has the best validation score;
- at the end, best.pt is scored on the task's test split (its validation split when it has none): metrics.json
  and confusion_matrix.png or samples.json.

Checkpoints hold "model" (encoder + head), best_value and best_update besides the engine's keys.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from pipeline.errors import UserInputError
from pipeline.finetune.data import LabeledBatches
from pipeline.finetune.evaluate import predict, result_record, score, write_results
from pipeline.finetune.metrics import LOWER_IS_BETTER
from pipeline.io import atomic_write_json, files_digest
from pipeline.train import checkpoint
from pipeline.train.launch import RunOptions
from pipeline.train.optim import layer_decay_param_groups, polynomial_factor, tri_stage_factor
from pipeline.train.trainer import Trainer, config_digest


class Finetuner(Trainer):
    """Fine-tunes `pretrained` (pipeline/finetune/model.py load_pretrained; None: scratch, named `method`) on
    `task` (pipeline/finetune/tasks.py) as `cfg` (FinetuneConfig) says. `tokenizer_path`: speech and text;
    `shards`: the --shards folder of the user's own data, if any (kept in config.json for `evaluate`)."""

    tb_prefix = "finetune"
    outputs = (*Trainer.outputs, "metrics.json", "confusion_matrix.png", "samples.json")

    def __init__(self, cfg, task, pretrained: dict[str, Any] | None, method: str, tokenizer_path: Path | None,
                 shards: Path | None, dist, out: Path, run: RunOptions = RunOptions()):
        from pipeline.finetune.model import encoder_config, speech_vocab_size
        from pipeline.finetune.tasks import training_pool

        modality = cfg.modality
        self.task, self.method, self.tokenizer_path, self.shards = task, method, tokenizer_path, shards
        self.pretrained = pretrained
        self.origin = ({k: pretrained[k] for k in ("path", "update", "train_seconds", "method", "preset")} if pretrained else
                       {"path": "none", "update": 0, "train_seconds": 0.0, "method": "scratch", "preset": cfg.preset})
        self.what = (f"fine-tuning run (pretrained checkpoint, data, tokenizer, task or params.yaml finetune.{modality} "
                     "differ)")
        self.desc = f"finetune {modality}/{method}/{task.name}"
        self.title = f"{modality} {method} -> {task.name} ({cfg.mode})"
        self.num_outputs = speech_vocab_size(tokenizer_path) if modality == "speech" else len(task.classes)
        self.pool, self.carved, _ = training_pool(task, cfg.label_fraction, cfg.valid_size, cfg.seed)
        if len(self.pool) < cfg.batch_size:
            raise UserInputError(f"{len(self.pool)} labeled training samples (label fraction {cfg.label_fraction:g}) are "
                                 f"fewer than one batch of {cfg.batch_size}; lower finetune.{modality}.batch_size in the "
                                 "params file (--params, default params.yaml)")
        self.num_classes = len(task.classes) if task.classes else None
        model_cfg = encoder_config(modality, cfg, pretrained, tokenizer_path)
        super().__init__(cfg, model_cfg, dist, out, run)
        self.pretrained = None  # its weights are in the model now
        for note in task.notes:
            self.say(note)
        self.valid_data = self.data(task.valid) if task.valid else self.data(task.train, self.carved)

    def data(self, split: str, positions: list[int] | None = None) -> LabeledBatches:
        return LabeledBatches(self.cfg, self.model_cfg, self.task.shard_dir, split, positions, self.tokenizer_path,
                              self.num_classes)

    def build_model(self):
        from pipeline.finetune.model import build_encoder, build_task_model

        encoder = build_encoder(self.model_cfg, self.pretrained["student"] if self.pretrained else None)
        return build_task_model(self.cfg, encoder, self.num_outputs)

    def build_data(self) -> LabeledBatches:
        return self.data(self.task.train, self.pool)

    def param_groups(self) -> list[dict]:
        from model.heads import encoder_blocks

        return layer_decay_param_groups(self.model, encoder_blocks(self.model.encoder), self.cfg.lr,
                                        self.cfg.weight_decay, self.cfg.layer_decay)

    def lr_lambda(self) -> Callable[[int], float]:
        cfg = self.cfg
        if cfg.schedule == "tri_stage":
            return lambda u: tri_stage_factor(u, cfg.max_updates, cfg.warmup_fraction, cfg.hold_fraction)
        if cfg.schedule == "polynomial":
            return lambda u: polynomial_factor(u, cfg.warmup_updates, cfg.max_updates)
        return super().lr_lambda()

    @property
    def freeze_updates(self) -> int:
        return self.cfg.speech.freeze_updates if self.cfg.modality == "speech" else 0

    def find_unused_parameters(self) -> bool:
        # the whole encoder is unused while the CTC head trains alone
        return self.freeze_updates > 0 or super().find_unused_parameters()

    def initial_state(self) -> dict[str, Any]:
        return {"best_value": None, "best_update": 0}

    def run_identity(self) -> dict[str, Any]:
        """The pretrained checkpoint (path, updates, seconds, digest), task, mode, label fraction, shards, tokenizer
        and the whole fine-tuning config: any other run in the same folder starts over."""
        origin, task = self.origin, self.task
        return {"checkpoint": origin["path"], "pretrain_updates": origin["update"], "pretrain_seconds": origin["train_seconds"],
                "modality": self.cfg.modality, "task": task.name, "mode": self.cfg.mode,
                "label_fraction": self.cfg.label_fraction, "shards": str(task.shard_dir),
                "config": config_digest(dataclasses.asdict(self.cfg)),
                "inputs": files_digest([Path(origin["path"]) if origin["path"] != "none" else None,
                                        task.shard_dir / "index.json", self.tokenizer_path])}

    def resolved_config(self) -> dict[str, Any]:
        """Also the tokenizer's vocabulary digest, which `evaluate` checks its tokenizer against."""
        from pipeline.data.tokenizer import load, vocab_digest

        task = self.task
        digest = vocab_digest(load(self.tokenizer_path)) if self.tokenizer_path else None
        return {"finetune": dataclasses.asdict(self.cfg), "model": self.model_cfg.to_dict(), "method": self.method,
                "task": {"name": task.name, "shards": str(self.shards) if self.shards else None, "train": task.train,
                         "valid": task.valid or f"{task.train} (carved: {len(self.carved or [])})", "test": task.test,
                         "classes": task.classes, "notes": list(task.notes)},
                "tokenizer": str(self.tokenizer_path) if self.tokenizer_path else None, "tokenizer_vocab_sha256": digest,
                "num_outputs": self.num_outputs,
                "pretrained": self.origin, "labeled_samples": len(self.pool), **super().resolved_config()}

    def describe(self) -> str:
        e, cfg = self.effective_batch(), self.cfg
        return (f"{self.method} {self.origin['preset']} encoder -> {self.task.name} ({cfg.mode}): {len(self.pool)} labeled "
                f"samples, {cfg.max_updates} updates of {cfg.batch_size} ({e['per_rank_micro_batch']} per rank x "
                f"{e['world_size']} ranks x {cfg.grad_accum}); lr {cfg.lr:g}, layer decay {cfg.layer_decay:g}")

    def before_step(self, update: int) -> None:
        if self.cfg.modality == "speech":
            self.model.freeze_encoder = update < self.freeze_updates

    def validation_due(self, done: int) -> bool:
        return done % self.cfg.eval_every == 0 or done == self.cfg.max_updates

    def log_due(self, done: int) -> bool:
        return super().log_due(done) or self.validation_due(done)

    def on_log(self, record: dict[str, Any]) -> None:
        """Validation (when due): its scores go into the record; best.pt when the metric is the best yet."""
        done, metric = record["update"], self.cfg.metric
        if not self.validation_due(done):
            return
        with self.untimed():
            outputs = predict(self.model, self.valid_data, self.device, self.dtype, self.cfg.eval_batch_size, 0,
                              self.dist.rank, self.dist.world_size)
            valid = score(self.cfg.modality, outputs)[0]
            record.update({f"valid_{k}": v for k, v in valid.items() if isinstance(v, float)})
            improved = self.better(valid[metric])
            if improved:
                self.state["best_value"], self.state["best_update"] = valid[metric], done
                self.save("best.pt")
            self.log.info(f"update {done}: valid {metric} {valid[metric]:.4f}" + (" (best)" if improved else ""))

    def better(self, value: float) -> bool:
        best = self.state["best_value"]
        if best is None:
            return True
        return value < best if self.cfg.metric in LOWER_IS_BETTER else value > best

    def finish(self) -> dict[str, Any]:
        """The final result: best.pt (best validation score) on the test split; metrics.json and its pictures."""
        cfg, task, world = self.cfg, self.task, self.dist.world_size
        torch.distributed.barrier()
        best = self.out / "best.pt"
        if not best.exists():
            raise UserInputError(f"{best} is missing; re-run with --fresh")
        self.model.load_state_dict(checkpoint.load(best, self.device)["model"])
        test_data = self.data(task.test) if task.test else self.valid_data
        started = time.perf_counter()
        outputs = predict(self.model, test_data, self.device, self.dtype, cfg.eval_batch_size, 0, self.dist.rank, world)
        metrics, extra = score(cfg.modality, outputs)
        result = result_record(cfg, task, self.method, self.origin, task.eval_role, metrics, self.state["update"],
                               round(self.state["train_seconds"], 3), world, str(self.device), preset=self.origin["preset"],
                               labeled_samples=len(self.pool), best_update=self.state["best_update"],
                               eval_seconds=round(time.perf_counter() - started, 3))
        if self.dist.is_main:
            write_results(self.out, result, extra, task.classes)
            atomic_write_json(self.out / "metrics.json", result)
        plain = {k: v for k, v in result.items() if k != "metrics"}
        plain["metrics"] = {k: v for k, v in metrics.items() if k != "confusion_matrix"}
        return {"labeled_samples": len(self.pool), "modality": cfg.modality, "method": self.method, "task": task.name,
                "mode": cfg.mode, "label_fraction": cfg.label_fraction, "result": plain, "out": str(self.out)}
