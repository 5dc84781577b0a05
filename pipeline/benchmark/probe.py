"""The `probe` stage: the frozen-feature protocols of one (modality, method) of the benchmark, on every point of
its curve or on a floor.

`python -m pipeline probe --modality M --method X` probes these sources:
  X a pretraining method   every run of models/<M>/<X>/pretrain/runs.json (`pretrain --benchmark` writes it): the
                           student encoder of the run's last.pt, pretraining modules removed, never updated
  X = random_init          one source per seed of the benchmark scale (params.yaml benchmark.scales.<scale>.seeds):
                           data2vec 2.0's encoder for the modality, its config built exactly as `pretrain --method
                           data2vec2` builds it (the preset of params.yaml pretrain.<M>; text: the trained
                           tokenizer's vocabulary), at initialisation under that seed (update 0 of that run)
  X = raw_input            one source: the input itself (pixels, log-mel filterbank frames, bag of tokens), under
                           the same data2vec 2.0 config's input transform

Each source's features are extracted once per split, from fixed subsamples of the benchmark task (sizes:
benchmark.scales.<scale>.probe_sizes.<M>; items drawn with params.yaml `seed`, the same for every method, run and
floor) at the block and pooling of params.yaml benchmark.<M> (layer, pooling), and cached under
<out>/features/<source>/ (pipeline/benchmark/features.py; a cache whose key no longer matches is recomputed).
Then every protocol of benchmark.<M>.probes reads the cache (pipeline/benchmark/probes.py): knn and linear need
pooled features of a labeled task (mean or cls: image, text), ctc_probe frame features (`frames`: speech) and
the speech tokenizer.

Output: <out>/records.json (default out: models/<M>/<X>/probe), one record per (source, protocol, metric) in the
reports/metrics.json schema: modality, method, preset, seed, pretrain_updates, pretrain_samples,
pretrain_seconds, pretrain_flops, device, world_size, precision (the pretraining run's, copied from runs.json; floors:
no pretraining, so 0 and null, and raw_input has no seed), protocol, task, metric, value, split ("test"),
git_commit and dvc_stage_hash (null: the report stage fills them in), layer, pooling, selected, valid_value (the
selected setting's score on the validation split), counts, source
(the run's name, s<seed> or raw) and checkpoint. One process, CPU; the same inputs give the same values.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.config import MODALITIES
from pipeline.data.shard_cache import LOCATION_HELP, shard_location
from pipeline.errors import UserInputError

FLOORS = ("random_init", "raw_input")
# the poolings each protocol reads (pipeline/benchmark/features.py POOLINGS)
PROTOCOL_POOLINGS = {"knn": ("mean", "cls"), "linear": ("mean", "cls"), "ctc_probe": ("frames",)}
RUN_KEYS = ("seed", "updates", "name", "path", "train_seconds", "pretrain_flops", "samples")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--method", required=True, help="a pretraining method of params.yaml benchmark.<modality>.methods "
                   "(its runs.json), or a floor: random_init, raw_input")
    p.add_argument("--pretrain-dir", type=Path, help="folder of runs.json (default: models/<modality>/<method>/pretrain)")
    p.add_argument("--out", type=Path, help="default: models/<modality>/<method>/probe")
    p.add_argument("--shards", type=shard_location, help=f"shards: {LOCATION_HELP} (default: data/shards/<modality>)")
    p.add_argument("--tokenizer", type=Path, help="speech/text tokenizer.json (default: data/tokenizers/<modality>/tokenizer.json)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the extraction (default: %(default)s)")


def pretrain_runs(pretrain_dir: Path, modality: str, method: str) -> list[dict[str, Any]]:
    """The runs of runs.json in `pretrain_dir` (see the `pretrain --benchmark` stage), in file order. A run's
    `path` (its last.pt) is taken as written, else as <pretrain_dir>/<name>/last.pt. Raises UserInputError when
    runs.json is missing, malformed, or names a checkpoint that does not exist."""
    path = Path(pretrain_dir) / "runs.json"
    if not path.exists():
        raise UserInputError(f"{path}: no pretraining runs; run `python -m pipeline pretrain --modality {modality} "
                             f"--method {method} --benchmark` first")
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserInputError(f"{path}: not JSON ({e}); rerun `python -m pipeline pretrain --modality {modality} "
                             f"--method {method} --benchmark`") from None
    if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) and set(RUN_KEYS) <= set(r) for r in runs):
        raise UserInputError(f"{path}: expected a non-empty list of runs with keys {list(RUN_KEYS)}; rerun "
                             f"`python -m pipeline pretrain --modality {modality} --method {method} --benchmark`")
    resolved = []
    for run in runs:
        checkpoint = next((p for p in (Path(run["path"]), Path(pretrain_dir) / run["name"] / "last.pt") if p.exists()), None)
        if checkpoint is None:
            raise UserInputError(f"{path}: run {run['name']}: checkpoint {run['path']} not found; rerun `python -m "
                                 f"pipeline pretrain --modality {modality} --method {method} --benchmark`")
        resolved.append({**run, "path": str(checkpoint)})
    return resolved


def final_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run with the most updates of each seed, in seed order (the final point of each seed's curve)."""
    final: dict[int, dict[str, Any]] = {}
    for run in runs:
        if run["seed"] not in final or run["updates"] > final[run["seed"]]["updates"]:
            final[run["seed"]] = run
    return [final[seed] for seed in sorted(final)]


def cost_fields(run: dict[str, Any] | None, preset: str | None, seed: int | None) -> dict[str, Any]:
    """The pretraining fields of a record: the run's (from runs.json), or no pretraining (a floor, scratch)."""
    if run is None:
        return {"preset": preset, "seed": seed, "pretrain_updates": 0, "pretrain_samples": 0, "pretrain_seconds": 0.0,
                "pretrain_flops": 0, "device": None, "world_size": None, "precision": None}
    return {"preset": run.get("preset", preset), "seed": run["seed"], "pretrain_updates": run["updates"],
            "pretrain_samples": run["samples"], "pretrain_seconds": run["train_seconds"],
            "pretrain_flops": run["pretrain_flops"], "device": run.get("device"), "world_size": run.get("world_size"),
            "precision": run.get("precision")}


def data2vec2_config(modality: str, params_path: Path, tokenizer_path: Path | None) -> tuple[str, dict[str, Any]]:
    """(preset, `model` config) of `pretrain --modality <modality> --method data2vec2` with params.yaml (text: the
    tokenizer's vocabulary)."""
    from pipeline import config as P
    from pipeline.pretrain.stage import add_arguments as pretrain_arguments
    from pipeline.pretrain.stage import build_configs

    parser = argparse.ArgumentParser()
    pretrain_arguments(parser)
    argv = ["--modality", modality, "--method", "data2vec2", "--params", str(params_path)]
    args = parser.parse_args(argv + (["--tokenizer", str(tokenizer_path)] if modality == "text" else []))
    cfg, model_cfg = build_configs(args, P.load(params_path))
    return cfg.preset, model_cfg.to_dict()


@dataclasses.dataclass
class Point:
    """One source of a curve: its name (the cache folder), the features' source and its records' cost fields."""

    name: str
    source: Any  # pipeline.benchmark.features.Source
    fields: dict[str, Any]


def points(modality: str, method: str, args: argparse.Namespace, tokenizer_path: Path | None) -> list[Point]:
    """The sources `method` probes: every run of runs.json, or a floor's (one per seed; raw_input: one)."""
    from pipeline import config as P
    from pipeline.benchmark import features

    if method not in FLOORS:
        pretrain_dir = args.pretrain_dir or Path("models") / modality / method / "pretrain"
        return [Point(run["name"], features.from_checkpoint(Path(run["path"])),
                      {**cost_fields(run, None, None), "checkpoint": run["path"]})
                for run in pretrain_runs(pretrain_dir, modality, method)]
    preset, model_config = data2vec2_config(modality, args.params, tokenizer_path)
    if method == "raw_input":
        return [Point("raw", features.raw_input(model_config), {**cost_fields(None, preset, None), "checkpoint": None})]
    return [Point(f"s{seed}", features.random_init({**model_config, "seed": seed}, seed),
                  {**cost_fields(None, preset, seed), "checkpoint": None})
            for seed in P.benchmark_scale(P.load(args.params)).seeds]


def check_protocols(modality: str, probes: tuple[str, ...], pooling: str) -> None:
    """Every protocol of benchmark.<modality>.probes (names checked by pipeline.config.benchmark) reads the
    configured pooling, and there is at least one."""
    where = f"params.yaml benchmark.{modality}"
    if not probes:
        raise UserInputError(f"{where}.probes is empty; list some of {list(PROTOCOL_POOLINGS)}")
    for protocol in probes:
        if pooling not in PROTOCOL_POOLINGS[protocol]:
            raise UserInputError(f"{where}.pooling {pooling!r}: {protocol} reads pooling "
                                 f"{' or '.join(PROTOCOL_POOLINGS[protocol])}")


def run_protocol(protocol: str, data: dict[str, Any], metric: str, tokenizer_path: Path | None) -> dict[str, Any]:
    """One protocol on a source's cached features (role -> FeatureSet); returns the probe result dict."""
    from pipeline.benchmark import features, probes

    if protocol == "ctc_probe":
        return probes.ctc_probe(data["train"], data["valid"], data["test"], features.letter_decoder(tokenizer_path))
    probe = probes.knn if protocol == "knn" else probes.linear
    return probe(data["train"].labeled, data["valid"].labeled, data["test"].labeled, metric=metric)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The stage: records.json for every source of (args.modality, args.method). Returns the JSON summary."""
    from pipeline import config as P
    from pipeline.benchmark import features, probes
    from pipeline.finetune import tasks
    from pipeline.finetune.metrics import PRIMARY_METRIC
    from pipeline.io import atomic_write_json
    from pipeline.train.pipes import PipesReport

    modality, method = args.modality, args.method
    P.check_method(modality, method, also=FLOORS)
    params = P.load(args.params)
    bench, scale = P.benchmark(params)[modality], P.benchmark_scale(params)
    check_protocols(modality, tuple(bench.probes), bench.pooling)
    task = tasks.resolve(modality, bench.task, args.shards)
    tokenizer_path = None if modality == "image" else (args.tokenizer or paths.tokenizer_path(modality))
    if tokenizer_path is not None and not tokenizer_path.exists():
        raise UserInputError(f"{tokenizer_path}: tokenizer not found; run `python -m pipeline tokenizer --modality {modality}`")
    out = args.out or Path("models") / modality / method / "probe"
    sources = points(modality, method, args, tokenizer_path)
    if modality not in scale.probe_sizes:
        raise UserInputError(f"params.yaml benchmark.scales.{scale.name}.probe_sizes.{modality}: missing (items per "
                             "split the probes subsample: train, valid, test)")
    positions = features.probe_positions(task, scale.probe_sizes[modality], seed=P.seed(params))
    spec = features.FeatureSpec(layer=bench.layer, pooling=bench.pooling)
    pipes = PipesReport()
    records, timings = [], {}
    for point in sources:
        message = f"probe {modality}/{method}: {point.name}"
        print(message, file=sys.stderr, flush=True)
        pipes.log(message)
        start = time.perf_counter()
        data = features.probe_features(point.source, task, positions, spec, out / "features" / point.name,
                                       tokenizer_path, workers=args.workers)
        timings[point.name] = {"features": round(time.perf_counter() - start, 3)}
        for protocol in bench.probes:
            start = time.perf_counter()
            result = run_protocol(protocol, data, PRIMARY_METRIC[modality], tokenizer_path)
            timings[point.name][protocol] = round(time.perf_counter() - start, 3)
            records += probes.records(result, modality=modality, method=method, **point.fields, task=task.name,
                                      git_commit=None, dvc_stage_hash=None, layer=bench.layer, pooling=bench.pooling,
                                      source=point.name)
            pipes.log(f"{point.name} {protocol}: " + ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items()))
    prune(out / "features", {point.name for point in sources})
    atomic_write_json(out / "records.json", records)
    pipes.materialize({"records": len(records), "sources": len(sources), "path": out / "records.json"})
    return {"records": str(out / "records.json"), "sources": [p.name for p in sources], "seconds": timings,
            "values": {f"{r['source']} {r['protocol']} {r['metric']}": r["value"] for r in records}}


def prune(cache_dir: Path, keep: set[str]) -> None:
    """Remove the feature caches of sources this run no longer has (e.g. runs of an earlier scale)."""
    if cache_dir.is_dir():
        for path in cache_dir.iterdir():
            if path.is_dir() and path.name not in keep:
                shutil.rmtree(path)
