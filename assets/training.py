"""Pretraining assets: `<modality>/<method>/pretrained` launches `python -m pipeline pretrain` (which runs
torchrun) as a subprocess through Dagster Pipes. Rank 0 streams logs and reports the final loss, throughput
and a loss-curve plot; a cancelled run terminates torchrun, which stops its workers."""
import sys

import dagster as dg

from pipeline.pretrain.stage import default_out  # stdlib imports only at module level: no torch when assets/ loads


class PretrainRunConfig(dg.Config):
    """Operational knobs only; hyper-parameters come from params.yaml `pretrain.<modality>`."""

    nproc: int = 1
    device: str = "auto"
    workers: int | None = None
    fresh: bool = False
    params_path: str = "params.yaml"


def operational(config: PretrainRunConfig) -> list[str]:
    """The CLI flags of the run config (shared by the training and fine-tuning assets)."""
    command = ["--nproc", str(config.nproc), "--device", config.device, "--params", config.params_path, "--no-progress"]
    return command + (["--workers", str(config.workers)] if config.workers is not None else [])


def build_pretrain_asset(modality: str, method: str, upstream: list) -> dg.AssetsDefinition:
    stage = f"pretrain_{modality}@{method}"
    out = str(default_out(modality, method))

    @dg.asset(key=[modality, method, "pretrained"], group_name=modality, deps=upstream, kinds={"pytorch"},
              description=f"{method} pretraining of the {modality} encoder under torchrun ({out}; DVC stage {stage}).",
              metadata={"dvc_stage": stage, "path": out})
    def pretrained(context: dg.AssetExecutionContext, config: PretrainRunConfig,
                   pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        command = [sys.executable, "-m", "pipeline", "pretrain", "--modality", modality, "--method", method, *operational(config)]
        if config.fresh:
            command.append("--fresh")
        context.log.info(" ".join(command))
        return pipes_subprocess_client.run(command=command, context=context).get_materialize_result()

    return pretrained
