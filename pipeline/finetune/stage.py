"""The `finetune` stage: a pretrained encoder (or a fresh one: `--checkpoint none`, the `scratch` baseline) plus
a task head, trained on labeled shards with DDP (a world of one, or under torchrun), then evaluated on the task's
test split.

The engine is pretraining's (pipeline/train/trainer.py) with the fine-tuning hooks (pipeline/finetune/trainer.py):
`python -m pipeline finetune ...` trains in this process with --nproc 1 (the default), and with --nproc N outside
torchrun runs itself under torchrun (pipeline/train/launch.py: a worker's exit status 2 or 3 and its message come
back through it);
global batches are a pure function of (seed, update), so 1 and N processes train on the same samples; last.pt
resumes exactly; a NaN/Inf loss stops the run (exit 3) keeping the last good checkpoint; rank 0 shows progress
and writes metrics.jsonl, TensorBoard events and, under Dagster Pipes, reports the summary (pipeline/train/pipes.py).

Outputs in `--out` (default models/<modality>/<method>/finetune/<task>[-linear_probe][-f<fraction>]/):
config.json, last.pt, best.pt (best validation score), metrics.jsonl, tb/, loss_curve.png, summary.json,
metrics.json (test metrics of best.pt; schema in pipeline/finetune/evaluate.py `result_record`) and
confusion_matrix.png (classification) or samples.json (speech: reference vs hypothesis).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pipeline.config import MODALITIES
from pipeline.data.shard_cache import LOCATION_HELP, shard_location
from pipeline.errors import UserInputError
from pipeline.train.launch import add_run_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--shards", type=shard_location, help=f"shards of your own labeled data: {LOCATION_HELP} (default: data/shards/<modality>); "
                   "splits train, valid (optional: else params.yaml valid_size samples are carved from train) and test "
                   "(optional: else the final metrics are on valid). A split `shard` left without samples counts as "
                   "absent (the log says so); an empty train split is an error (exit 2)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: data/tokenizers/<modality>/tokenizer.json); "
                   "for a text checkpoint, the one it was pretrained with: checkpoints store a digest of the "
                   "vocabulary, and another one (even of the same size) is refused (exit 2)")
    p.add_argument("--max-updates", type=int, help="update budget (overrides params.yaml)")
    p.add_argument("--seed", type=int, help="seed of the run: head and scratch initialisation, batches, carved "
                   "validation set (overrides params.yaml seed; the benchmark passes the pretraining run's)")
    add_run_arguments(p)


def checkpoint_arg(value: str) -> Path | None:
    return None if value.lower() == "none" else Path(value)


def run_name(task: str, mode: str, fraction: float) -> str:
    return task + (f"-{mode}" if mode != "finetune" else "") + (f"-f{fraction:g}" if fraction < 1 else "")


def default_out(modality: str, method: str, task: str, mode: str, fraction: float) -> Path:
    return Path("models") / modality / method / "finetune" / run_name(task, mode, fraction)


def build_config(args: argparse.Namespace, params: dict[str, Any]):
    """The fine-tuning config: the recipe, params.yaml, then --label-fraction, --max-updates and --seed."""
    from pipeline.finetune import config as finetune_config

    overrides = {k: v for k, v in (("label_fraction", args.label_fraction), ("max_updates", args.max_updates),
                                   ("seed", args.seed)) if v is not None}
    return finetune_config.build(args.modality, args.task, args.mode, params, overrides)


def preflight(args: argparse.Namespace) -> None:
    """Checks that need no torch, run before training (and torchrun) starts, so a wrong path or task is one message
    (exit 2) instead of a failed worker."""
    from pipeline import config as P
    from pipeline import paths
    from pipeline.finetune import tasks as finetune_tasks

    build_config(args, P.load(args.params))
    finetune_tasks.resolve(args.modality, args.task, args.shards)
    ckpt = checkpoint_arg(args.checkpoint)
    if ckpt is not None and not ckpt.exists():
        raise UserInputError(f"{ckpt}: checkpoint not found; pretrain first (`python -m pipeline pretrain --modality "
                             f"{args.modality}`) or pass `--checkpoint none` to fine-tune from scratch")
    if args.modality != "image":
        tokenizer = args.tokenizer or paths.tokenizer_path(args.modality)
        if not tokenizer.exists():
            raise UserInputError(f"{tokenizer}: tokenizer not found; run `python -m pipeline tokenizer --modality {args.modality}`")


def train(args: argparse.Namespace) -> dict[str, Any]:
    """The worker: runs on every rank under torchrun. Returns the run's summary."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from pipeline import config as P
    from pipeline import paths
    from pipeline.finetune import tasks as finetune_tasks
    from pipeline.finetune.model import load_pretrained
    from pipeline.finetune.trainer import Finetuner
    from pipeline.train import distributed
    from pipeline.train.launch import RunOptions

    d = distributed.setup(args.device)
    try:
        modality = args.modality
        cfg = build_config(args, P.load(args.params))
        task = finetune_tasks.resolve(modality, args.task, args.shards)
        tokenizer_path = (args.tokenizer or paths.tokenizer_path(modality)) if modality != "image" else None
        pretrained = load_pretrained(checkpoint_arg(args.checkpoint))
        method = pretrained["method"] if pretrained else "scratch"
        out = args.out or default_out(modality, method, task.name, cfg.mode, cfg.label_fraction)
        trainer = Finetuner(cfg, task, pretrained, method, tokenizer_path, args.shards, d, out, RunOptions.from_args(args))
        del pretrained  # the trainer let go of it once the weights were in the model
        return trainer.fit()
    finally:
        distributed.teardown()
