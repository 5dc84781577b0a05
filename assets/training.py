"""Training assets, each launching the pipeline CLI as a subprocess through Dagster Pipes (with `nproc` > 1 the
stage runs itself under torchrun; a cancelled run terminates torchrun, which stops its workers):

- `<modality>/<method>_pretrained`: `python -m pipeline pretrain --benchmark`, every run of the benchmark scale
  (per seed, one complete run per update budget) in turn. The runs stream their log lines; the stage reports once,
  after the last; the runs' table (updates, seconds, FLOPs, loss) and the final run's loss curve come from the
  folder.
- `<modality>/<method>_finetuned`: the fine-tuning protocol (`python -m pipeline sweep`) on the modality's task:
  the final run of each seed of `<modality>/<method>_pretrained` fine-tuned and tested with the same recipe; for
  `scratch`, random weights, once per seed. Shows the curve and the last run's test metric with its confusion
  matrix or sample transcriptions.
Both are in the `training` pool (at most 2 side by side across runs, assets/stage.py) and record their DVC stage in dvc.lock when done.
"""
import sys
from collections.abc import Callable

import dagster as dg
from pydantic import Field

from assets import metadata as md
from assets.dvc import Dvc
from assets.stage import TRAINING_POOL, asset_args, begin, finish
from pipeline import paths
from pipeline.config import benchmark  # params.yaml benchmark.<modality>.task, as in dvc.yaml (no torch import)
from pipeline.pretrain.stage import default_out  # stdlib imports only at module level: no torch when assets/ loads


class PretrainRunConfig(dg.Config):
    """Operational knobs only; hyper-parameters come from params.yaml `pretrain.<modality>`."""

    nproc: int = Field(default=1, description="Processes (torchrun --nproc-per-node when > 1): one per GPU, or 1 on CPU.")
    device: str = Field(default="auto", description="auto (CUDA when present, else CPU), cpu or cuda.")
    workers: int | None = Field(default=None, description="DataLoader workers per process (null: the CLI default).")
    fresh: bool = Field(default=False, description="Start over instead of resuming the unfinished run's last.pt.")
    params_path: str = Field(default="params.yaml", description="Hyper-parameters file; only params.yaml is recorded "
                             "in dvc.lock (another file: the run is Dagster's alone).")


class FinetuneRunConfig(PretrainRunConfig):
    """Operational knobs only; hyper-parameters come from params.yaml `finetune.<modality>`."""


def operational(config: PretrainRunConfig) -> list[str]:
    """The CLI flags of the run config (shared by the training and fine-tuning assets)."""
    command = ["--nproc", str(config.nproc), "--device", config.device, "--params", config.params_path, "--no-progress"]
    return command + (["--workers", str(config.workers)] if config.workers is not None else [])


def run_stage(context: dg.AssetExecutionContext, client: dg.PipesSubprocessClient, dvc: Dvc, command: list[str],
              describe: Callable[[dg.MaterializeResult], dict], params_path: str) -> dg.MaterializeResult:
    """Run `python -m pipeline ...` through Pipes, add what `describe` builds from the stage's report (and the
    files it points to) to the materialization the stage reported, and record the stage in dvc.lock."""
    begin(context)
    command = [sys.executable, "-m", "pipeline", *command]
    context.log.info(" ".join(command))
    result = client.run(command=command, context=context).get_materialize_result()
    return finish(context, dvc, md.merged(result, describe(result)), params_path=params_path)


def build_pretrain_asset(modality: str, method: str, upstream: list) -> dg.AssetsDefinition:
    stage = f"pretrain_{modality}@{method}"
    out = str(default_out(modality, method))

    @dg.asset(**asset_args(stage, [modality, f"{method}_pretrained"], modality, method, pool=TRAINING_POOL, path=out),
              deps=upstream, kinds={"pytorch"},
              description=f"{method} pretraining of the {modality} encoder: every run of the benchmark scale, each a "
              f"complete run at its update budget (`{out}/s<seed>-u<updates>/`, `runs.json`; DVC stage `{stage}`).")
    def pretrained(context: dg.AssetExecutionContext, config: PretrainRunConfig,
                   pipes_subprocess_client: dg.PipesSubprocessClient, dvc: Dvc) -> dg.MaterializeResult:
        command = ["pretrain", "--modality", modality, "--method", method, "--benchmark", *operational(config)]
        command += ["--fresh"] if config.fresh else []
        return run_stage(context, pipes_subprocess_client, dvc, command,
                         lambda r: md.pretrain_runs_metadata(md.reported_path(r)), config.params_path)

    return pretrained


def build_sweep_asset(modality: str, method: str, upstream: list) -> dg.AssetsDefinition:
    task = benchmark()[modality].task
    stage = f"finetune_scratch_{modality}" if method == "scratch" else f"finetune_{modality}@{method}"
    out = str(paths.sweep_dir(modality, method, task))
    origin = ("random weights, once per seed (the scratch floor)" if method == "scratch"
              else f"the final run of each seed of {modality}/{method}_pretrained")

    @dg.asset(**asset_args(stage, [modality, f"{method}_finetuned"], modality, method, pool=TRAINING_POOL, path=out, task=task),
              deps=upstream, kinds={"pytorch"},
              description=f"{task}: fine-tuning of {origin}, tested on the test split ({out}/curve.json; DVC stage {stage}).")
    def finetuned(context: dg.AssetExecutionContext, config: FinetuneRunConfig,
                  pipes_subprocess_client: dg.PipesSubprocessClient, dvc: Dvc) -> dg.MaterializeResult:
        command = ["sweep", "--modality", modality, "--method", method, *operational(config)]
        return run_stage(context, pipes_subprocess_client, dvc, command,
                         lambda r: md.sweep_metadata(md.reported_path(r), md.reported_path(r, "final_run")), config.params_path)

    return finetuned
