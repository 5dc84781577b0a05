"""The `throughput` stage: measure, don't assert. Loader samples/s, training-step samples/s and tokens/s, and
model FLOPs utilization (MFU) against this machine's measured matmul peak; appended to a results file.

  peak   best FLOP/s of square matmuls in the training dtype (what the hardware delivers here, not a datasheet)
  step   `Trainer.train_step` (pipeline/train/trainer.py), the step pretraining runs: forward and backward under
         autocast (a world of one: no DDP wrapper), NaN guard, clipping, optimizer, grad scaler and schedule steps, the EMA
         update; the first batch of a run (update 0), averaged after warm-up steps
  FLOPs  `Trainer.count_flops` on that same batch (model/flops.py): the corrected FlopCounterMode count
         (as the benchmark's pretraining runs count theirs), and the analytic per-component count beside it
  MFU    FLOPs per step x steps/s / peak
  loader the full input pipeline (read shards, decode, augment/crop/pack, masks) through a DataLoader
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.config import MODALITIES
from pipeline.data.shard_cache import LOCATION_HELP, shard_location


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--method", nargs="+", default=["data2vec2"], help="one or more pretraining methods (default: data2vec2)")
    p.add_argument("--benchmark-methods", action="store_true",
                   help="every method of params.yaml benchmark.<modality>.methods (instead of --method)")
    p.add_argument("--preset", help="tiny, base or large (default: params.yaml pretrain.<modality>.preset)")
    p.add_argument("--batch-size", type=int, help="samples per step (default: params.yaml pretrain.<modality>.batch_size)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), help="default: params.yaml (auto)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps (after --warmup; default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--loader-batches", type=int, default=20)
    p.add_argument("--workers", type=int, help="DataLoader workers for the loader measurement (default 1; --compare: "
                   "the training run's default)")
    p.add_argument("--shards", type=shard_location, help=f"shards: {LOCATION_HELP} (default: data/shards/<modality>)")
    p.add_argument("--tokenizer", type=Path)
    p.add_argument("--out", type=Path, help="results file (default: reports/throughput/<modality>.json, which the report "
                   "reads); a record replaces the one of the same method, preset, batch, device and precision, others are kept")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    from pipeline.benchmark.speed import add_arguments as compare_arguments

    compare_arguments(p)


def matmul_peak_flops(device, dtype, size: int, repeats: int = 5) -> float:
    """Best observed FLOP/s of a (size x size) @ (size x size) matmul."""
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device)
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One record: the loader's rate and the MFU of `Trainer.train_step` (pipeline/train/trainer.py), the step
    pretraining runs, on one real batch of `--batch-size` samples in one process (a world of one)."""
    import torch

    from pipeline import config as P
    from pipeline import paths
    from pipeline.io import git_state
    from pipeline.pretrain.stage import build_configs
    from pipeline.pretrain.trainer import Pretrainer
    from pipeline.train import distributed
    from pipeline.train.distributed import device_name
    from pipeline.train.launch import RunOptions

    args.max_updates = args.budget_seconds = args.seed = None
    cfg, model_cfg = build_configs(args, P.load(args.params))
    if args.batch_size:
        cfg.batch_size = args.batch_size
    if args.precision:
        cfg.precision = args.precision
    cfg.grad_accum = 1  # a step is the whole batch at once
    shard_dir = args.shards or paths.shards_dir(cfg.modality)
    tokenizer = args.tokenizer or paths.tokenizer_path("text")
    d = distributed.setup(args.device)
    try:
        trainer = Pretrainer(cfg, model_cfg, d, None, shard_dir, tokenizer, RunOptions(workers=args.workers, progress=False))
        workers = 1 if args.workers is None else args.workers
        loader_rate = _loader_rate(trainer, args.loader_batches, workers)
        batch = trainer.first_update()
        flops = trainer.count_flops(batch)
        flops_per_step = flops["counted"]
        for _ in range(args.warmup):
            trainer.train_step(batch)
        _sync(d.device)
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(batch)
        _sync(d.device)
        step_seconds = (time.perf_counter() - start) / args.steps
        dtype = trainer.dtype
        peak = matmul_peak_flops(d.device, dtype or torch.float32, 4096 if d.device.type == "cuda" else 1024)
        tokens_per_sample = trainer.dataset.tokens_per_sample(batch[0])
    finally:
        distributed.teardown()
    samples_per_s = cfg.batch_size / step_seconds
    return {
        "modality": cfg.modality, "method": cfg.method, "preset": cfg.preset, "batch_size": cfg.batch_size,
        "clone_batch": model_cfg.mask.clone_batch, "tokens_per_sample": tokens_per_sample,
        "device": device_name(d.device), "precision": trainer.precision,
        "step_seconds": step_seconds, "train_samples_per_s": samples_per_s, "train_tokens_per_s": samples_per_s * tokens_per_sample,
        "flops_per_step": flops_per_step, "analytic_flops_per_step": flops["analytic"], "flops_by_component": flops["components"],
        "flops_per_sample": flops_per_step / cfg.batch_size, "achieved_flops_per_s": flops_per_step / step_seconds,
        "matmul_peak_flops_per_s": peak, "mfu": flops_per_step / step_seconds / peak,
        "loader_samples_per_s": loader_rate, "loader_workers": workers,
        "torch": torch.__version__, "git_commit": git_state(), "python": sys.version.split()[0],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _loader_rate(trainer, batches: int, workers: int) -> float:
    """Samples/s of the training input pipeline alone (the trainer's dataset through its loader), after the
    first batch (worker start-up)."""
    from pipeline.train.loader import make_loader

    cfg = trainer.cfg
    loader = make_loader(trainer.dataset, cfg, 0, 1, 0, batches, workers)
    first = None
    for i, _ in enumerate(loader):
        if i == 0:
            first = time.perf_counter()
    return cfg.batch_size * (batches - 1) / (time.perf_counter() - first)


SAME_SETUP = ("modality", "method", "preset", "batch_size", "device", "precision")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline import config as P
    from pipeline import paths
    from pipeline.benchmark.report import precision_name
    from pipeline.io import atomic_write_json

    for method in args.method:
        P.check_method(args.modality, method)
    if args.compare:
        from pipeline.benchmark.speed import compare

        out = args.out or paths.throughput_path(args.modality).with_name(f"compare-{args.modality}.json")
        record = compare(argparse.Namespace(**{**vars(args), "method": args.method[0]}))
        records = json.loads(out.read_text()) if out.exists() else []
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, records + [record])
        return {"out": str(out)}
    out = args.out or paths.throughput_path(args.modality)
    methods = P.benchmark(P.load(args.params))[args.modality].methods if args.benchmark_methods else args.method
    measured = [measure(argparse.Namespace(**{**vars(args), "method": method})) for method in methods]
    records = json.loads(out.read_text()) if out.exists() else []
    records = [{**r, "precision": precision_name(r["precision"])} if r.get("precision") else r for r in records]
    keys = {tuple(r[k] for k in SAME_SETUP) for r in measured}
    records = [r for r in records if tuple(r.get(k) for k in SAME_SETUP) not in keys] + measured
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, records)
    return measured[0] if len(measured) == 1 else {"out": str(out), "records": measured}
