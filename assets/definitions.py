"""The Dagster code location: one asset group per modality, the benchmark report, the asset checks, and the
jobs CI and people run (`python -m assets.launch demo`, or from the UI)."""
import dagster as dg

from assets.dvc import Dvc
from assets.graph import ASSETS, BY_MODALITY, CHECKS
from assets.stage import LANES

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
    # LANES steps side by side within a run (run config execution.config.max_concurrent), each with its share of
    # the cores as torch threads (assets/stage.py `begin`): a step of a tiny model gains little from a second
    # thread, so two one-thread steps on two cores take about half the time of one two-thread step; across runs
    # the `training` pool (assets/dagster.yaml) caps the training and probe steps at the same number. On one GPU set
    # max_concurrent: 1 (two trainings on one device skew the seconds the benchmark compares).
    # Each step is forked from a forkserver that has imported Dagster and this code location once, instead of a
    # fresh interpreter importing them per step (~3 s each of the demo's ~60 steps, asset checks included).
    executor=dg.multiprocess_executor.configured(
        lambda config: {"max_concurrent": config["max_concurrent"], "start_method": {"forkserver": {}}},
        config_schema={"max_concurrent": dg.Field(int, default_value=LANES, description=(
            "Steps run side by side; each gets cores / max_concurrent torch threads (0: one per core). 1 on a "
            "single GPU."))}),
)
