"""Fine-tuning assets, each launching the pipeline CLI (torchrun) as a subprocess through Dagster Pipes, on the
modality's demo task (image fashion_mnist, speech synth, text lexname):

- `<modality>/<method>/finetuned`: the time-to-accuracy sweep (`python -m pipeline sweep`): every budget
  checkpoint of `<modality>/<method>/pretrained` fine-tuned with the same recipe; for `scratch`, one run from a
  fresh encoder. Reports the curve, the full-budget run's test metric and its confusion matrix (classification)
  or sample transcriptions (speech).
- `image/data2vec2/linear_probe`: a linear probe on frozen features of the final pretrained encoder.
"""
import sys

import dagster as dg

from assets.training import PretrainRunConfig, operational
from pipeline import paths
from pipeline.finetune.tasks import DEFAULT_TASK as TASKS  # the demo task per modality, as in dvc.yaml (no torch import)
from pipeline.pretrain.stage import default_out


class FinetuneRunConfig(PretrainRunConfig):
    """Operational knobs only; hyper-parameters come from params.yaml `finetune.<modality>`."""


def build_sweep_asset(modality: str, method: str, upstream: list) -> dg.AssetsDefinition:
    task = TASKS[modality]
    stage = f"finetune_scratch_{modality}" if method == "scratch" else f"finetune_{modality}@{method}"
    out = str(paths.sweep_dir(modality, method, task))
    origin = ("a freshly initialized encoder (scratch baseline)" if method == "scratch"
              else f"each budget checkpoint of {modality}/{method}/pretrained")

    @dg.asset(key=[modality, method, "finetuned"], group_name=modality, deps=upstream, kinds={"pytorch"},
              description=f"{task}: fine-tuning of {origin}, tested on the test split ({out}/curve.json; DVC stage {stage}).",
              metadata={"dvc_stage": stage, "path": out, "task": task})
    def finetuned(context: dg.AssetExecutionContext, config: FinetuneRunConfig,
                  pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        command = [sys.executable, "-m", "pipeline", "sweep", "--modality", modality, "--method", method, "--task", task,
                   *operational(config)]
        context.log.info(" ".join(command))
        return pipes_subprocess_client.run(command=command, context=context).get_materialize_result()

    return finetuned


def build_linear_probe_asset(modality: str, method: str, upstream: list) -> dg.AssetsDefinition:
    task = TASKS[modality]
    stage = f"linear_probe_{modality}@{method}"
    out = f"models/{modality}/{method}/finetune/{task}-linear_probe"
    checkpoint = str(default_out(modality, method) / "last.pt")

    @dg.asset(key=[modality, method, "linear_probe"], group_name=modality, deps=upstream, kinds={"pytorch"},
              description=f"{task}: linear probe on frozen features of the {method} pretrained encoder ({out}; DVC stage {stage}).",
              metadata={"dvc_stage": stage, "path": out, "task": task})
    def linear_probe(context: dg.AssetExecutionContext, config: FinetuneRunConfig,
                     pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        command = [sys.executable, "-m", "pipeline", "finetune", "--modality", modality, "--checkpoint", checkpoint,
                   "--task", task, "--mode", "linear_probe", *operational(config)]
        if config.fresh:
            command.append("--fresh")
        context.log.info(" ".join(command))
        return pipes_subprocess_client.run(command=command, context=context).get_materialize_result()

    return linear_probe
