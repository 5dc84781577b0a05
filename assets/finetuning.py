"""Fine-tuning assets: `<modality>/<method>/finetuned` launches `python -m pipeline finetune` (torchrun) as a
subprocess through Dagster Pipes, on the modality's demo task (image fashion_mnist, speech synth, text lexname).
`data2vec2` starts from `<modality>/data2vec2/pretrained` (its last.pt); `scratch` from a fresh encoder of the
same preset. Rank 0 reports the test metric, a confusion-matrix plot (classification) or sample transcriptions
(speech), and the loss curve; `<modality>/<method>/linear_probe` (images) is the frozen-feature probe."""
import sys

import dagster as dg

from assets.training import PretrainRunConfig
from pipeline.finetune_tasks import DEFAULT_TASK as TASKS  # the demo task per modality, as in dvc.yaml (no torch import)


class FinetuneRunConfig(PretrainRunConfig):
    """Operational knobs only; hyper-parameters come from params.yaml `finetune.<modality>`."""


def dvc_stage(modality: str, method: str, mode: str = "finetune") -> str:
    """dvc.yaml: `finetune_<modality>@<method>`, `linear_probe_image@<method>`, `finetune_scratch_<modality>`."""
    return f"finetune_scratch_{modality}" if method == "scratch" else f"{mode}_{modality}@{method}"


def build_finetune_asset(modality: str, method: str, upstream: list, mode: str = "finetune") -> dg.AssetsDefinition:
    task = TASKS[modality]
    stage = dvc_stage(modality, method, mode)
    out = f"models/{modality}/{method}/finetune/{task}" + ("" if mode == "finetune" else f"-{mode}")
    checkpoint = "none" if method == "scratch" else f"models/{modality}/{method}/pretrain/last.pt"
    origin = "a freshly initialized encoder (scratch baseline)" if method == "scratch" else f"the {method} pretrained encoder"
    what = "linear probe on frozen features of" if mode == "linear_probe" else "fine-tuning of"

    @dg.asset(key=[modality, method, "finetuned" if mode == "finetune" else mode], group_name=modality, deps=upstream,
              kinds={"pytorch"}, description=f"{task}: {what} {origin} ({out}; DVC stage {stage}).",
              metadata={"dvc_stage": stage, "path": out, "task": task})
    def finetuned(context: dg.AssetExecutionContext, config: FinetuneRunConfig,
                  pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        command = [sys.executable, "-m", "pipeline", "finetune", "--modality", modality, "--checkpoint", checkpoint,
                   "--task", task, "--mode", mode, "--nproc", str(config.nproc), "--device", config.device,
                   "--params", config.params_path, "--no-progress"]
        if config.workers is not None:
            command += ["--workers", str(config.workers)]
        if config.fresh:
            command.append("--fresh")
        context.log.info(" ".join(command))
        return pipes_subprocess_client.run(command=command, context=context).get_materialize_result()

    return finetuned
