"""Evaluation of a fine-tuned model on one split, shared by `finetune` (validation for best.pt, the final test
metrics) and the `evaluate` stage (any split, any time later, from best.pt / last.pt).

Every rank scores its share of the batches (pipeline/finetune/data.py eval_batches); the results are gathered,
so every rank holds the same metrics. Classification: class scores -> top1, top5, accuracy, macro-F1, MCC,
confusion matrix. Speech: CTC best path (greedy) -> letters -> words; WER and CER against the reference
transcripts normalized like the tokenizer's input (lower case, single spaces), with jiwer; ctc_loss over the
utterances CTC can align (ctc_infeasible counts the others, whose transcripts are longer than their frames allow).
The tokenizer must be the checkpoint's (its vocabulary digest is checked).

`python -m pipeline evaluate --modality M --checkpoint models/.../finetune/TASK/best.pt --task TASK --split test`
writes eval-<split>.json (the metrics.json schema) and confusion_matrix-<split>.png or samples-<split>.json
next to the checkpoint (or in --out).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import MODALITIES
from pipeline.data.shard_cache import LOCATION_HELP, shard_location
from pipeline.errors import UserInputError

NUM_SAMPLE_TRANSCRIPTS = 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--checkpoint", required=True, type=Path, help="a fine-tuned checkpoint (best.pt or last.pt of `finetune`)")
    p.add_argument("--task", required=True, help="the task it was fine-tuned on (fashion_mnist, synth, lexname, fortune, or yours)")
    p.add_argument("--split", default="test", help="train, valid or test (the task's splits), or any split name in the shards")
    p.add_argument("--out", type=Path, help="output folder (default: the checkpoint's folder)")
    p.add_argument("--shards", type=shard_location, help=f"shards: {LOCATION_HELP} (default: the ones the model was "
                   "fine-tuned on)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: the one the model was fine-tuned with; "
                   "another vocabulary, even of the same size or reordered, is refused: exit 2)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (default: %(default)s)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="unused; accepted like every stage")
    p.add_argument("--no-progress", action="store_true")


def _gather(values: list, world_size: int) -> list:
    if world_size == 1:
        return values
    import torch.distributed as dist

    parts: list = [None] * world_size
    dist.all_gather_object(parts, values)
    return [v for part in parts for v in part]


def predict(model, dataset, device, dtype, batch_size: int, workers: int, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Run the model over `dataset` (every rank its share), gather, order by sample.

    Classification: {"ids", "targets", "scores" (N, C)}; speech: {"ids", "references", "hypotheses", "ctc_losses"
    (each utterance's CTC negative log-likelihood of its transcript, in nats; 0 where infeasible), "ctc_feasible"
    (whether its transcript fits its frames: pipeline/finetune/metrics.py ctc_feasible)}."""
    import torch
    import torch.nn.functional as F

    from model.heads import greedy_decode
    from pipeline.finetune.data import eval_loader
    from pipeline.finetune.metrics import ctc_feasible

    modality = dataset.modality
    was_training = model.training
    model.eval()
    rows: list[tuple] = []
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for batch in eval_loader(dataset, batch_size, rank, world_size, workers):
            ids = batch.pop("ids").tolist()
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if modality == "speech":
                log_probs, lengths = model.log_probs(batch)
                losses = F.ctc_loss(log_probs.transpose(0, 1), batch["targets"], lengths, batch["target_lengths"],
                                    blank=model.blank, reduction="none", zero_infinity=True).tolist()
                feasible = ctc_feasible(batch["targets"].cpu(), batch["target_lengths"].cpu(), lengths.cpu()).tolist()
                decoded = greedy_decode(log_probs, lengths, blank=model.blank)
                for i, letters, loss, fits in zip(ids, decoded, losses, feasible):
                    rows.append((i, reference_text(dataset.tokenizer, dataset.transcript(i)),
                                 letters_to_text(dataset.tokenizer, letters), loss, fits))
            else:
                scores = model.logits(batch["image" if modality == "image" else "tokens"]).float().cpu().numpy()
                rows += [(i, int(t), s) for i, t, s in zip(ids, batch["target"].tolist(), scores)]
    model.train(was_training)
    rows = sorted(_gather(rows, world_size), key=lambda r: r[0])
    ids = [r[0] for r in rows]
    if modality == "speech":
        return {"ids": ids, "references": [r[1] for r in rows], "hypotheses": [r[2] for r in rows],
                "ctc_losses": [r[3] for r in rows], "ctc_feasible": [r[4] for r in rows]}
    return {"ids": ids, "targets": [r[1] for r in rows], "scores": np.stack([r[2] for r in rows])}


def reference_text(tokenizer, text: str) -> str:
    """The transcript as the tokenizer sees it (e.g. lower case), words separated by single spaces."""
    return " ".join(tokenizer.normalizer.normalize_str(text).replace("|", " ").split())


def letters_to_text(tokenizer, letters: list[int]) -> str:
    """Letter ids -> words: the tokenizer's decoder joins letters and turns `|` into spaces. The specials
    (<pad> <s> </s> <unk>) are dropped by id, not by the tokenizer's `special` flag, which some tokenizer files
    also set on `|`."""
    from pipeline.data.tokenizer import SPEECH_SPECIALS

    specials = {tokenizer.token_to_id(t) for t in SPEECH_SPECIALS}
    return " ".join(tokenizer.decode([i for i in letters if i not in specials], skip_special_tokens=False).split())


def score(modality: str, outputs: dict[str, Any]) -> tuple[dict[str, float], Any]:
    """(metrics, extra): the confusion matrix for classification, (reference, hypothesis) samples for speech.

    Speech: WER and CER over every utterance (from the decodings); ctc_loss, the mean NLL per utterance (it moves
    long before greedy decoding emits letters), over the utterances CTC can align only: with zero_infinity an
    infeasible one (more letters than its frames allow) scores a perfect 0. ctc_infeasible counts those; with
    none feasible there is no ctc_loss."""
    from pipeline.finetune.metrics import classification_metrics, error_rates

    if modality == "speech":
        metrics = error_rates(outputs["references"], outputs["hypotheses"])
        feasible = outputs.get("ctc_feasible") or [True] * len(outputs["ids"])
        losses = [loss for loss, fits in zip(outputs.get("ctc_losses", []), feasible) if fits]
        if outputs.get("ctc_losses"):
            metrics["ctc_infeasible"] = len(feasible) - len(losses)
        if losses:
            metrics["ctc_loss"] = float(np.mean(losses))
        samples = [{"id": i, "reference": r, "hypothesis": h, "ctc_feasible": bool(f)}
                   for i, r, h, f in zip(outputs["ids"], outputs["references"], outputs["hypotheses"], feasible)]
        return metrics, samples
    return classification_metrics(outputs["targets"], outputs["scores"])


def confusion_matrix_png(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    size = min(14.0, 3.0 + 0.22 * n)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=80)
    rows = matrix / np.maximum(1, matrix.sum(1, keepdims=True))  # recall per true class
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ticks = range(n)
    font = 8 if n <= 12 else 5
    ax.set_xticks(ticks, [c[:18] for c in classes], rotation=90, fontsize=font)
    ax.set_yticks(ticks, [c[:18] for c in classes], fontsize=font)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_results(out: Path, record: dict[str, Any], extra: Any, classes: list[str] | None, suffix: str = "") -> dict[str, str]:
    """metrics{suffix}.json-style record plus confusion_matrix{suffix}.png or samples{suffix}.json; atomic writes."""
    from pipeline.io import atomic_write_bytes, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    written = {}
    if classes is not None:
        png = out / f"confusion_matrix{suffix}.png"
        tmp = out / f".confusion_matrix{suffix}.tmp.png"
        confusion_matrix_png(extra, classes, tmp, f"{record['modality']} {record['method']} {record['task']} "
                             f"({record['split']}): {record['metric']} {record['value']:.4f}")
        atomic_write_bytes(png, tmp.read_bytes())
        tmp.unlink()
        record["metrics"]["confusion_matrix"] = extra.tolist()
        written["confusion_matrix"] = str(png)
    else:
        samples = out / f"samples{suffix}.json"
        atomic_write_json(samples, extra)
        written["samples"] = str(samples)
    return written


def result_record(cfg, task, method: str, pretrained: dict[str, Any], split: str, metrics: dict[str, float],
                  finetune_updates: int, finetune_seconds: float, world_size: int, device: str, **more: Any) -> dict[str, Any]:
    """The metrics.json schema (one record per fine-tuned model and split)."""
    return {"modality": cfg.modality, "method": method, "task": task.name, "mode": cfg.mode,
            "label_fraction": cfg.label_fraction, "metric": cfg.metric, "value": metrics[cfg.metric], "split": split,
            "metrics": metrics, "checkpoint": pretrained["path"], "pretrain_updates": pretrained["update"],
            "pretrain_seconds": pretrained["train_seconds"], "finetune_updates": finetune_updates,
            "finetune_seconds": finetune_seconds, "world_size": world_size, "device": device, **more}


def evaluate_checkpoint(args: argparse.Namespace) -> dict[str, Any]:
    """The `evaluate` stage: one process, one device."""
    import torch

    from pipeline.train import checkpoint

    from pipeline.finetune import tasks as finetune_tasks
    from pipeline.finetune import config as finetune_config
    from pipeline.finetune.data import LabeledBatches
    from pipeline.finetune.model import build_encoder, build_task_model, check_tokenizer
    from pipeline.train.optim import autocast_dtype

    torch.set_flush_denormal(True)
    ckpt = checkpoint.load(args.checkpoint)
    if "model" not in ckpt or "finetune" not in (ckpt.get("config") or {}):
        raise UserInputError(f"{args.checkpoint}: not a fine-tuned checkpoint (from `python -m pipeline finetune`)")
    conf = ckpt["config"]
    cfg = finetune_config.from_dict(conf["finetune"])
    if cfg.modality != args.modality or cfg.task != args.task:
        raise UserInputError(f"{args.checkpoint}: fine-tuned for {cfg.modality} task {cfg.task!r}, not {args.modality} {args.task!r}")
    shards = args.shards or (Path(conf["task"]["shards"]) if conf["task"]["shards"] else None)
    task = finetune_tasks.resolve(cfg.modality, cfg.task, shards)
    tokenizer = args.tokenizer or (Path(conf["tokenizer"]) if conf.get("tokenizer") else None)

    from model import config_from_dict

    model_cfg = config_from_dict(conf["model"])
    if tokenizer is not None:
        check_tokenizer(tokenizer, args.checkpoint, conf, lambda tok: _vocab_mismatch(cfg.modality, tok, tokenizer, conf, model_cfg))
    model = build_task_model(cfg, build_encoder(model_cfg), conf["num_outputs"])
    model.load_state_dict(ckpt["model"])
    device = torch.device("cuda" if (args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())) else "cpu")
    model.to(device)

    split, positions = _split_of(task, cfg, args.split)
    data = LabeledBatches(cfg, model_cfg, task.shard_dir, split, positions, tokenizer, len(task.classes or []) or None)
    if not len(data):
        raise UserInputError(f"{task.shard_dir}/index.json: split {split!r} has no samples (see `skipped` there); "
                             "nothing to evaluate")
    started = time.perf_counter()
    outputs = predict(model, data, device, autocast_dtype(cfg.precision, device), cfg.eval_batch_size, args.workers)
    metrics, extra = score(cfg.modality, outputs)
    record = result_record(cfg, task, conf["method"], conf["pretrained"], args.split, metrics, int(ckpt["update"]),
                           float(ckpt["train_seconds"]), 1, str(device), preset=conf["model"].get("preset"),
                           finetuned_checkpoint=str(args.checkpoint), eval_seconds=round(time.perf_counter() - started, 3))
    out = args.out or args.checkpoint.parent
    suffix = f"-{args.split}"
    written = write_results(out, record, extra, task.classes, suffix)
    from pipeline.io import atomic_write_json

    atomic_write_json(out / f"eval{suffix}.json", record)
    summary = {k: v for k, v in record.items() if k != "metrics"}
    summary["metrics"] = {k: v for k, v in record["metrics"].items() if k != "confusion_matrix"}
    return {**summary, "outputs": {"metrics": str(out / f"eval{suffix}.json"), **written}}


def _vocab_mismatch(modality: str, tok, tokenizer_path: Path, conf: dict[str, Any], model_cfg) -> str | None:
    """For a checkpoint without a tokenizer digest: why `tok` cannot be its tokenizer by size (CTC outputs; text:
    vocabulary size and <pad> id), or None."""
    from pipeline.finetune.model import speech_vocab_size, text_vocab_mismatch

    if modality == "speech":
        size = speech_vocab_size(tokenizer_path)
        return None if size == conf["num_outputs"] else f"{size} letters and specials, not the CTC head's {conf['num_outputs']}"
    return text_vocab_mismatch(tok, model_cfg.text)


def _split_of(task, cfg, split: str) -> tuple[str, list[int] | None]:
    """Shard split name and sample positions for a role (train/valid/test) or a raw split name."""
    from pipeline.finetune.tasks import training_pool

    if split == "train":
        return task.train, None
    if split == "valid":
        if task.valid:
            return task.valid, None
        _, carved, _ = training_pool(task, 1.0, cfg.valid_size, cfg.seed)
        return task.train, carved  # the validation subset carved from train during fine-tuning
    if split == "test":
        if task.test is None:
            raise UserInputError(f"{task.shard_dir}: task {task.name!r} has no test split; use --split valid")
        return task.test, None
    index = json.loads((task.shard_dir / "index.json").read_text(encoding="utf-8"))
    if split not in index["splits"]:
        raise UserInputError(f"{task.shard_dir}/index.json: no split {split!r}; it has {sorted(index['splits'])}")
    return split, None
