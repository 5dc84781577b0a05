"""The `pretrain` stage: data2vec 2.0 (and baselines built on the same model code), DDP in a world of one or
under torchrun.

`python -m pipeline pretrain ...` trains in this process (a world of one) with --nproc 1, and otherwise re-executes
itself under torchrun (pipeline/train/launch.py); every worker builds the configs and trains with the shared
engine (pipeline/train/trainer.py) and the pretraining hooks (pipeline/pretrain/trainer.py: EMA teacher, budget
checkpoints, collapse guard).

Outputs in `--out` (default models/<modality>/<method>/pretrain/): config.json (resolved config), last.pt,
best.pt, budget-<fraction>.pt, metrics.jsonl, tb/ (TensorBoard), loss_curve.png, summary.json.

With --benchmark, every run of the benchmark's current scale (pipeline/config.py benchmark_runs: per seed, one
complete run per update budget, each with its own warm-up and cosine decay, as each point of the paper's
speed/accuracy figures is a separately trained model) trains in turn into `--out`/s<seed>-u<updates>/, and
`--out`/runs.json lists them with their cost: training-loop seconds and FLOPs. Run folders of another scale
(s<seed>-u<updates>/ not among the current runs: an earlier scale's, which DVC keeps between runs of the stage, since
its output persists, and would hash into it) are deleted first; everything else in `--out` stays.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from pipeline.config import MODALITIES, PRETRAIN_METHODS
from pipeline.data.shard_cache import LOCATION_HELP, shard_location
from pipeline.errors import UserInputError
from pipeline.train.launch import add_run_arguments


def default_out(modality: str, method: str) -> Path:
    return Path("models") / modality / method / "pretrain"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--method", default="data2vec2", choices=list(dict.fromkeys(sum(PRETRAIN_METHODS.values(), ()))),
                   metavar="METHOD", help="data2vec2 (default), data2vec1, or the baseline of the modality: mae "
                   "(image), wav2vec2 (speech), mlm (text); another modality's baseline is an error (exit 2)")
    p.add_argument("--preset", help="tiny, base or large (default: params.yaml pretrain.<modality>.preset)")
    p.add_argument("--out", type=Path, help="output folder (default: models/<modality>/<method>/pretrain)")
    p.add_argument("--shards", type=shard_location, help=f"shards: {LOCATION_HELP} (default: data/shards/<modality>)")
    p.add_argument("--tokenizer", type=Path, help="text tokenizer.json (default: data/tokenizers/text/tokenizer.json)")
    p.add_argument("--max-updates", type=int, help="update budget (overrides params.yaml)")
    p.add_argument("--budget-seconds", type=float, help="wall-clock budget of the training loop (overrides params.yaml)")
    p.add_argument("--seed", type=int, help="seed of the run (overrides params.yaml seed)")
    p.add_argument("--init", type=Path, help="continue pretraining from this checkpoint's model config and weights "
                   "(student and EMA teacher; e.g. import-fairseq's imported.pt); the optimizer and schedule start fresh")
    p.add_argument("--benchmark", action="store_true",
                   help="train every run of params.yaml benchmark.scales.<benchmark.scale> (each seed x update budget a "
                   "complete run, in <out>/s<seed>-u<updates>/) and write <out>/runs.json")
    add_run_arguments(p)


def preflight(args: argparse.Namespace) -> None:
    """Checks that need no torch, run before training starts (before torchrun with --nproc > 1), so a wrong
    --method for the modality or a wrong params file is one message (exit 2) instead of a failed worker."""
    from pipeline import config as P

    P.check_method(args.modality, args.method)
    P.load(args.params)


def build_configs(args: argparse.Namespace, params: dict[str, Any], run: dict[str, Any] | None = None):
    """The pretraining config (params.yaml, the command line, then `run`: a benchmark run's settings) and the model
    config of its preset and method; a text model takes the trained tokenizer's vocabulary (--tokenizer). Raises
    UserInputError for an unknown preset."""
    from model.presets import get_config
    from pipeline import paths
    from pipeline import config as P
    from pipeline.pretrain import config as train_config

    P.check_method(args.modality, args.method)  # also under a torchrun the user started (no preflight)
    flags = (("max_updates", args.max_updates), ("budget_seconds", args.budget_seconds), ("seed", getattr(args, "seed", None)),
             ("preset", args.preset))
    overrides = {k: v for k, v in flags if v is not None} | (run or {})
    cfg = train_config.build(args.modality, args.method, params, overrides)
    try:
        model_cfg = get_config(args.modality, cfg.preset, args.method)
    except ValueError as e:
        raise UserInputError(str(e)) from None
    if getattr(args, "init", None) is not None:
        from pipeline.weights.load import init_config

        model_cfg = init_config(args.init, args.modality, args.method, args.tokenizer or paths.tokenizer_path("text"))
    model_cfg.seed = cfg.seed
    if cfg.modality == "text" and getattr(args, "init", None) is None:
        text_vocab(model_cfg, args.tokenizer or paths.tokenizer_path("text"))
    return cfg, model_cfg


def text_vocab(model_cfg, tokenizer_path: Path) -> None:
    """The text model's vocabulary is the trained tokenizer's (size and special ids)."""
    from pipeline.data.tokenizer import load

    tok = load(tokenizer_path)
    model_cfg.text.vocab_size = tok.get_vocab_size()
    model_cfg.text.pad_idx = tok.token_to_id("<pad>")
    model_cfg.text.mask_idx = tok.token_to_id("<mask>")


def train(args: argparse.Namespace) -> dict[str, Any]:
    """The worker: runs on every rank under torchrun. Returns the run's summary."""
    from pipeline import config as P
    from pipeline import paths
    from pipeline.pretrain.trainer import Pretrainer
    from pipeline.train import distributed
    from pipeline.train.launch import RunOptions

    params = P.load(args.params)
    runs = benchmark_runs(args, params) if args.benchmark else None
    d = distributed.setup(args.device)
    try:
        if runs is not None:
            return train_benchmark(args, params, runs, d)
        cfg, model_cfg = build_configs(args, params)
        out = args.out or default_out(cfg.modality, cfg.method)
        shard_dir = args.shards or paths.shards_dir(cfg.modality)
        tokenizer_path = args.tokenizer or paths.tokenizer_path("text")
        trainer = Pretrainer(cfg, model_cfg, d, out, shard_dir, tokenizer_path, RunOptions.from_args(args))
        trainer.init = args.init  # continued pretraining: the run starts from these weights
        return trainer.fit()
    finally:
        distributed.teardown()


# the folder of one benchmark run under --out (pipeline/config.py benchmark_runs names them)
RUN_FOLDER = re.compile(r"s\d+-u\d+")


def remove_stale_runs(base: Path, runs) -> list[Path]:
    """Delete the run folders in `base` (RUN_FOLDER names) that are not among `runs`: an earlier scale's (the
    demo's s0-u12 beside the cpu scale's s0-u480). The current runs' folders (their last.pt: resume) and every
    other file stay. Returns the deleted folders, sorted."""
    current = {run.name for run in runs}
    stale = sorted(p for p in base.iterdir() if p.is_dir() and RUN_FOLDER.fullmatch(p.name)
                   and p.name not in current) if base.is_dir() else []
    for folder in stale:
        shutil.rmtree(folder)
    return stale


# what a benchmark run overrides besides its seed and budget: the update budget is the only budget, and each
# run is a point of its own (no budget-<f>.pt inside it)
BENCHMARK_RUN = {"budget_seconds": None, "checkpoint_fractions": ()}


def benchmark_runs(args: argparse.Namespace, params: dict[str, Any]):
    """The runs --benchmark trains (pipeline/config.py benchmark_runs). Raises UserInputError for a flag that would
    change them (their seeds and budgets live in params.yaml) or a scale without this method's budget."""
    from pipeline import config as P

    given = [flag for flag, value in (("--max-updates", args.max_updates), ("--budget-seconds", args.budget_seconds),
                                      ("--seed", args.seed)) if value is not None]
    if given:
        raise UserInputError(f"{' and '.join(given)}: --benchmark trains the seeds and update budgets of "
                             f"{P.source(params)} benchmark.scales.<benchmark.scale>; change them there (or leave out "
                             "--benchmark)")
    return P.benchmark_runs(params, args.modality, args.method)


def train_benchmark(args: argparse.Namespace, params: dict[str, Any], runs, d) -> dict[str, Any]:
    """Train `runs` (pipeline/config.py Run) one after the other in this process group, each a complete run of
    its own in out/<run.name>/ (a finished run resumes to nothing: it is not trained again), counting each seed's
    FLOPs per update once, on a trainer that is then thrown away (the runs' RNG streams and data order stay
    untouched). Rank 0 first deletes the run folders of another scale (`remove_stale_runs`, logged) and at the end
    writes out/runs.json. Returns {"runs_json": path, "runs": the records}."""
    from pipeline import paths
    from pipeline.io import atomic_write_json
    from pipeline.pretrain.trainer import Pretrainer
    from pipeline.train.launch import RunOptions
    from pipeline.train.pipes import PipesReport

    base = args.out or default_out(args.modality, args.method)
    shard_dir = args.shards or paths.shards_dir(args.modality)
    tokenizer_path = args.tokenizer or paths.tokenizer_path("text")
    options = RunOptions.from_args(args)
    # FLOPs per update, per seed: the first batch (update 0) is a function of the seed. Image and text batches have
    # one shape, so this is every update's count; a speech batch is cropped to its shortest utterance (at most
    # crop_samples), so its length varies from update to update: this is the first batch's, not an average
    flops: dict[int, int] = {}
    records = []
    with PipesReport.holding():  # under Dagster the runs log to the asset; the stage reports it once, below
        stale = remove_stale_runs(base, runs) if d.is_main else []
        if stale:
            message = (f"pretrain --benchmark: deleted {len(stale)} run folder(s) of another scale from {base}: "
                       f"{', '.join(p.name for p in stale)} (this scale's runs: {', '.join(r.name for r in runs)})")
            print(message, file=sys.stderr)
            PipesReport().log(message)
        for run in runs:
            cfg, model_cfg = build_configs(args, params, {**BENCHMARK_RUN, "seed": run.seed, "max_updates": run.updates})
            if run.seed not in flops:
                counter = Pretrainer(cfg, model_cfg, d, None, shard_dir, tokenizer_path, options)
                flops[run.seed] = counter.step_flops(counter.first_update())
                del counter
            trainer = Pretrainer(cfg, model_cfg, d, base / run.name, shard_dir, tokenizer_path, options)
            trainer.flops_per_update = flops[run.seed]
            records.append(run_record(run, base / run.name, trainer.fit()))
    if d.is_main:
        atomic_write_json(base / "runs.json", records)
        PipesReport().materialize({"runs": len(records), "train_seconds": sum(r["train_seconds"] for r in records),
                                   "pretrain_flops": sum(r["pretrain_flops"] for r in records), "path": base})
    return {"runs_json": str(base / "runs.json"), "runs": records}


def run_record(run, out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """One entry of runs.json: the run, where its last.pt is, its cost, and the precision it trained in (bf16 or
    fp32, what `precision: auto` chose on this device)."""
    from pipeline.train.distributed import device_name

    effective = summary["effective_batch"]
    return {"seed": run.seed, "updates": summary["updates"], "name": run.name, "path": str(out / "last.pt"),
            "modality": summary["modality"], "method": summary["method"], "preset": summary["preset"],
            "train_seconds": summary["train_seconds"], "flops_per_update": summary["flops_per_update"],
            "pretrain_flops": summary["pretrain_flops"], "samples": summary["updates"] * effective["samples_per_update"],
            "device": device_name(summary["device"]), "precision": summary["precision"], "world_size": summary["world_size"],
            "effective_batch": effective}
