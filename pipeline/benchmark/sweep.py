"""The time-to-accuracy sweep of one (modality, method): fine-tune every budget checkpoint of its pretraining
run (`budget-<fraction>.pt`, saved at fixed fractions of the wall-clock or update budget) with the same recipe
and label fraction, and collect one record per checkpoint (and metric) in `curve.json` (the reports/metrics.json schema).
For `scratch` there is a single fine-tune from random weights at pretraining time 0.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.config import MODALITIES
from pipeline.errors import UserInputError
from pipeline.train.pipes import PipesReport, without_pipes

# A second curve where the task metric cannot move at a small budget: greedy CTC decoding emits nothing (WER 1.0)
# for hundreds of updates, while the test CTC loss already orders the encoders.
SECONDARY_METRICS = {"speech": "ctc_loss"}
BUDGET = re.compile(r"^budget-(?P<fraction>[0-9.]+)\.pt$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--method", required=True, help="pretraining method whose budget checkpoints to fine-tune, or scratch")
    p.add_argument("--task", help="downstream task (default: params.yaml benchmark.<modality>.task)")
    p.add_argument("--pretrain-dir", type=Path, help="default: models/<modality>/<method>/pretrain")
    p.add_argument("--out", type=Path, help="default: models/<modality>/<method>/sweep/<task>")
    p.add_argument("--label-fraction", type=float, help="default: params.yaml finetune.<modality>")
    p.add_argument("--max-updates", type=int, help="fine-tuning updates per checkpoint (default: params.yaml finetune.<modality>)")
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


def record(metrics: dict[str, Any], modality: str, method: str, preset: str, batch_size: int | None,
           effective_batch: dict[str, Any] | None = None) -> dict[str, Any]:
    """A reports/metrics.json record from a fine-tuning run's metrics.json (git commit and DVC stage hash are
    filled in by the report stage, which knows dvc.lock)."""
    updates = int(metrics.get("pretrain_updates") or 0)
    return {
        "modality": modality, "method": method, "preset": preset,
        "pretrain_seconds": float(metrics.get("pretrain_seconds") or 0.0), "pretrain_updates": updates,
        "pretrain_samples": updates * (batch_size or 0), "device": metrics.get("device"),
        "world_size": metrics.get("world_size"), "task": metrics["task"], "metric": metrics["metric"],
        "value": metrics["value"], "split": metrics.get("split"), "checkpoint": metrics.get("checkpoint"),
        "label_fraction": metrics.get("label_fraction"), "finetune_updates": metrics.get("finetune_updates"),
        "effective_batch": effective_batch,
    }


def clear(out: Path) -> None:
    """Remove an earlier sweep's runs, so the folder (a DVC out) holds only this sweep's."""
    for path in [*out.glob("budget-*"), out / "scratch", out / "curve.json"]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def finetune_command(args: argparse.Namespace, task: str, checkpoint: str, run_dir: Path) -> list[str]:
    """`python -m pipeline finetune` of one checkpoint (`none`: scratch) into `run_dir`, with the sweep's flags."""
    cmd = [sys.executable, "-m", "pipeline", "finetune", "--modality", args.modality, "--checkpoint", checkpoint,
           "--task", task, "--out", str(run_dir), "--nproc", str(args.nproc), "--device", args.device,
           "--params", str(args.params), "--fresh"]
    cmd += ["--workers", str(args.workers)] if args.workers is not None else []
    cmd += ["--label-fraction", str(args.label_fraction)] if args.label_fraction is not None else []
    cmd += ["--max-updates", str(args.max_updates)] if args.max_updates is not None else []
    return cmd + (["--no-progress"] if args.no_progress else [])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline import config as P
    from pipeline.finetune import config as finetune_config
    from pipeline.train.checkpoint import load
    from pipeline.pretrain.stage import default_out
    from pipeline.io import atomic_write_json

    params = P.load(args.params)
    task = args.task or P.benchmark(params)[args.modality].task
    out = args.out or paths.sweep_dir(args.modality, args.method, task)
    effective = None
    if args.method == "scratch":
        points: list[tuple[float, str]] = [(0.0, "none")]
        preset = finetune_config.build(args.modality, task, "finetune", params).preset
        batch_size = None
    else:
        pretrain_dir = args.pretrain_dir or default_out(args.modality, args.method)
        points = [(f, str(p)) for f, p in budget_checkpoints(pretrain_dir)]
        config = load(Path(points[0][1]))["config"]["pretrain"]
        preset, batch_size = config["preset"], config["batch_size"]
        if (pretrain_dir / "summary.json").exists():
            effective = json.loads((pretrain_dir / "summary.json").read_text()).get("effective_batch")
    pipes = PipesReport()  # under Dagster, the sweep is the asset; its fine-tuning runs report to it, not to Dagster
    out.mkdir(parents=True, exist_ok=True)
    clear(out)
    records, run_dir = [], out
    for fraction, checkpoint in points:
        run_dir = out / ("scratch" if checkpoint == "none" else f"budget-{fraction:g}")
        message = f"sweep {args.modality}/{args.method}: fine-tuning {checkpoint}"
        print(message, file=sys.stderr, flush=True)
        pipes.log(message)
        result = subprocess.run(finetune_command(args, task, checkpoint, run_dir), env=without_pipes())
        if result.returncode != 0:
            raise UserInputError(f"fine-tuning {checkpoint} failed (exit {result.returncode}); see the log above")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        records.append(record(metrics, args.modality, args.method, preset, batch_size, effective))
        secondary = SECONDARY_METRICS.get(args.modality)
        if secondary in (metrics.get("metrics") or {}):
            records.append({**records[-1], "metric": secondary, "value": metrics["metrics"][secondary]})
        pipes.log(f"{checkpoint}: test {metrics['metric']} {metrics['value']:.4f}")
    atomic_write_json(out / "curve.json", records)
    final = next(r for r in reversed(records) if r["metric"] == records[0]["metric"])
    pipes.materialize({"metric": final["metric"], "value": final["value"], "checkpoints": len(points),
                       "path": out, "final_run": run_dir})
    return {"curve": str(out / "curve.json"), "metric": records[0]["metric"],
            "points": [(r["pretrain_seconds"], r["value"]) for r in records if r["metric"] == records[0]["metric"]]}
