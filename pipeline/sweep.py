"""The time-to-accuracy sweep of one (modality, method): fine-tune every budget checkpoint of its pretraining
run (`budget-<fraction>.pt`, saved at fixed fractions of the wall-clock or update budget) with the same recipe
and label fraction, and collect one record per checkpoint in `curve.json` (the reports/metrics.json schema).
For `scratch` there is a single fine-tune from random weights at pretraining time 0.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import UserInputError

DEFAULT_TASKS = {"image": "fashion_mnist", "speech": "synth", "text": "lexname"}
BUDGET = re.compile(r"^budget-(?P<fraction>[0-9.]+)\.pt$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modality", required=True, choices=("image", "speech", "text"))
    p.add_argument("--method", required=True, help="pretraining method whose budget checkpoints to fine-tune, or scratch")
    p.add_argument("--task", help="downstream task (default: fashion_mnist / synth / lexname)")
    p.add_argument("--pretrain-dir", type=Path, help="default: models/<modality>/<method>/pretrain")
    p.add_argument("--out", type=Path, help="default: models/<modality>/<method>/sweep/<task>")
    p.add_argument("--label-fraction", type=float, help="default: params.yaml finetune.<modality>")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--workers", type=int)
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--no-progress", action="store_true")


def budget_checkpoints(pretrain_dir: Path) -> list[tuple[float, Path]]:
    found = sorted((float(m["fraction"]), p) for p in pretrain_dir.glob("budget-*.pt") if (m := BUDGET.match(p.name)))
    if not found:
        raise UserInputError(f"{pretrain_dir}: no budget-<fraction>.pt checkpoints; run `python -m pipeline pretrain` first")
    return found


def record(metrics: dict[str, Any], modality: str, method: str, preset: str, batch_size: int | None) -> dict[str, Any]:
    """A reports/metrics.json record from a fine-tuning run's metrics.json (git commit and DVC stage hash are
    filled in by the report stage, which knows dvc.lock)."""
    updates = int(metrics.get("pretrain_updates") or 0)
    return {
        "modality": modality, "method": method, "preset": preset,
        "pretrain_seconds": float(metrics.get("pretrain_seconds") or 0.0), "pretrain_updates": updates,
        "pretrain_samples": updates * (batch_size or 0), "device": metrics.get("device"),
        "world_size": metrics.get("world_size"), "task": metrics["task"], "metric": metrics["metric"],
        "value": metrics["value"], "split": metrics.get("split"), "checkpoint": metrics.get("checkpoint"),
        "label_fraction": metrics.get("label_fraction"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline import params as P
    from pipeline.checkpoint import load
    from pipeline.shard_writer import atomic_write_json

    task = args.task or DEFAULT_TASKS[args.modality]
    out = args.out or Path("models") / args.modality / args.method / "sweep" / task
    params = P.load(args.params)
    if args.method == "scratch":
        points: list[tuple[float, str]] = [(0.0, "none")]
        preset = (params.get("pretrain", {}).get(args.modality) or {}).get("preset", "tiny")
        batch_size = None
    else:
        pretrain_dir = args.pretrain_dir or Path("models") / args.modality / args.method / "pretrain"
        points = [(f, str(p)) for f, p in budget_checkpoints(pretrain_dir)]
        config = load(Path(points[0][1]))["config"]["pretrain"]
        preset, batch_size = config["preset"], config["batch_size"]
    records = []
    for fraction, checkpoint in points:
        run_dir = out / ("scratch" if checkpoint == "none" else f"budget-{fraction:g}")
        cmd = [sys.executable, "-m", "pipeline", "finetune", "--modality", args.modality, "--checkpoint", checkpoint,
               "--task", task, "--out", str(run_dir), "--nproc", str(args.nproc), "--device", args.device,
               "--params", str(args.params), "--fresh"]
        cmd += ["--workers", str(args.workers)] if args.workers is not None else []
        cmd += ["--label-fraction", str(args.label_fraction)] if args.label_fraction is not None else []
        cmd += ["--no-progress"] if args.no_progress else []
        print(f"sweep {args.modality}/{args.method}: fine-tuning {checkpoint}", file=sys.stderr, flush=True)
        result = subprocess.run(cmd)
        if result.returncode != 0:
            raise UserInputError(f"fine-tuning {checkpoint} failed (exit {result.returncode}); see the log above")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        records.append(record(metrics, args.modality, args.method, preset, batch_size))
    atomic_write_json(out / "curve.json", records)
    return {"curve": str(out / "curve.json"), "points": [(r["pretrain_seconds"], r["value"]) for r in records],
            "metric": records[-1]["metric"]}
