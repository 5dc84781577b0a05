"""Benchmark assets:

- `<modality>/<method>/probed`: the frozen-feature protocols (`python -m pipeline probe`, through Dagster Pipes) on
  every pretraining run of `<modality>/<method>/pretrained`, and on the floors `<modality>/random_init/probed`
  (the encoder at initialisation) and `<modality>/raw_input/probed` (the input itself); shows the records.
- `<modality>/throughput`: loader and training-step speed, FLOPs and MFU of every method of the modality
  (reports/throughput/<modality>.json).
- `benchmark_report`: reports/benchmark.md + .html, plots, metrics.json, headline.json from every probe, sweep and
  throughput file.
Each runs what its DVC stage runs (`probe_<modality>@<method>`, `floors_<modality>@<floor>`, `throughput_<modality>`,
`benchmark_report`); throughput and the report in the step's process.
"""
import dagster as dg

from assets import metadata as md
from assets.training import run_stage
from pipeline.benchmark.probe import FLOORS  # stdlib and pipeline.config only: no torch when assets/ loads


class ProbeRunConfig(dg.Config):
    """Operational knobs only; protocols, pooling, layer and subsample sizes come from params.yaml `benchmark`."""

    workers: int = 0
    params_path: str = "params.yaml"


class ThroughputConfig(dg.Config):
    """Operational knobs of the measurement; batch size and preset come from params.yaml `pretrain.<modality>`."""

    device: str = "auto"
    steps: int = 5
    workers: int = 1
    params_path: str = "params.yaml"


def build_probe_asset(modality: str, method: str, upstream: list) -> dg.AssetsDefinition:
    from pipeline.config import benchmark

    bench = benchmark()[modality]
    stage = f"floors_{modality}@{method}" if method in FLOORS else f"probe_{modality}@{method}"
    out = f"models/{modality}/{method}/probe"
    origin = {"random_init": "data2vec 2.0's encoder at initialisation (one per seed; the random_init floor)",
              "raw_input": "the raw input (the raw_input floor)"}.get(method, f"every run of {modality}/{method}/pretrained")

    @dg.asset(key=[modality, method, "probed"], group_name=modality, deps=upstream, kinds={"pytorch"},
              description=f"{bench.task}: {', '.join(bench.probes)} on frozen {bench.pooling}-pooled features of {origin}, "
              f"tested on the test split ({out}/records.json; DVC stage {stage}).",
              metadata={"dvc_stage": stage, "path": out, "task": bench.task})
    def probed(context: dg.AssetExecutionContext, config: ProbeRunConfig,
               pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        command = ["probe", "--modality", modality, "--method", method, "--workers", str(config.workers),
                   "--params", config.params_path, "--no-progress"]
        return run_stage(context, pipes_subprocess_client, command, lambda r: md.probe_metadata(md.reported_path(r)))

    return probed


def _cli_args(*argv: str):
    from pipeline.cli import build_parser

    return build_parser().parse_args(list(argv))


def build_throughput_asset(modality: str, upstream: list) -> dg.AssetsDefinition:
    from pipeline import paths
    from pipeline.config import benchmark

    methods = benchmark()[modality].methods
    out = paths.throughput_path(modality)

    @dg.asset(key=[modality, "throughput"], group_name=modality, deps=upstream, kinds={"pytorch"},
              description=f"Samples/s, tokens/s, FLOPs and MFU of one training step of {', '.join(methods)}, and the "
              f"loader's samples/s ({out}; DVC stage throughput_{modality}).",
              metadata={"dvc_stage": f"throughput_{modality}", "path": str(out)})
    def throughput(context: dg.AssetExecutionContext, config: ThroughputConfig) -> dg.MaterializeResult:
        from pipeline.benchmark.throughput import run

        args = _cli_args("throughput", "--modality", modality, "--method", *methods, "--device", config.device,
                         "--steps", str(config.steps), "--workers", str(config.workers), "--out", str(out),
                         "--params", config.params_path)
        result = run(args)
        records = result["records"] if "records" in result else [result]
        context.log.info(f"{modality} throughput: " + ", ".join(f"{r['method']} {r['train_samples_per_s']:.1f} samples/s, "
                                                                 f"MFU {100 * r['mfu']:.2f}%" for r in records))
        return dg.MaterializeResult(metadata=md.throughput_metadata(records, out))

    return throughput


def build_report_asset(upstream: list) -> dg.AssetsDefinition:
    @dg.asset(key=["benchmark_report"], group_name="benchmark", deps=upstream, kinds={"python"},
              description="Per modality and protocol, score against pretraining seconds and FLOPs for every method with "
              "the floors; best scores, data2vec 2.0's speed-ups (or why inconclusive), the paper's claims, "
              "throughput/MFU, provenance: reports/benchmark.md, benchmark.html, plots/, metrics.json, headline.json "
              "(DVC stage benchmark_report).",
              metadata={"dvc_stage": "benchmark_report", "path": "reports/benchmark.md"})
    def benchmark_report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        from pipeline.benchmark.report import run

        result = run(_cli_args("report"))
        context.log.info(f"benchmark report: {result['records']} records -> {result['report']}")
        return dg.MaterializeResult(metadata=md.report_metadata(result))

    return benchmark_report
