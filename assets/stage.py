"""What every asset shares as the Dagster face of one DVC stage: its definition arguments (key, DVC stage, code
version, owners, tags, pool) and its ending (the stage recorded in dvc.lock, rounded numbers, run tags)."""
from __future__ import annotations

from typing import Any

import dagster as dg

from assets import dvc
from assets.metadata import rounded

OWNERS = ["team:data2vec"]
# Cross-run limit on the steps that train or evaluate a model (instance dagster.yaml `concurrency.pools`, default
# limit 1 as `make dagster-home` writes it; `dagster instance concurrency set training N` on a machine with N GPUs):
# two CPU trainings side by side share the cores and skew the timings the benchmark compares, however they were
# launched (a job, "Materialize all", two runs at once).
TRAINING_POOL = "training"


def asset_args(stage: str, key: list[str], modality: str | None, method: str | None, *, pool: str | None = None,
               **metadata: Any) -> dict[str, Any]:
    """Keyword arguments of `dg.asset` for the asset of DVC stage `stage`."""
    tags = {"stage": stage.split("@")[0]} | ({"modality": modality} if modality else {}) | ({"method": method} if method else {})
    return {"key": key, "group_name": modality or "benchmark", "code_version": dvc.code_version(stage), "owners": OWNERS,
            "tags": tags, "pool": pool, "metadata": {"dvc_stage": stage, **metadata}}


def begin(context: dg.AssetExecutionContext) -> None:
    """Tag the run with the git commit and the params.yaml digest it ran from (every launch path: UI, CLI, CI)."""
    from pipeline.io import git_state

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
