"""The Dagster code location: one asset group per modality, the benchmark report, the asset checks, and the
jobs CI and people run (`python -m assets.launch demo`, or from the UI)."""
import dagster as dg

from assets.dvc import Dvc
from assets.graph import ASSETS, BY_MODALITY, CHECKS

# Jobs select asset objects, not selection strings: those go through Dagster's ANTLR parser, which breaks when
# DVC's hydra-core pins an older antlr4 runtime in the same environment (dagster-io/dagster#27487).
JOBS = [
    dg.define_asset_job(f"{m}_pipeline", selection=dg.AssetSelection.assets(*assets),
                        description=f"Everything for {m}: embedded data -> shards -> (tokenizer) -> every method's pretraining "
                        "runs -> frozen-feature probes (and the random_init and raw_input floors), fine-tuning (and "
                        "scratch) -> throughput")
    for m, (assets, _) in BY_MODALITY.items()
] + [
    dg.define_asset_job("demo", selection=dg.AssetSelection.assets(*ASSETS),
                        description="The whole benchmark on the embedded default data at params.yaml benchmark.scale (the "
                        "demo scale by default): every modality, method and floor, ending in the benchmark report."),
]

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=JOBS,
    resources={"pipes_subprocess_client": dg.PipesSubprocessClient(forward_termination=True), "dvc": Dvc()},
    # One step at a time within a run, for every job: a training step already uses all cores (torch threads, or
    # torchrun --nproc); two side by side oversubscribe the CPU (speech fine-tuning measured 17x slower) and skew
    # timings. Across runs, the `training` pool (assets/stage.py) does the same for the training and probe steps.
    # Each step is forked from a forkserver that has imported Dagster and this code location once, instead of a
    # fresh interpreter importing them per step (~3 s each of the demo's ~60 steps, asset checks included).
    executor=dg.multiprocess_executor.configured({"max_concurrent": 1, "start_method": {"forkserver": {}}}),
)
