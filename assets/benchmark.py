"""Benchmark assets: `<modality>/throughput` (loader and training-step speed, FLOPs, MFU of every method of the
modality; reports/throughput/<modality>.json) and `benchmark_report` (reports/benchmark.md + .html, plots,
metrics.json, headline.json) from every fine-tuning sweep. Both run the same functions as their DVC stages
(`throughput_<modality>`, `benchmark_report`), in the step's process."""
import dagster as dg

from assets.metadata import report_metadata, throughput_metadata


class ThroughputConfig(dg.Config):
    """Operational knobs of the measurement; batch size and preset come from params.yaml `pretrain.<modality>`."""

    device: str = "auto"
    steps: int = 5
    workers: int = 1
    params_path: str = "params.yaml"


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
        return dg.MaterializeResult(metadata=throughput_metadata(records, out))

    return throughput


def build_report_asset(upstream: list) -> dg.AssetsDefinition:
    @dg.asset(key=["benchmark_report"], group_name="benchmark", deps=upstream, kinds={"python"},
              description="Downstream score against pretraining wall-clock for every method, best scores, data2vec 2.0's "
              "speed-ups, throughput/MFU and where we disagree with the paper: reports/benchmark.md, benchmark.html, "
              "plots/, metrics.json, headline.json (DVC stage benchmark_report).",
              metadata={"dvc_stage": "benchmark_report", "path": "reports/benchmark.md"})
    def benchmark_report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        from pipeline.benchmark.report import run

        result = run(_cli_args("report"))
        context.log.info(f"benchmark report: {result['records']} records -> {result['report']}")
        return dg.MaterializeResult(metadata=report_metadata(result))

    return benchmark_report
