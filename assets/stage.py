"""What every asset shares as the Dagster face of one DVC stage: its definition arguments (key, DVC stage, code
version, owners, tags, pool) and its ending (the stage recorded in dvc.lock, rounded numbers, run tags)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

from assets import dvc
from assets.metadata import rounded

OWNERS = ["team:data2vec"]
# Steps a run executes side by side: the multiprocess executor's max_concurrent (run config
# `execution.config.max_concurrent`, this default in assets/definitions.py). Each step gets an equal share of the
# cores as its torch threads (`step_threads`): on a 2-core machine two steps of one thread each, which finish the
# demo's and the cpu scale's tiny models about twice as fast as one step of two threads (a tiny model's step gains
# little from a second thread), and every measured second is a second of one core.
LANES = 2
# Cross-run limit on the steps that train or evaluate a model (instance dagster.yaml `concurrency.pools`, default
# limit 2 = LANES as `make dagster-home` writes it): two runs at once ("Materialize all" beside a job) still train
# at most LANES models side by side, so no step gets less than its share of the cores.
TRAINING_POOL = "training"


def lanes(run_config: Mapping[str, Any]) -> int:
    """The run's max_concurrent (LANES when its run config does not set it; 0 means one per core, as Dagster's)."""
    value = ((run_config.get("execution") or {}).get("config") or {}).get("max_concurrent", LANES)
    return value if value and value > 0 else len(os.sched_getaffinity(0))


def step_threads(run_config: Mapping[str, Any], cores: int | None = None) -> int:
    """Torch/OpenMP threads for one step: the cores (this process's CPU affinity) divided by the run's lanes, at
    least 1."""
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    return max(1, cores // lanes(run_config))


# Which ready step a lane takes first (Dagster's op tag dagster/priority, higher first): the data steps, short and
# upstream of everything, then the pretraining runs, the longest steps, then what reads their checkpoints. Without
# it the executor took ready probes before the text corpus's tokenization, and text pretraining, on the critical
# path of the cpu scale, started 15 minutes late.
PRIORITY = {"prepare": 3, "shard": 3, "tokenizer": 3, "tokenize": 3, "pretrain": 2, "probe": 1, "floors": 1, "finetune": 1}


def priority(stage: str) -> int:
    """The dagster/priority of the asset of DVC stage `stage` (PRIORITY by its family; 0 for the rest)."""
    family = stage.split("@")[0].split("_")[0]
    return PRIORITY.get(family, 0)


def asset_args(stage: str, key: list[str], modality: str | None, method: str | None, *, pool: str | None = None,
               **metadata: Any) -> dict[str, Any]:
    """Keyword arguments of `dg.asset` for the asset of DVC stage `stage`."""
    tags = {"stage": stage.split("@")[0]} | ({"modality": modality} if modality else {}) | ({"method": method} if method else {})
    return {"key": key, "group_name": modality or "benchmark", "code_version": dvc.code_version(stage), "owners": OWNERS,
            "tags": tags, "op_tags": {"dagster/priority": str(priority(stage))}, "pool": pool,
            "metadata": {"dvc_stage": stage, **metadata}}


def begin(context: dg.AssetExecutionContext) -> None:
    """Tag the run with the git commit and the params.yaml digest it ran from (every launch path: UI, CLI, CI),
    and give the step its share of the cores: OMP_NUM_THREADS (`step_threads`) in this step's environment, which
    torch reads when the step imports it and the stage subprocesses inherit. An OMP_NUM_THREADS already set (by
    the user, or torchrun's 1 per worker) is kept. Every step is its own process, so nothing leaks between steps."""
    from pipeline.io import git_state

    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(step_threads(context.run.run_config))
        context.log.info(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} ({lanes(context.run.run_config)} steps side "
                         f"by side on {len(os.sched_getaffinity(0))} cores)")
    context.instance.add_run_tags(context.run.run_id, {"d2v2/git_commit": git_state(), "d2v2/params_sha256": dvc.params_sha256()})


def finish(context: dg.AssetExecutionContext, dvc_resource: dvc.Dvc, result: dg.MaterializeResult | None = None,
           metadata: dict[str, Any] | None = None, params_path: str = "params.yaml") -> dg.MaterializeResult:
    """The materialization of the asset: `result` (what the stage reported through Pipes, if any) with `metadata`
    added, numbers rounded, and its stage recorded in dvc.lock (whose output md5 becomes the data version)."""
    stage = context.assets_def.specs_by_key[context.asset_key].metadata["dvc_stage"]
    recorded = dvc_resource.record_stage(context, stage, params_path)
    reported = dict(result.metadata or {}) if result is not None else {}
    merged = rounded({**(metadata or {}), **reported, **recorded.get("metadata", {})})
    return dg.MaterializeResult(metadata=merged, data_version=recorded.get("data_version"),
                                check_results=result.check_results if result is not None else None)
