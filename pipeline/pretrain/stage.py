"""The `pretrain` stage: data2vec 2.0 (and baselines built on the same model code) under torchrun + DDP.

`python -m pipeline pretrain ...` outside torchrun re-executes itself under torchrun (pipeline/train/launch.py);
inside torchrun (LOCAL_RANK set) every worker builds the configs and trains with the shared engine
(pipeline/train/trainer.py) and the pretraining hooks (pipeline/pretrain/trainer.py: EMA teacher, budget
checkpoints, collapse guard).

Outputs in `--out` (default models/<modality>/<method>/pretrain/): config.json (resolved config), last.pt,
best.pt, budget-<fraction>.pt, metrics.jsonl, tb/ (TensorBoard), loss_curve.png, summary.json.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.config import MODALITIES
from pipeline.errors import UserInputError
from pipeline.train.launch import add_run_arguments


def default_out(modality: str, method: str) -> Path:
    return Path("models") / modality / method / "pretrain"


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


def build_configs(args: argparse.Namespace, params: dict[str, Any]):
    """The pretraining config (params.yaml + the command line) and the model config of its preset and method; a
    text model takes the trained tokenizer's vocabulary (--tokenizer). Raises UserInputError for an unknown preset."""
    from model.presets import get_config
    from pipeline import paths
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
    if cfg.modality == "text":
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

    d = distributed.setup(args.device)
    try:
        cfg, model_cfg = build_configs(args, P.load(args.params))
        out = args.out or default_out(cfg.modality, cfg.method)
        shard_dir = args.shards or paths.shards_dir(cfg.modality)
        tokenizer_path = args.tokenizer or paths.tokenizer_path("text")
        return Pretrainer(cfg, model_cfg, d, out, shard_dir, tokenizer_path, RunOptions.from_args(args)).fit()
    finally:
        distributed.teardown()
