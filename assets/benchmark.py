"""Benchmark assets:

- `<modality>/<method>_probed`: the frozen-feature protocols (`python -m pipeline probe`, through Dagster Pipes) on
  every pretraining run of `<modality>/<method>_pretrained`, and on the floors `<modality>/random_init_probed`
  (the encoder at initialisation) and `<modality>/raw_input_probed` (the input itself); shows the records. A
  check (WARN) says whether the method's final run beats the random_init floor on every protocol.
- `<modality>/throughput`: loader and training-step speed, FLOPs and MFU of every method of the modality
  (reports/throughput/<modality>.json).
- `benchmark_report`: reports/benchmark.md + .html, plots, metrics.json, headline.json from every probe, sweep and
  throughput file.
Each runs what its DVC stage runs (`probe_<modality>@<method>`, `floors_<modality>@<floor>`, `throughput_<modality>`,
`benchmark_report`); throughput and the report in the step's process. Probes and throughput are in the
`training` pool; every asset records its DVC stage in dvc.lock when done (assets/dvc.py).
"""
import json
from pathlib import Path

import dagster as dg
from pydantic import Field

from assets import metadata as md
from assets.dvc import Dvc
from assets.stage import TRAINING_POOL, asset_args, begin, finish
from assets.training import run_stage
from pipeline.benchmark.probe import FLOORS  # stdlib and pipeline.config only: no torch when assets/ loads


class ProbeRunConfig(dg.Config):
    """Operational knobs only; protocols, pooling, layer and subsample sizes come from params.yaml `benchmark`."""

    workers: int = Field(default=0, description="DataLoader workers for the feature extraction (0: in the step's process).")
    params_path: str = Field(default="params.yaml", description="Hyper-parameters file; only params.yaml is recorded in dvc.lock.")


class ThroughputConfig(dg.Config):
    """Operational knobs of the measurement; batch size and preset come from params.yaml `pretrain.<modality>`."""

    device: str = Field(default="auto", description="auto (CUDA when present, else CPU), cpu or cuda.")
    steps: int = Field(default=5, description="Timed training steps per method (after one warm-up step).")
    workers: int = Field(default=1, description="DataLoader workers of the loader measurement.")
    params_path: str = Field(default="params.yaml", description="Hyper-parameters file; only params.yaml is recorded in dvc.lock.")


def build_probe_asset(modality: str, method: str, upstream: list) -> dg.AssetsDefinition:
    from pipeline.config import benchmark

    bench = benchmark()[modality]
    stage = f"floors_{modality}@{method}" if method in FLOORS else f"probe_{modality}@{method}"
    out = f"models/{modality}/{method}/probe"
    origin = {"random_init": "data2vec 2.0's encoder at initialisation (one per seed; the random_init floor)",
              "raw_input": "the raw input (the raw_input floor)"}.get(method, f"every run of {modality}/{method}_pretrained")

    @dg.asset(**asset_args(stage, [modality, f"{method}_probed"], modality, method, pool=TRAINING_POOL, path=out,
                           task=bench.task),
              deps=upstream, kinds={"pytorch"},
              description=f"{bench.task}: {', '.join(bench.probes)} on frozen {bench.pooling}-pooled features of {origin}, "
              f"tested on the test split ({out}/records.json; DVC stage {stage}).")
    def probed(context: dg.AssetExecutionContext, config: ProbeRunConfig,
               pipes_subprocess_client: dg.PipesSubprocessClient, dvc: Dvc) -> dg.MaterializeResult:
        command = ["probe", "--modality", modality, "--method", method, "--workers", str(config.workers),
                   "--params", config.params_path, "--no-progress"]
        return run_stage(context, pipes_subprocess_client, dvc, command, lambda r: md.probe_metadata(md.reported_path(r)),
                         config.params_path)

    return probed


def final_scores(records_path: Path) -> dict[tuple[str, str], float]:
    """{(protocol, metric): value} of the last source in a probe's records.json (a method's final run, or the
    floor's last seed)."""
    records = json.loads(records_path.read_text())
    last = records[-1].get("source") if records else None
    return {(r["protocol"], r["metric"]): r["value"] for r in records if r.get("source") == last}


def build_floor_check(modality: str, method: str, probed: dg.AssetsDefinition,
                      floor: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    """WARN unless the final run of `method` scores better than the random_init floor on every protocol."""
    @dg.asset_check(asset=probed, additional_deps=[floor], name="beats_random_init",
                    description=f"The final {method} run scores better than data2vec 2.0's encoder at initialisation "
                    "(random_init) on every protocol and metric of the probe (WARN: a short demo run may not).")
    def beats_random_init() -> dg.AssetCheckResult:
        from pipeline.benchmark.analysis import higher_is_better

        paths = [Path(f"models/{modality}/{m}/probe/records.json") for m in (method, "random_init")]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                                       metadata={"missing": dg.MetadataValue.json(missing)})
        scores, floor_scores = (final_scores(p) for p in paths)
        rows = [{"protocol": p, "metric": m, method: f"{v:.4f}", "random_init": f"{floor_scores[p, m]:.4f}",
                 "beats": (v > floor_scores[p, m]) == higher_is_better(m) and v != floor_scores[p, m]}
                for (p, m), v in scores.items() if (p, m) in floor_scores]
        return dg.AssetCheckResult(passed=bool(rows) and all(r["beats"] for r in rows), severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"scores": md.table(rows)})

    return beats_random_init


def _cli_args(*argv: str):
    from pipeline.cli import build_parser

    return build_parser().parse_args(list(argv))


def build_throughput_asset(modality: str, upstream: list) -> dg.AssetsDefinition:
    from pipeline import paths
    from pipeline.config import benchmark

    methods = benchmark()[modality].methods
    out = paths.throughput_path(modality)

    @dg.asset(**asset_args(f"throughput_{modality}", [modality, "throughput"], modality, None, pool=TRAINING_POOL,
                           path=str(out)),
              deps=upstream, kinds={"pytorch"},
              description=f"Samples/s, tokens/s, FLOPs and MFU of one training step of {', '.join(methods)}, and the "
              f"loader's samples/s ({out}; DVC stage throughput_{modality}).")
    def throughput(context: dg.AssetExecutionContext, config: ThroughputConfig, dvc: Dvc) -> dg.MaterializeResult:
        from pipeline.benchmark.throughput import run

        begin(context)
        args = _cli_args("throughput", "--modality", modality, "--method", *methods, "--device", config.device,
                         "--steps", str(config.steps), "--workers", str(config.workers), "--out", str(out),
                         "--params", config.params_path)
        result = run(args)
        records = result["records"] if "records" in result else [result]
        context.log.info(f"{modality} throughput: " + ", ".join(f"{r['method']} {r['train_samples_per_s']:.1f} samples/s, "
                                                                 f"MFU {100 * r['mfu']:.2f}%" for r in records))
        return finish(context, dvc, metadata=md.throughput_metadata(records, out), params_path=config.params_path)

    return throughput


def build_report_asset(upstream: list) -> dg.AssetsDefinition:
    @dg.asset(**asset_args("benchmark_report", ["benchmark_report"], None, None, path="reports/benchmark.md"),
              deps=upstream, kinds={"python"},
              description="Per modality and protocol, score against pretraining seconds and FLOPs for every method with "
              "the floors; best scores, data2vec 2.0's speed-ups (or why inconclusive), the paper's claims, "
              "throughput/MFU, provenance: reports/benchmark.md, benchmark.html, plots/, metrics.json, headline.json "
              "(DVC stage benchmark_report). Its provenance hashes are dvc.lock's: every input was recorded there by its "
              "own asset before this one ran.")
    def benchmark_report(context: dg.AssetExecutionContext, dvc: Dvc) -> dg.MaterializeResult:
        from pipeline.benchmark.report import run

        begin(context)
        result = run(_cli_args("report"))
        context.log.info(f"benchmark report: {result['records']} records -> {result['report']}")
        return finish(context, dvc, metadata=md.report_metadata(result))

    return benchmark_report
