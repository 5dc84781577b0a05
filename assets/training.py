"""Training assets, each launching the pipeline CLI as a subprocess through Dagster Pipes (the stage runs itself
under torchrun; a cancelled run terminates torchrun, which stops its workers):

- `<modality>/<method>/pretrained`: `python -m pipeline pretrain`. Rank 0 streams log lines and reports the
  final loss and throughput; the loss curve is added here from the run folder.
- `<modality>/<method>/finetuned`: the time-to-accuracy sweep (`python -m pipeline sweep`) on the modality's
  demo task (image fashion_mnist, speech synth, text lexname): every budget checkpoint of
  `<modality>/<method>/pretrained` fine-tuned with the same recipe; for `scratch`, one run from a fresh encoder.
  Shows the curve and the full-budget run's test metric with its confusion matrix or sample transcriptions.
- `image/data2vec2/linear_probe`: a linear probe on frozen features of the final pretrained encoder.
"""
import sys
from collections.abc import Callable

import dagster as dg

from assets import metadata as md
from pipeline import paths
from pipeline.config import benchmark  # params.yaml benchmark.<modality>.task, as in dvc.yaml (no torch import)
from pipeline.pretrain.stage import default_out  # stdlib imports only at module level: no torch when assets/ loads


class PretrainRunConfig(dg.Config):
    """Operational knobs only; hyper-parameters come from params.yaml `pretrain.<modality>`."""

    nproc: int = 1
    device: str = "auto"
    workers: int | None = None
    fresh: bool = False
    params_path: str = "params.yaml"


class FinetuneRunConfig(PretrainRunConfig):
    """Operational knobs only; hyper-parameters come from params.yaml `finetune.<modality>`."""


def operational(config: PretrainRunConfig) -> list[str]:
    """The CLI flags of the run config (shared by the training and fine-tuning assets)."""
    command = ["--nproc", str(config.nproc), "--device", config.device, "--params", config.params_path, "--no-progress"]
    return command + (["--workers", str(config.workers)] if config.workers is not None else [])


def run_stage(context: dg.AssetExecutionContext, client: dg.PipesSubprocessClient, command: list[str],
              describe: Callable[[dg.MaterializeResult], dict]) -> dg.MaterializeResult:
    """Run `python -m pipeline ...` through Pipes, then add what `describe` builds from the stage's report
    (and the files it points to) to the materialization the stage reported."""
    command = [sys.executable, "-m", "pipeline", *command]
    context.log.info(" ".join(command))
    result = client.run(command=command, context=context).get_materialize_result()
    return md.merged(result, describe(result))


def build_pretrain_asset(modality: str, method: str, upstream: list) -> dg.AssetsDefinition:
    stage = f"pretrain_{modality}@{method}"
    out = str(default_out(modality, method))

    @dg.asset(key=[modality, method, "pretrained"], group_name=modality, deps=upstream, kinds={"pytorch"},
              description=f"{method} pretraining of the {modality} encoder under torchrun ({out}; DVC stage {stage}).",
              metadata={"dvc_stage": stage, "path": out})
    def pretrained(context: dg.AssetExecutionContext, config: PretrainRunConfig,
                   pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        command = ["pretrain", "--modality", modality, "--method", method, *operational(config)]
        command += ["--fresh"] if config.fresh else []
        return run_stage(context, pipes_subprocess_client, command, lambda r: md.pretrain_metadata(md.reported_path(r)))

    return pretrained


def build_sweep_asset(modality: str, method: str, upstream: list) -> dg.AssetsDefinition:
    task = benchmark()[modality].task
    stage = f"finetune_scratch_{modality}" if method == "scratch" else f"finetune_{modality}@{method}"
    out = str(paths.sweep_dir(modality, method, task))
    origin = ("a freshly initialized encoder (scratch baseline)" if method == "scratch"
              else f"each budget checkpoint of {modality}/{method}/pretrained")

    @dg.asset(key=[modality, method, "finetuned"], group_name=modality, deps=upstream, kinds={"pytorch"},
              description=f"{task}: fine-tuning of {origin}, tested on the test split ({out}/curve.json; DVC stage {stage}).",
              metadata={"dvc_stage": stage, "path": out, "task": task})
    def finetuned(context: dg.AssetExecutionContext, config: FinetuneRunConfig,
                  pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        command = ["sweep", "--modality", modality, "--method", method, "--task", task, *operational(config)]
        return run_stage(context, pipes_subprocess_client, command,
                         lambda r: md.sweep_metadata(md.reported_path(r), md.reported_path(r, "final_run")))

    return finetuned


def build_linear_probe_asset(modality: str, method: str, upstream: list) -> dg.AssetsDefinition:
    from pipeline.finetune.stage import default_out as finetune_out

    task = benchmark()[modality].task
    stage = f"linear_probe_{modality}@{method}"
    out = str(finetune_out(modality, method, task, "linear_probe", 1.0))
    checkpoint = str(default_out(modality, method) / "last.pt")

    @dg.asset(key=[modality, method, "linear_probe"], group_name=modality, deps=upstream, kinds={"pytorch"},
              description=f"{task}: linear probe on frozen features of the {method} pretrained encoder ({out}; DVC stage {stage}).",
              metadata={"dvc_stage": stage, "path": out, "task": task})
    def linear_probe(context: dg.AssetExecutionContext, config: FinetuneRunConfig,
                     pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        command = ["finetune", "--modality", modality, "--checkpoint", checkpoint, "--task", task, "--mode", "linear_probe",
                   *operational(config)]
        command += ["--fresh"] if config.fresh else []
        return run_stage(context, pipes_subprocess_client, command, lambda r: md.finetune_metadata(md.reported_path(r)))

    return linear_probe

