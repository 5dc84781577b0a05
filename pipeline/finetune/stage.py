"""The `finetune` stage: a pretrained encoder (or a fresh one: `--checkpoint none`, the `scratch` baseline) plus
a task head, trained on labeled shards under torchrun + DDP, then evaluated on the task's test split.

Same engine as pretraining: `python -m pipeline finetune ...` outside torchrun re-executes itself under
torchrun (pipeline/pretrain/stage.py `launch`); global batches are a pure function of (seed, update) (pipeline/
shard_reader.py), so 1 and N processes train on the same samples; last.pt resumes exactly; a NaN/Inf loss
stops the run (exit 3) keeping the last good checkpoint; rank 0 shows progress and writes metrics.jsonl,
TensorBoard events and, under Dagster Pipes, reports the summary (pipeline/train/pipes.py).

Outputs in `--out` (default models/<modality>/<method>/finetune/<task>[-linear_probe][-f<fraction>]/):
config.json, last.pt, best.pt (best validation score), metrics.jsonl, tb/, loss_curve.png, summary.json,
metrics.json (test metrics of best.pt; schema in pipeline/finetune/evaluate.py `result_record`) and
confusion_matrix.png (classification) or samples.json (speech: reference vs hypothesis).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.config import MODALITIES
from pipeline.errors import UserInputError
from pipeline.train.log import TrainLog


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.pretrain.stage import add_run_arguments

    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--checkpoint", required=True,
                   help="pretrained checkpoint (models/<modality>/<method>/pretrain/last.pt, budget-*.pt, ...) or `none` (scratch)")
    p.add_argument("--task", required=True, help="image: fashion_mnist; speech: synth; text: lexname or fortune; "
                   "with --shards: any name for your own data")
    p.add_argument("--label-fraction", type=float, help="fraction of the labeled training split, stratified by class "
                   "(default: params.yaml, 1.0)")
    p.add_argument("--mode", default="finetune", choices=("finetune", "linear_probe"),
                   help="linear_probe (images): train a linear classifier on frozen features")
    p.add_argument("--out", type=Path, help="output folder (default: models/<modality>/<method>/finetune/<task>[-<mode>][-f<fraction>])")
    p.add_argument("--shards", type=Path, help="shard folder of your own labeled data (default: data/shards/<modality>)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: data/tokenizers/<modality>/tokenizer.json)")
    p.add_argument("--max-updates", type=int, help="update budget (overrides params.yaml)")
    add_run_arguments(p)


def checkpoint_arg(value: str) -> Path | None:
    return None if value.lower() == "none" else Path(value)


def run_name(task: str, mode: str, fraction: float) -> str:
    return task + (f"-{mode}" if mode != "finetune" else "") + (f"-f{fraction:g}" if fraction < 1 else "")


def default_out(modality: str, method: str, task: str, mode: str, fraction: float) -> Path:
    return Path("models") / modality / method / "finetune" / run_name(task, mode, fraction)


def preflight(args: argparse.Namespace) -> None:
    """Checks that need no torch, run before torchrun starts, so a wrong path or task is one message (exit 2)
    instead of a failed worker."""
    from pipeline import paths
    from pipeline.finetune import config as finetune_config
    from pipeline.finetune import tasks as finetune_tasks
    from pipeline import config as P

    overrides = {k: v for k, v in (("label_fraction", args.label_fraction), ("max_updates", args.max_updates)) if v is not None}
    finetune_config.build(args.modality, args.task, args.mode, P.load(args.params), overrides)
    finetune_tasks.resolve(args.modality, args.task, args.shards)
    ckpt = checkpoint_arg(args.checkpoint)
    if ckpt is not None and not ckpt.exists():
        raise UserInputError(f"{ckpt}: checkpoint not found; pretrain first (`python -m pipeline pretrain --modality "
                             f"{args.modality}`) or pass `--checkpoint none` to fine-tune from scratch")
    if args.modality != "image":
        tokenizer = args.tokenizer or paths.tokenizer_path(args.modality)
        if not tokenizer.exists():
            raise UserInputError(f"{tokenizer}: tokenizer not found; run `python -m pipeline tokenizer --modality {args.modality}`")


def lr_lambda(cfg):
    from pipeline.train.optim import lr_factor, polynomial_factor, tri_stage_factor

    if cfg.schedule == "tri_stage":
        return lambda u: tri_stage_factor(u, cfg.max_updates, cfg.warmup_fraction, cfg.hold_fraction)
    if cfg.schedule == "polynomial":
        return lambda u: polynomial_factor(u, cfg.warmup_updates, cfg.max_updates)
    return lambda u: lr_factor(u, cfg.warmup_updates, cfg.max_updates, cfg.min_lr / cfg.lr if cfg.lr else 0.0)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """The worker: runs on every rank under torchrun."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from model.heads import encoder_blocks
    from pipeline import paths
    from pipeline.io import files_digest
    from pipeline.train import checkpoint
    from pipeline.train import distributed
    from pipeline.finetune import config as finetune_config
    from pipeline.finetune import tasks as finetune_tasks
    from pipeline import config as P
    from pipeline.finetune.evaluate import predict, result_record, score, write_results
    from pipeline.finetune.metrics import LOWER_IS_BETTER
    from pipeline.finetune.data import LabeledBatches
    from pipeline.finetune.model import build_encoder, build_task_model, encoder_config, load_pretrained, speech_vocab_size
    from pipeline.train.optim import layer_decay_param_groups
    from pipeline.pretrain.stage import TrainingStopped, autocast_dtype, default_workers
    from pipeline.pretrain.data import make_loader
    from pipeline.io import atomic_write_json

    d = distributed.setup(args.device)
    try:
        modality = args.modality
        overrides = {k: v for k, v in (("label_fraction", args.label_fraction), ("max_updates", args.max_updates)) if v is not None}
        cfg = finetune_config.build(modality, args.task, args.mode, P.load(args.params), overrides)
        task = finetune_tasks.resolve(modality, args.task, args.shards)
        tokenizer_path = (args.tokenizer or paths.tokenizer_path(modality)) if modality != "image" else None
        pretrained = load_pretrained(checkpoint_arg(args.checkpoint))
        method = pretrained["method"] if pretrained else "scratch"
        origin = ({k: pretrained[k] for k in ("path", "update", "train_seconds", "method", "preset")} if pretrained else
                  {"path": "none", "update": 0, "train_seconds": 0.0, "method": "scratch", "preset": cfg.preset})
        out = args.out or default_out(modality, method, task.name, cfg.mode, cfg.label_fraction)
        torch.use_deterministic_algorithms(d.device.type == "cpu")
        torch.set_flush_denormal(True)  # denormal floats slow CPU matmuls ~10x

        model_cfg = encoder_config(modality, cfg, pretrained, tokenizer_path)
        num_outputs = speech_vocab_size(tokenizer_path) if modality == "speech" else len(task.classes)
        torch.manual_seed(cfg.seed)  # identical heads on every rank
        encoder = build_encoder(model_cfg, pretrained["student"] if pretrained else None)
        model = build_task_model(cfg, encoder, num_outputs).to(d.device)
        del pretrained

        pool, carved, _ = finetune_tasks.training_pool(task, cfg.label_fraction, cfg.valid_size, cfg.seed)
        if len(pool) < cfg.batch_size:
            raise UserInputError(f"{len(pool)} labeled training samples (label fraction {cfg.label_fraction:g}) are fewer than "
                                 f"one batch of {cfg.batch_size}; lower params.yaml finetune.{modality}.batch_size")
        num_classes = len(task.classes) if task.classes else None

        def data(split: str, positions: list[int] | None = None) -> LabeledBatches:
            return LabeledBatches(cfg, model_cfg, task.shard_dir, split, positions, tokenizer_path, num_classes)

        train_data = data(task.train, pool)
        valid_data = data(task.valid) if task.valid else data(task.train, carved)
        groups = layer_decay_param_groups(model, encoder_blocks(encoder), cfg.lr, cfg.weight_decay, cfg.layer_decay)
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
        dtype = autocast_dtype(cfg.precision, d.device)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
        random.seed(cfg.seed + d.rank)
        np.random.seed(cfg.seed + d.rank)
        torch.manual_seed(cfg.seed + 1000 * (d.rank + 1))

        # what a run is a function of: last.pt resumes only a run with the same identity; any other is replaced
        settings = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
        identity = {"checkpoint": origin["path"], "pretrain_updates": origin["update"],
                    "pretrain_seconds": origin["train_seconds"], "modality": modality, "task": task.name, "mode": cfg.mode,
                    "label_fraction": cfg.label_fraction, "shards": str(task.shard_dir),
                    "config": hashlib.sha256(settings.encode()).hexdigest()[:16],
                    "inputs": files_digest([Path(origin["path"]) if origin["path"] != "none" else None,
                                             task.shard_dir / "index.json", tokenizer_path])}
        state: dict[str, Any] = {"update": 0, "train_seconds": 0.0, "best_value": None, "best_update": 0}
        last = out / "last.pt"
        resume = checkpoint.load(last, d.device) if last.exists() and not args.fresh else None
        if resume is not None and resume.get("identity") != identity:
            if d.is_main:
                print(f"{last} is from another fine-tuning run (pretrained checkpoint, data, tokenizer, task or "
                      f"params.yaml finetune.{modality} differ): starting fresh (--out DIR keeps runs apart)", file=sys.stderr)
            resume = None
        torch.distributed.barrier()
        if d.is_main and (args.fresh or (last.exists() and resume is None)):
            clear_outputs(out)
        torch.distributed.barrier()
        if resume is not None:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            scaler.load_state_dict(resume["scaler"])
            state = {k: resume[k] for k in state}
            if resume["world_size"] == d.world_size:
                checkpoint.set_rng_state(resume["rng"][d.rank])
            del resume

        world, micro = d.world_size, cfg.micro_batch(d.world_size)
        effective = {"per_rank_micro_batch": micro, "world_size": world, "grad_accum": cfg.grad_accum,
                     "samples_per_update": cfg.batch_size}
        resolved = {"finetune": dataclasses.asdict(cfg), "model": model_cfg.to_dict(), "method": method,
                    "task": {"name": task.name, "shards": str(args.shards) if args.shards else None,
                             "train": task.train, "valid": task.valid or f"{task.train} (carved: {len(carved or [])})",
                             "test": task.test, "classes": task.classes},
                    "tokenizer": str(tokenizer_path) if tokenizer_path else None, "num_outputs": num_outputs,
                    "pretrained": origin, "labeled_samples": len(pool), "effective_batch": effective,
                    "device": str(d.device), "precision": str(dtype or "fp32")}
        resolved = json.loads(json.dumps(resolved, default=str))
        log = TrainLog(out, d.is_main, progress=not args.no_progress, total=cfg.max_updates, initial=state["update"],
                       desc=f"finetune {modality}/{method}/{task.name}", title=f"{modality} {method} -> {task.name} ({cfg.mode})",
                       tb_prefix="finetune")
        if d.is_main:
            (out / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
            log.info(f"{method} {origin['preset']} encoder -> {task.name} ({cfg.mode}): {len(pool)} labeled samples, "
                     f"{cfg.max_updates} updates of {cfg.batch_size} ({micro} per rank x {world} ranks x {cfg.grad_accum}); "
                     f"lr {cfg.lr:g}, layer decay {cfg.layer_decay:g}")

        # unused parameters: the whole encoder while the CTC head trains alone, skipped blocks under layerdrop
        find_unused = (modality == "speech" and cfg.speech.freeze_updates > 0) or model_cfg.encoder.layerdrop > 0
        ddp = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None, find_unused_parameters=find_unused)
        workers = args.workers if args.workers is not None else default_workers(world)
        loader = make_loader(train_data, cfg, d.rank, world, state["update"], cfg.max_updates, workers)

        def save(name: str) -> None:
            rngs = [None] * world
            torch.distributed.all_gather_object(rngs, checkpoint.rng_state())
            if d.is_main:
                checkpoint.save(out / name, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "rng": rngs, "world_size": world, "identity": identity,
                    "config": resolved, **state})

        def validate() -> dict[str, float]:
            outputs = predict(model, valid_data, d.device, dtype, cfg.eval_batch_size, 0, d.rank, world)
            return score(modality, outputs)[0]

        def better(value: float) -> bool:
            best = state["best_value"]
            if best is None:
                return True
            return value < best if cfg.metric in LOWER_IS_BETTER else value > best

        stop_reason = "max_updates"
        window: list[dict[str, float]] = []
        tokens_per_sample = None
        started = time.perf_counter() - state["train_seconds"]
        resumed_at = (state["update"], state["train_seconds"])
        model.train()
        for update, batch in _updates(loader, cfg.grad_accum):
            if modality == "speech":
                model.freeze_encoder = update < cfg.speech.freeze_updates
            totals: dict[str, float] = {}
            for k, mb in enumerate(batch):
                mb = {key: v.to(d.device, non_blocking=True) for key, v in mb.items()}
                if tokens_per_sample is None:
                    tokens_per_sample = train_data.tokens_per_sample(mb)
                sync = contextlib.nullcontext() if k == len(batch) - 1 else ddp.no_sync()
                with sync, torch.autocast(d.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    loss, stats = ddp(mb)
                    if args.debug_nan_at_update is not None and update == args.debug_nan_at_update:
                        loss = loss * float("nan")
                    scaler.scale(loss / cfg.grad_accum).backward()
                for key, value in {"loss": loss.detach(), **stats}.items():
                    totals[key] = totals.get(key, 0.0) + float(value) / cfg.grad_accum
            reduced = {k: float(distributed.all_reduce_mean(torch.tensor(v, device=d.device))) for k, v in totals.items()}
            if not math.isfinite(reduced["loss"]):
                raise TrainingStopped(f"loss is {reduced['loss']} at update {update}; stopped, last good checkpoint kept in {last}")
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], cfg.clip_norm if cfg.clip_norm > 0 else math.inf)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            state["update"] = done = update + 1
            elapsed = time.perf_counter() - started
            state["train_seconds"] = elapsed
            samples_per_s = cfg.batch_size * (done - resumed_at[0]) / max(1e-9, elapsed - resumed_at[1])
            record = {"update": done, "seconds": round(elapsed, 3), "samples_per_s": samples_per_s,
                      "tokens_per_s": samples_per_s * (tokens_per_sample or 0), **reduced,
                      "lr": scheduler.get_last_lr()[0] / optimizer.param_groups[0]["lr_scale"], "grad_norm": float(grad_norm)}
            window.append(reduced)
            log.step(record)
            validating = done % cfg.eval_every == 0 or done == cfg.max_updates
            if done % cfg.log_every == 0 or validating:
                record["loss"] = sum(r["loss"] for r in window) / len(window)
                window = []
                if validating:
                    valid = validate()
                    record.update({f"valid_{k}": v for k, v in valid.items() if isinstance(v, float)})
                    improved = better(valid[cfg.metric])
                    if improved:
                        state["best_value"], state["best_update"] = valid[cfg.metric], done
                        save("best.pt")
                    log.info(f"update {done}: valid {cfg.metric} {valid[cfg.metric]:.4f}" + (" (best)" if improved else ""))
                    started += time.perf_counter() - (started + elapsed)  # validation time is not training time
                log.write(record)
            if done % cfg.checkpoint_every == 0 or done == cfg.max_updates:
                save("last.pt")

        # the final result: best.pt (best validation score) on the test split
        torch.distributed.barrier()
        best = out / "best.pt"
        if not best.exists():
            raise UserInputError(f"{best} is missing; re-run with --fresh")
        model.load_state_dict(checkpoint.load(best, d.device)["model"])
        split = task.eval_role
        test_data = data(task.test) if task.test else valid_data
        eval_started = time.perf_counter()
        metrics, extra = score(modality, predict(model, test_data, d.device, dtype, cfg.eval_batch_size, 0, d.rank, world))
        result = result_record(cfg, task, method, origin, split, metrics, state["update"], round(state["train_seconds"], 3),
                               world, str(d.device), preset=origin["preset"], labeled_samples=len(pool),
                               best_update=state["best_update"], eval_seconds=round(time.perf_counter() - eval_started, 3))
        if d.is_main:
            write_results(out, result, extra, task.classes)
            atomic_write_json(out / "metrics.json", result)
        summary = log.finish({"stop_reason": stop_reason, "updates": state["update"], "train_seconds": state["train_seconds"],
                              "world_size": world, "device": str(d.device), "effective_batch": effective,
                              "labeled_samples": len(pool), "modality": modality, "method": method, "task": task.name,
                              "mode": cfg.mode, "label_fraction": cfg.label_fraction,
                              "result": {k: v for k, v in result.items() if k != "metrics"} | {
                                  "metrics": {k: v for k, v in metrics.items() if k != "confusion_matrix"}},
                              "out": str(out)})
        del ddp, loader
        distributed.leave_together()
        return summary
    finally:
        distributed.teardown()


def clear_outputs(out: Path) -> None:
    """--fresh: remove what an earlier run left before starting."""
    import shutil

    names = ["metrics.jsonl", "summary.json", "loss_curve.png", "config.json", "metrics.json", "confusion_matrix.png", "samples.json"]
    for path in [*out.glob("*.pt"), *(out / n for n in names)]:
        path.unlink(missing_ok=True)
    shutil.rmtree(out / "tb", ignore_errors=True)


def _updates(loader, grad_accum: int):
    """Group the loader's micro-batches into updates: yields (update, [micro-batch, ...]) without ids."""
    group: list = []
    for mb in loader:
        group.append(mb)
        if len(group) == grad_accum:
            update = int(mb["update"])
            yield update, [{k: v for k, v in b.items() if k not in ("update", "ids")} for b in group]
            group = []
