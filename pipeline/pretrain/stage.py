"""The `pretrain` stage: data2vec 2.0 (and baselines built on the same model code) under torchrun + DDP.

`python -m pipeline pretrain ...` outside torchrun re-executes itself as `torchrun --standalone
--nproc-per-node N -m pipeline pretrain ...`; inside torchrun (LOCAL_RANK set) it trains. So 1 and N
processes, one machine or many (call torchrun yourself with --nnodes/--rdzv-*), run the same code.

Outputs in `--out` (default models/<modality>/<method>/pretrain/): config.json (resolved config), last.pt,
best.pt, budget-<fraction>.pt, metrics.jsonl, tb/ (TensorBoard), loss_curve.png, summary.json.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
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


class TrainingStopped(Exception):
    """A guard stopped training (NaN/Inf loss, collapse); the last good checkpoint is kept."""


def default_out(modality: str, method: str) -> Path:
    return Path("models") / modality / method / "pretrain"


def default_workers(nproc: int) -> int:
    return max(0, min(4, (os.cpu_count() or 1) // nproc - 1))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--method", default="data2vec2",
                   help="data2vec2 (default), data2vec1, or the baseline of the modality: mae (image), wav2vec2 (speech), mlm (text)")
    p.add_argument("--preset", help="tiny, base or large (default: params.yaml pretrain.<modality>.preset)")
    p.add_argument("--out", type=Path, help="output folder (default: models/<modality>/<method>/pretrain)")
    p.add_argument("--shards", type=Path, help="shard folder (default: data/shards/<modality>)")
    p.add_argument("--tokenizer", type=Path, help="text tokenizer.json (default: data/tokenizers/text/tokenizer.json)")
    p.add_argument("--max-updates", type=int, help="update budget (overrides params.yaml)")
    p.add_argument("--budget-seconds", type=float, help="wall-clock budget of the training loop (overrides params.yaml)")
    add_run_arguments(p)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The operational flags of every torchrun stage (pretrain, finetune)."""
    p.add_argument("--nproc", type=int, default=1, help="processes on this machine (torchrun --nproc-per-node)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--workers", type=int, help="DataLoader workers per process (default: from the CPU count)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing last.pt instead of resuming from it")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug-nan-at-update", type=int, help=argparse.SUPPRESS)  # tests: inject a NaN loss


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


def build_configs(args: argparse.Namespace, params: dict[str, Any]):
    from model.presets import get_config
    from pipeline.pretrain import config as train_config

    overrides = {k: v for k, v in (("max_updates", args.max_updates), ("budget_seconds", args.budget_seconds)) if v is not None}
    if args.preset:
        overrides["preset"] = args.preset
    cfg = train_config.build(args.modality, args.method, params, overrides)
    try:
        model_cfg = get_config(args.modality, cfg.preset, args.method)
    except ValueError as e:
        raise UserInputError(str(e)) from None
    model_cfg.seed = cfg.seed
    return cfg, model_cfg


def text_vocab(model_cfg, tokenizer_path: Path) -> None:
    """The text model's vocabulary is the trained tokenizer's (size and special ids)."""
    from pipeline.data.tokenizer import load

    tok = load(tokenizer_path)
    model_cfg.text.vocab_size = tok.get_vocab_size()
    model_cfg.text.pad_idx = tok.token_to_id("<pad>")
    model_cfg.text.mask_idx = tok.token_to_id("<mask>")


def autocast_dtype(precision: str, device) -> "torch.dtype | None":
    import torch

    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UserInputError("precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def train(args: argparse.Namespace) -> dict[str, Any]:
    """The worker: runs on every rank under torchrun."""
    import numpy as np
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from model.build import build_model
    from pipeline import paths
    from pipeline.train import checkpoint
    from pipeline.train import distributed
    from pipeline import config as P
    from pipeline.train.optim import lr_factor, param_groups
    from pipeline.pretrain.data import PretrainBatches, make_loader
    from pipeline.train.log import TrainLog

    d = distributed.setup(args.device)
    try:
        cfg, model_cfg = build_configs(args, P.load(args.params))
        out = args.out or default_out(cfg.modality, cfg.method)
        shard_dir = args.shards or paths.shards_dir(cfg.modality)
        tokenizer_path = args.tokenizer or paths.tokenizer_path("text")
        if cfg.modality == "text":
            text_vocab(model_cfg, tokenizer_path)
        torch.use_deterministic_algorithms(d.device.type == "cpu")
        torch.set_flush_denormal(True)  # denormal floats slow CPU matmuls ~10x (measured on the tiny image preset)

        # identical initial weights on every rank (DDP also broadcasts rank 0's, but the teacher is outside DDP)
        torch.manual_seed(cfg.seed)
        model = build_model(model_cfg).to(d.device)
        dataset = PretrainBatches(cfg, model_cfg, shard_dir, "train", tokenizer_path)
        lr = cfg.resolved_lr()
        optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr, betas=cfg.betas, eps=cfg.eps)
        min_ratio = cfg.min_lr / lr if lr else 0.0
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: lr_factor(u, cfg.warmup_updates, cfg.max_updates, min_ratio))
        dtype = autocast_dtype(cfg.precision, d.device)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
        # per-rank RNG for dropout / layer-drop / noise tokens
        random.seed(cfg.seed + d.rank)
        np.random.seed(cfg.seed + d.rank)
        torch.manual_seed(cfg.seed + 1000 * (d.rank + 1))

        state = {"update": 0, "train_seconds": 0.0, "best_loss": math.inf, "saved_fractions": []}
        identity = run_identity(cfg, model_cfg, shard_dir, tokenizer_path if cfg.modality == "text" else None)
        last = out / "last.pt"
        ckpt = checkpoint.load(last, d.device) if last.exists() and not args.fresh else None
        if ckpt is not None and ckpt.get("identity") != identity:
            if d.is_main:
                print(f"{last} is from another run (hyper-parameters, model or data differ): starting fresh", file=sys.stderr)
            ckpt = None
        # budget-<f>.pt belong to one budget (a wall-clock one, or else max_updates)
        budget = f"{cfg.budget_seconds}s" if cfg.budget_seconds else f"{cfg.max_updates}u"
        spent = ckpt is not None and budget_spent(cfg, ckpt["update"], ckpt["train_seconds"])
        if spent and not fractions_saved(cfg, ckpt["saved_fractions"], budget):
            # it trained past this (smaller) budget, or checkpoint_fractions gained a fraction it has passed: the
            # checkpoints the benchmark needs cannot be made any more, so the run starts over
            if d.is_main:
                print(f"{last} has trained {ckpt['update']} updates / {ckpt['train_seconds']:.1f} s, past this budget "
                      f"({budget}) without its checkpoints at fractions {cfg.checkpoint_fractions}: starting fresh", file=sys.stderr)
            ckpt, spent = None, False
        if d.is_main and (args.fresh or (last.exists() and ckpt is None)):
            clear_outputs(out)
        torch.distributed.barrier()
        if ckpt is not None:
            model.load_state_dict(ckpt["student"])
            if model.teacher is not None:
                model.teacher.load_state_dict(ckpt["teacher"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            state = {k: ckpt[k] for k in state}
            if ckpt["world_size"] == d.world_size:
                checkpoint.set_rng_state(ckpt["rng"][d.rank])
            elif d.is_main:
                print(f"resuming on {d.world_size} processes from a {ckpt['world_size']}-process checkpoint: "
                      "data order and masks continue exactly, dropout RNG streams restart", file=sys.stderr)

        # after a budget change (train longer) budget-<f>.pt are saved again at the new budget's fractions, and the
        # earlier budget's files are removed so a sweep never mixes two budgets
        state["saved_fractions"] = [m for m in state["saved_fractions"] if isinstance(m, list) and m[1] == budget]
        if d.is_main:
            kept = {f"budget-{fraction:g}.pt" for fraction, _ in state["saved_fractions"]}
            for stale in out.glob("budget-*.pt"):
                if stale.name not in kept:
                    stale.unlink()

        world, micro = d.world_size, cfg.micro_batch(d.world_size)
        effective = {"per_rank_micro_batch": micro, "world_size": world, "grad_accum": cfg.grad_accum,
                     "clone_batch": model_cfg.mask.clone_batch, "samples_per_update": cfg.batch_size,
                     "student_rows_per_update": cfg.batch_size * model_cfg.mask.clone_batch}
        resolved = {"pretrain": dataclasses.asdict(cfg), "model": model_cfg.to_dict(), "effective_batch": effective,
                    "lr": {"base": cfg.lr, "resolved": lr, "rule": cfg.lr_scaling, "reference_batch_size": cfg.reference_batch_size,
                           "note": "fewer devices reproduce a larger run by raising grad_accum at the same batch_size"},
                    "device": str(d.device), "precision": str(dtype or "fp32")}
        log = TrainLog(out, d.is_main, progress=not args.no_progress, total=cfg.max_updates, initial=state["update"],
                       desc=f"pretrain {cfg.modality}/{cfg.method}", title=f"{cfg.modality} {cfg.method} ({cfg.preset})")
        if d.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(resolved, indent=2, default=str) + "\n")
            log.info(f"effective batch: {micro} per rank x {world} ranks x {cfg.grad_accum} accumulation = "
                     f"{cfg.batch_size} samples x {model_cfg.mask.clone_batch} clones = {effective['student_rows_per_update']} "
                     f"student rows per update; lr {lr:g} ({cfg.lr_scaling} scaling)")

        ddp = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None,
                  find_unused_parameters=model_cfg.encoder.layerdrop > 0)
        workers = args.workers if args.workers is not None else default_workers(world)
        # a finished run (its budget spent, its checkpoints saved) trains nothing more when run again
        loader = make_loader(dataset, cfg, d.rank, world, state["update"], state["update"] if spent else cfg.max_updates, workers)

        def save(name: str) -> None:
            rngs = [None] * world
            torch.distributed.all_gather_object(rngs, checkpoint.rng_state())
            if d.is_main:
                checkpoint.save(out / name, {
                    "student": model.state_dict(), "teacher": model.teacher.state_dict() if model.teacher is not None else {},
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "rng": rngs, "world_size": world, "identity": identity,
                    "config": json.loads(json.dumps(resolved, default=str)), **state,
                })

        stop_reason = "budget_seconds" if spent and cfg.budget_seconds else "max_updates"
        tokens_per_sample = None
        window: list[dict[str, float]] = []
        mean_loss = math.inf  # mean loss of the latest log window
        started = time.perf_counter() - state["train_seconds"]
        resumed_at = (state["update"], state["train_seconds"])
        for update, batch in _updates(loader, cfg.grad_accum):
            # one update = grad_accum micro-batches; DDP syncs gradients on the last one only
            totals: dict[str, float] = {}
            for k, mb in enumerate(batch):
                mb = {key: v.to(d.device, non_blocking=True) for key, v in mb.items()}
                sync = contextlib.nullcontext() if k == len(batch) - 1 else ddp.no_sync()
                with sync, torch.autocast(d.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    loss, stats = ddp(mb)
                    if args.debug_nan_at_update is not None and update == args.debug_nan_at_update:
                        loss = loss * float("nan")
                    scaler.scale(loss / cfg.grad_accum).backward()
                for key, value in {"loss": loss.detach(), **stats}.items():
                    totals[key] = totals.get(key, 0.0) + float(value) / cfg.grad_accum
                if tokens_per_sample is None:
                    tokens_per_sample = dataset.tokens_per_sample(mb)
            reduced = {k: float(distributed.all_reduce_mean(torch.tensor(v, device=d.device))) for k, v in totals.items()}
            if not math.isfinite(reduced["loss"]):
                stop_reason = f"loss is {reduced['loss']} at update {update}"
                raise TrainingStopped(f"{stop_reason}; stopped, last good checkpoint kept in {last}")
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm if cfg.clip_norm > 0 else math.inf)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if cfg.budget_seconds:  # the cosine also follows the wall-clock budget (optim.lr_factor)
                time_fraction = distributed.all_reduce_mean(
                    torch.tensor((time.perf_counter() - started) / cfg.budget_seconds, device=d.device))
                factor = lr_factor(update + 1, cfg.warmup_updates, cfg.max_updates, min_ratio, float(time_fraction))
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * factor
            state["update"] = update + 1
            reduced["ema_decay"] = model.ema_step(state["update"])
            reduced.update(lr=optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm))
            _check_collapse(reduced, model_cfg, cfg, state["update"])
            window.append(reduced)

            elapsed = time.perf_counter() - started
            state["train_seconds"] = elapsed
            done_updates = state["update"]
            samples_per_s = cfg.batch_size * (done_updates - resumed_at[0]) / max(1e-9, elapsed - resumed_at[1])
            record = {"update": done_updates, "seconds": round(elapsed, 3), "samples_per_s": samples_per_s,
                      "tokens_per_s": samples_per_s * (tokens_per_sample or 0), **reduced}
            log.step(record)
            if done_updates % cfg.log_every == 0 or done_updates == cfg.max_updates:
                mean_loss = sum(r["loss"] for r in window) / len(window)
                log.write({**record, "loss": mean_loss})
                window = []
            over_time = cfg.budget_seconds is not None and elapsed >= cfg.budget_seconds
            over_time = distributed.broadcast_flag(over_time, d.device)
            for fraction in cfg.checkpoint_fractions:
                reached = (elapsed >= fraction * cfg.budget_seconds) if cfg.budget_seconds else (done_updates >= fraction * cfg.max_updates)
                reached = distributed.broadcast_flag(reached, d.device) if cfg.budget_seconds else reached
                if reached and [fraction, budget] not in state["saved_fractions"]:
                    state["saved_fractions"].append([fraction, budget])
                    save(f"budget-{fraction:g}.pt")
            if done_updates % cfg.checkpoint_every == 0 or done_updates == cfg.max_updates or over_time:
                is_best = mean_loss < state["best_loss"]  # best: lowest logged loss, judged when last.pt is written
                state["best_loss"] = min(state["best_loss"], mean_loss)
                save("last.pt")
                if is_best:
                    save("best.pt")
            if over_time:
                stop_reason = "budget_seconds"
                break
        summary = log.finish({"stop_reason": stop_reason, "updates": state["update"], "train_seconds": state["train_seconds"],
                              "world_size": world, "device": str(d.device), "effective_batch": effective,
                              "tokens_per_sample": tokens_per_sample, "method": cfg.method, "modality": cfg.modality,
                              "preset": cfg.preset, "checkpoints": sorted(p.name for p in out.glob("*.pt")) if d.is_main else []})
        del ddp, loader
        distributed.leave_together()
        return summary
    finally:
        distributed.teardown()


# Settings a run may change and still resume (train longer, checkpoint or log more often).
RESUMABLE_CHANGES = ("max_updates", "budget_seconds", "checkpoint_every", "checkpoint_fractions", "log_every", "guard_after_updates")


def budget_spent(cfg, updates: int, train_seconds: float) -> bool:
    """Whether a run that has trained `updates` in `train_seconds` has used up the budget of `cfg` (its wall-clock
    budget, or else max_updates; under a wall-clock budget max_updates is only a cap, and the loader stops there)."""
    return train_seconds >= cfg.budget_seconds if cfg.budget_seconds else updates >= cfg.max_updates


def fractions_saved(cfg, saved: list, budget: str) -> bool:
    """Whether budget-<f>.pt of every checkpoint fraction of this budget were saved."""
    done = {fraction for fraction, b in (m for m in saved if isinstance(m, list)) if b == budget}
    return set(cfg.checkpoint_fractions) <= done


def run_identity(cfg, model_cfg, shard_dir: Path, tokenizer_path: Path | None) -> dict[str, str]:
    """What a pretraining run is a function of: last.pt resumes only a run with the same identity."""
    import hashlib

    from pipeline.io import files_digest

    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUMABLE_CHANGES}
    text = json.dumps({"pretrain": settings, "model": model_cfg.to_dict()}, sort_keys=True, default=str)
    return {"config": hashlib.sha256(text.encode()).hexdigest()[:16],
            "data": files_digest([shard_dir / "index.json", tokenizer_path])}


def clear_outputs(out: Path) -> None:
    """--fresh: remove what an earlier run left (checkpoints, metrics, events, summary) before starting."""
    import shutil

    for path in [*out.glob("*.pt"), out / "metrics.jsonl", out / "summary.json", out / "loss_curve.png", out / "config.json"]:
        path.unlink(missing_ok=True)
    shutil.rmtree(out / "tb", ignore_errors=True)


def _updates(loader, grad_accum: int):
    """Group the loader's micro-batches into updates: yields (update, [micro-batch, ...])."""
    group: list = []
    for mb in loader:
        group.append(mb)
        if len(group) == grad_accum:
            yield int(mb.pop("update")), [_strip(b) for b in group]
            group = []


def _strip(mb: dict) -> dict:
    mb.pop("update", None)
    mb.pop("ids", None)
    return mb


def _check_collapse(stats: dict[str, float], model_cfg, cfg, update: int) -> None:
    """fairseq's guard: after a warm-up, stop when target or prediction std falls under its threshold."""
    if update <= cfg.guard_after_updates:
        return
    for key, floor in (("target_var", model_cfg.min_target_var), ("pred_var", model_cfg.min_pred_var)):
        if floor > 0 and key in stats and stats[key] < floor:
            raise TrainingStopped(f"{key} {stats[key]:.4g} < {floor} at update {update}: representation collapse; "
                                  "stopped, last good checkpoint kept")
