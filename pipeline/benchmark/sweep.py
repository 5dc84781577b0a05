"""The benchmark's fine-tuning protocol for one (modality, method): with params.yaml benchmark.<modality>.finetune
`final`, the final run (the most updates) of each seed of models/<modality>/<method>/pretrain/runs.json
(`pretrain --benchmark` writes it) is fine-tuned with the same recipe and label fraction (params.yaml
finetune.<modality>) and tested; for `scratch`, one run from random weights per seed of the benchmark scale
(params.yaml benchmark.scales.<scale>.seeds). Each fine-tuning run gets its seed (`finetune --seed`).
`finetune: none`, or a scale with `finetune: false` (params.yaml benchmark.scales.<scale>), fine-tunes nothing
(curve.json is an empty list).

Output in --out (default models/<modality>/<method>/sweep/<task>): one fine-tuning folder per run
(<run name>/, e.g. s0-u100/; scratch: scratch-s<seed>/) and curve.json, one record per run and metric in the
reports/metrics.json schema with protocol `finetune` and the pretraining cost fields copied from runs.json
(scratch: no pretraining, 0).
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
# the run folders of a sweep: s<seed>-u<updates> (a pretraining run's name), scratch-s<seed>; budget-<f> and
# scratch are the folders of earlier versions
RUN_FOLDER = re.compile(r"^(s\d+-u\d+|scratch-s\d+|scratch|budget-[0-9.]+)$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--method", required=True, help="pretraining method whose final runs to fine-tune, or scratch")
    p.add_argument("--task", help="downstream task (default: params.yaml benchmark.<modality>.task)")
    p.add_argument("--pretrain-dir", type=Path, help="folder of runs.json (default: models/<modality>/<method>/pretrain)")
    p.add_argument("--out", type=Path, help="default: models/<modality>/<method>/sweep/<task>")
    p.add_argument("--label-fraction", type=float, help="default: params.yaml finetune.<modality>")
    p.add_argument("--max-updates", type=int, help="fine-tuning updates per run (default: params.yaml finetune.<modality>)")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--workers", type=int)
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--no-progress", action="store_true")


def record(metrics: dict[str, Any], modality: str, method: str, fields: dict[str, Any],
           effective_batch: dict[str, Any] | None = None) -> dict[str, Any]:
    """A reports/metrics.json record from a fine-tuning run's metrics.json; `fields`: the pretraining run's cost
    fields (pipeline/benchmark/probe.py cost_fields). git_commit and dvc_stage_hash are null: the report stage,
    which knows dvc.lock, fills them in."""
    return {
        "modality": modality, "method": method, **fields, "protocol": "finetune", "task": metrics["task"],
        "metric": metrics["metric"], "value": metrics["value"], "split": metrics.get("split"),
        "git_commit": None, "dvc_stage_hash": None, "checkpoint": metrics.get("checkpoint"),
        "label_fraction": metrics.get("label_fraction"), "finetune_updates": metrics.get("finetune_updates"),
        "effective_batch": effective_batch,
    }


def clear(out: Path) -> None:
    """Remove an earlier sweep's runs, so the folder (a DVC out) holds only this sweep's."""
    for path in [*(p for p in out.iterdir() if RUN_FOLDER.match(p.name)), out / "curve.json"] if out.is_dir() else []:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def finetune_command(args: argparse.Namespace, task: str, checkpoint: str, run_dir: Path, seed: int | None) -> list[str]:
    """`python -m pipeline finetune` of one checkpoint (`none`: scratch) into `run_dir`, with the sweep's flags."""
    cmd = [sys.executable, "-m", "pipeline", "finetune", "--modality", args.modality, "--checkpoint", checkpoint,
           "--task", task, "--out", str(run_dir), "--nproc", str(args.nproc), "--device", args.device,
           "--params", str(args.params), "--fresh"]
    cmd += ["--seed", str(seed)] if seed is not None else []
    cmd += ["--workers", str(args.workers)] if args.workers is not None else []
    cmd += ["--label-fraction", str(args.label_fraction)] if args.label_fraction is not None else []
    cmd += ["--max-updates", str(args.max_updates)] if args.max_updates is not None else []
    return cmd + (["--no-progress"] if args.no_progress else [])


def runs_to_finetune(args: argparse.Namespace, params: dict[str, Any], task: str) -> list[dict[str, Any]]:
    """[{name, checkpoint ("none": scratch), fields (the records' cost fields), effective_batch}] of the sweep."""
    from pipeline import config as P
    from pipeline.benchmark.probe import cost_fields, final_runs, pretrain_runs
    from pipeline.finetune import config as finetune_config

    if P.benchmark(params)[args.modality].finetune == "none" or not P.benchmark_scale(params).finetune:
        return []
    if args.method == "scratch":
        preset = finetune_config.build(args.modality, task, "finetune", params).preset
        return [{"name": f"scratch-s{seed}", "checkpoint": "none", "fields": cost_fields(None, preset, seed),
                 "effective_batch": None} for seed in P.benchmark_scale(params).seeds]
    pretrain_dir = args.pretrain_dir or Path("models") / args.modality / args.method / "pretrain"
    return [{"name": run["name"], "checkpoint": run["path"], "fields": cost_fields(run, None, None),
             "effective_batch": run.get("effective_batch")}
            for run in final_runs(pretrain_runs(pretrain_dir, args.modality, args.method))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline import config as P
    from pipeline.io import atomic_write_json

    P.check_method(args.modality, args.method, also=("scratch",))
    params = P.load(args.params)
    task = args.task or P.benchmark(params)[args.modality].task
    out = args.out or paths.sweep_dir(args.modality, args.method, task)
    runs = runs_to_finetune(args, params, task)
    pipes = PipesReport()  # under Dagster, the sweep is the asset; its fine-tuning runs report to it, not to Dagster
    out.mkdir(parents=True, exist_ok=True)
    clear(out)
    records = []
    for point in runs:
        run_dir = out / point["name"]
        message = f"sweep {args.modality}/{args.method}: fine-tuning {point['checkpoint']} (seed {point['fields']['seed']})"
        print(message, file=sys.stderr, flush=True)
        pipes.log(message)
        command = finetune_command(args, task, point["checkpoint"], run_dir, point["fields"]["seed"])
        # the run's own JSON summary goes to the log: stdout carries the sweep's summary only
        result = subprocess.run(command, env=without_pipes(), stdout=sys.stderr)
        if result.returncode != 0:
            raise UserInputError(f"fine-tuning {point['checkpoint']} failed (exit {result.returncode}); see the log above")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        records.append(record(metrics, args.modality, args.method, point["fields"], point["effective_batch"]))
        secondary = SECONDARY_METRICS.get(args.modality)
        if secondary in (metrics.get("metrics") or {}):
            records.append({**records[-1], "metric": secondary, "value": metrics["metrics"][secondary]})
        pipes.log(f"{point['name']}: test {metrics['metric']} {metrics['value']:.4f}")
    atomic_write_json(out / "curve.json", records)
    primary = [r for r in records if r["metric"] == records[0]["metric"]] if records else []
    # final_run: the last run's folder, whose metrics.json and plots the Dagster asset shows (assets/metadata.py)
    pipes.materialize({"metric": primary[-1]["metric"] if primary else None,
                       "value": primary[-1]["value"] if primary else None, "runs": len(runs), "path": out,
                       "final_run": out / runs[-1]["name"] if runs else None})
    return {"curve": str(out / "curve.json"), "metric": records[0]["metric"] if records else None,
            "points": [(r["seed"], r["pretrain_updates"], r["value"]) for r in primary]}
