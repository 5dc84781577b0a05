"""`python -m pipeline throughput --compare`: where the time of a training step goes, measured side by side.

For one modality, per precision (fp32, bf16) on the same batches (updates 1..N of the run, read once):
  bare     the model alone: forward under autocast, backward, AdamW step, EMA step; what a minimal script runs
  step     `Trainer.train_step` (pipeline/train/trainer.py): the same plus stats, NaN guard, clipping and
           the schedule
  loop     `Trainer.train_loop` over a DataLoader with the run's workers on the same updates: the step plus waiting
           for batches and the loop's own work (from the end of update 0, after the workers have started)
  compiled `step` with the model compiled (params.yaml pretrain.<m>.compile), with --compile
and the attention of the model's shapes (student: B*M clones' visible tokens; teacher: B full sequences), forward
and backward, through PyTorch's SDPA and the explicit fairseq kernel in fp32 and bf16 (model/transformer.py).

Every measurement is repeated `--repeats` times, interleaved (each repetition times every kind and precision in
turn), so a load change on a shared machine hits all of them alike; ratios are taken within a repetition, then
the median [min-max] over repetitions is reported. On a machine shared with other jobs, wall seconds follow
their load; `--clock cpu --threads 1` counts this process's CPU seconds instead, which measure the work of a
step whatever else runs (the loop's data loading then runs in worker processes, outside the count). Speed is
measured here, never asserted in tests.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

KINDS = ("bare", "step", "loop")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compare", action="store_true",
                   help="compare the bare model step, Trainer.train_step and the training loop, fp32 and bf16, "
                   "side by side (prints a table; writes --out, default reports/throughput/compare-<modality>.json)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16", "fp16"))
    p.add_argument("--repeats", type=int, default=5, help="interleaved repetitions (--compare; default: %(default)s)")
    p.add_argument("--width", type=int, help="--compare: encoder width instead of the preset's (heads: width / 64)")
    p.add_argument("--depth", type=int, help="--compare: main transformer blocks instead of the preset's")
    p.add_argument("--compile", action="store_true", help="--compare: also time the compiled step")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="--compare: wall seconds, or this process's CPU seconds (steady on a shared machine; use it "
                   "with --threads 1)")
    p.add_argument("--threads", type=int, help="--compare: torch threads (default: torch's)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="--compare: what to time (default: all)")


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_step(trainer, batch: dict, update: int) -> None:
    """The model's own step: forward (autocast), backward, AdamW, EMA; no DDP, stats, guards or clipping."""
    import torch

    with torch.autocast(trainer.device.type, dtype=trainer.dtype or torch.float32, enabled=trainer.dtype is not None):
        loss, _ = trainer.model(batch)
    loss.backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.model.ema_step(update)


def clock(kind: str):
    """wall: time.perf_counter; cpu: this process's CPU time (time.process_time), which other jobs on a shared
    machine barely change: with one torch thread it is the work the step does."""
    return time.process_time if kind == "cpu" else time.perf_counter


def time_steps(trainer, batches: list[dict], kind: str, seconds=time.perf_counter) -> float:
    """Samples per second of `seconds` (a clock) of `kind` ("bare" or "step") over `batches` (one micro-batch each)."""
    _sync(trainer.device)
    start = seconds()
    for update, batch in enumerate(batches, 1):
        if kind == "bare":
            bare_step(trainer, batch, update)
        else:
            trainer.train_step([batch])
    _sync(trainer.device)
    return trainer.cfg.batch_size * len(batches) / (seconds() - start)


def time_loop(trainer, num_updates: int, workers: int, scratch: Path, seconds=time.perf_counter) -> float:
    """Samples per second of `seconds` (a clock) of `Trainer.train_loop` from the end of update 0 to the end of the
    last: update 0 starts the loader's workers (a fork, whose copy-on-write faults the next writes pay), which a
    run does once. Logs once at the end; the workers' decoding is in other processes (outside a CPU clock)."""
    from pipeline.train.loader import make_loader
    from pipeline.train.log import TrainLog

    trainer.state.update(update=0, train_seconds=0.0)
    out = Path(tempfile.mkdtemp(dir=scratch))
    trainer.log = TrainLog(out, True, progress=False, total=num_updates, initial=0, desc="loop", title="loop")
    ends: list[float] = []
    step = trainer.train_step

    def timed_step(micro_batches):
        stats = step(micro_batches)
        _sync(trainer.device)
        ends.append(seconds())
        return stats

    trainer.train_step = timed_step
    try:
        trainer.train_loop(make_loader(trainer.dataset, trainer.cfg, 0, 1, 0, num_updates, workers))
    finally:
        del trainer.train_step  # the class's method again
    trainer.log.finish({})
    return trainer.cfg.batch_size * (num_updates - 1) / (ends[-1] - ends[0])


def attention_times(shapes: dict[str, tuple], bias: bool, calls: int = 5, seconds=time.perf_counter) -> dict[str, float]:
    """Milliseconds (of the clock `seconds`) of `calls` forward+backward attention calls per (shape, kernel,
    dtype), one thread."""
    import torch
    import torch.nn.functional as F

    from model.transformer import explicit_attention

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = {}
    try:
        for name, (B, H, T, d) in shapes.items():
            mask = -torch.rand(1, H, T, T) if bias else None
            for dtype in (torch.float32, torch.bfloat16):
                q, k, v = (torch.randn(B, H, T, d, dtype=dtype, requires_grad=True) for _ in range(3))
                for kernel, fn in (("sdpa", F.scaled_dot_product_attention), ("explicit", explicit_attention)):
                    m = None if mask is None else (mask.to(dtype) if kernel == "sdpa" else mask)
                    start = seconds()
                    for _ in range(calls):
                        fn(q, k, v, m).sum().backward()
                    times[f"{name} {kernel} {str(dtype)[6:]}"] = 1000 * (seconds() - start)
    finally:
        torch.set_num_threads(threads)
    return times


def attention_shapes(trainer, batch: dict) -> dict[str, tuple]:
    """(B, H, T, d) of the student's attention (clones, visible tokens + CLS) and the teacher's (full sequences)."""
    from model.masking import num_masked

    m = trainer.model_cfg
    key = {"image": "image", "speech": "audio", "text": "tokens"}[m.modality]
    B, T = batch[key].shape[0], trainer.dataset.tokens_per_sample(batch)
    H, d = m.encoder.num_heads, m.embed_dim // m.encoder.num_heads
    extra = m.num_extra_tokens
    keep = T - num_masked(m.mask, T)
    return {"student": (B * m.mask.clone_batch, H, extra + keep, d), "teacher": (B, H, extra + T, d)}


def build_trainers(args: argparse.Namespace, d) -> dict[str, Any]:
    """One Pretrainer per (precision, compiled) on the same config and data, each its own weights and optimizer."""
    import dataclasses

    from pipeline import config as P
    from pipeline import paths
    from pipeline.pretrain.stage import build_configs
    from pipeline.pretrain.trainer import Pretrainer
    from pipeline.train.launch import RunOptions

    args.max_updates = args.budget_seconds = args.seed = None
    cfg, model_cfg = build_configs(args, P.load(args.params))
    enc = model_cfg.encoder
    width, depth = args.width or enc.embed_dim, args.depth or enc.depth
    model_cfg.encoder = dataclasses.replace(enc, embed_dim=width, depth=depth,
                                            num_heads=enc.num_heads if width == enc.embed_dim else width // 64)
    # no checkpoints, budget files, schedule end or log lines inside the measurement
    cfg = dataclasses.replace(cfg, batch_size=args.batch_size or cfg.batch_size, grad_accum=1, max_updates=10**9,
                              checkpoint_every=10**9, checkpoint_fractions=(), log_every=10**9, budget_seconds=None)
    shard_dir, tokenizer = args.shards or paths.shards_dir(cfg.modality), args.tokenizer or paths.tokenizer_path("text")
    variants = [(p, False) for p in args.precisions] + ([(p, True) for p in args.precisions] if args.compile else [])
    return {f"{p}{' compiled' if c else ''}": Pretrainer(dataclasses.replace(cfg, precision=p, compile=c), model_cfg, d,
                                                          None, shard_dir, tokenizer, RunOptions(progress=False))
            for p, c in variants}


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Measure as the module docstring says; returns the record (and prints its table)."""
    import torch

    from pipeline.io import git_state
    from pipeline.train import distributed
    from pipeline.train.distributed import device_name
    from pipeline.train.loader import default_workers, make_loader, updates

    if args.threads:
        torch.set_num_threads(args.threads)
    d = distributed.setup(args.device)
    scratch = Path(tempfile.mkdtemp(prefix="throughput-compare-"))
    try:
        trainers = build_trainers(args, d)
        first = next(iter(trainers.values()))
        n = args.steps + 1
        loader = make_loader(first.dataset, first.cfg, 0, 1, 0, n, workers=0)
        batches = [{k: v.to(d.device) for k, v in mbs[0].items()} for _, mbs in updates(loader, 1)][1:]
        workers = args.workers if args.workers is not None else default_workers(1)
        compile_seconds = {}
        for name, trainer in trainers.items():  # warm-up: caches, allocator, compilation
            start = time.perf_counter()
            time_steps(trainer, batches[:2], "step")
            compile_seconds[name] = time.perf_counter() - start
            if "bare" in args.kinds:
                time_steps(trainer, batches[:2], "bare")
        rates: dict[str, list[float]] = {}
        attention: dict[str, list[float]] = {}
        shapes = attention_shapes(first, batches[0])
        for _ in range(args.repeats):
            for name, trainer in trainers.items():
                kinds = ("step",) if name.endswith("compiled") else args.kinds
                for kind in kinds:
                    rate = (time_loop(trainer, n, workers, scratch, clock(args.clock)) if kind == "loop"
                            else time_steps(trainer, batches, kind, clock(args.clock)))
                    rates.setdefault(f"{name} {kind}", []).append(rate)
            for key, ms in attention_times(shapes, first.cfg.modality == "speech", seconds=clock(args.clock)).items():
                attention.setdefault(key, []).append(ms)
        device = device_name(d.device)
    finally:
        distributed.teardown()
    record = {"modality": first.cfg.modality, "method": first.cfg.method, "preset": first.cfg.preset,
              "width": first.model_cfg.embed_dim, "depth": first.model_cfg.encoder.depth, "batch_size": first.cfg.batch_size,
              "updates_per_repeat": args.steps, "repeats": args.repeats, "clock": args.clock, "loader_workers": workers, "device": device,
              "samples_per_s": {k: _summary(v) for k, v in rates.items()}, "ratios": ratios(rates, args.precisions),
              "attention_shapes": {k: list(v) for k, v in shapes.items()},
              "attention_ms": {k: _summary(v) for k, v in attention.items()},
              "first_two_steps_seconds": compile_seconds, "torch": torch.__version__, "git_commit": git_state(),
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(markdown(record))
    return record


def ratios(rates: dict[str, list[float]], precisions: list[str]) -> dict[str, dict[str, float]]:
    """Same-repetition ratios, median [min-max]: step/bare and loop/bare per precision, compiled/eager step,
    and each precision over the first (bf16/fp32) per kind."""
    pairs = {}
    for p in precisions:
        pairs[f"{p} step/bare"] = (f"{p} step", f"{p} bare")
        pairs[f"{p} loop/bare"] = (f"{p} loop", f"{p} bare")
        pairs[f"{p} compiled/eager step"] = (f"{p} compiled step", f"{p} step")
        if p != precisions[0]:
            for kind in KINDS:
                pairs[f"{p}/{precisions[0]} {kind}"] = (f"{p} {kind}", f"{precisions[0]} {kind}")
    return {name: _summary([a / b for a, b in zip(rates[num], rates[den])])
            for name, (num, den) in pairs.items() if num in rates and den in rates}


def markdown(record: dict[str, Any]) -> str:
    """The record as markdown tables: samples/s, ratios, attention milliseconds (median [min-max])."""
    def cell(s: dict[str, float], digits: int) -> str:
        return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"

    per = "CPU-second of the training process" if record["clock"] == "cpu" else "second"
    lines = [f"### {record['modality']} {record['method']}, {record['preset']} preset at width {record['width']}, depth "
             f"{record['depth']}; batch {record['batch_size']}; {record['device']}; {record['repeats']} x "
             f"{record['updates_per_repeat']} updates; samples and ms per {per}", "",
             "| measured | median [min-max] |", "|---|---|"]
    lines += [f"| {k} samples/s | {cell(v, 1)} |" for k, v in record["samples_per_s"].items()]
    lines += [f"| {k} | {cell(v, 2)} |" for k, v in record["ratios"].items()]
    lines += [f"| attention {k} ms (5 x fwd+bwd, 1 thread) | {cell(v, 1)} |" for k, v in record["attention_ms"].items()]
    lines += [f"| first two steps of {k}, s | {v:.1f} |" for k, v in record["first_two_steps_seconds"].items()]
    return "\n".join(lines) + "\n"
