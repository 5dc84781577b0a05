"""The `probe` stage end to end, in one process, on tiny shards of each modality: a pretraining method's runs
(runs.json pointing at tiny checkpoints) and both floors, every protocol of the modality, the record schema, the
feature cache read back on a second run with the same values."""
import json

import pytest
import torch
import yaml

from helpers import TINY_PARAMS, write_params
from model import build_model, config_from_dict
from pipeline import cli
from pipeline.benchmark import features, probe
from pipeline.config import Shard
from pipeline.data.prepare import prepare
from pipeline.data.shard import shard
from pipeline.data.tokenizer import train_tokenizer
from pipeline.train import checkpoint

PROBE_SIZES = {"image": {"train": 24, "valid": 8, "test": 8}, "speech": {"train": 6, "valid": 2, "test": 2},
               "text": {"train": 40, "valid": 10, "test": 10}}
BENCHMARK = {
    "image": {"methods": ["data2vec2", "data2vec1", "mae"], "task": "fashion_mnist", "probes": ["knn", "linear"],
              "pooling": "mean", "layer": None, "finetune": "final"},
    "speech": {"methods": ["data2vec2", "data2vec1", "wav2vec2"], "task": "synth", "probes": ["ctc_probe"],
               "pooling": "frames", "layer": None, "finetune": "final"},
    "text": {"methods": ["data2vec2", "data2vec1", "mlm"], "task": "lexname", "probes": ["knn", "linear"],
             "pooling": "mean", "layer": None, "finetune": "final"},
}
SEEDS = [0, 1]
SCHEMA = {"modality", "method", "preset", "seed", "pretrain_updates", "pretrain_samples", "pretrain_seconds",
          "pretrain_flops", "device", "world_size", "protocol", "task", "metric", "value", "split", "git_commit",
          "dvc_stage_hash", "layer", "pooling", "selected", "counts"}
METRICS = {"image": {"top1"}, "text": {"accuracy"}, "speech": {"wer", "cer", "ctc_loss"}}
# two runs of one seed, as `pretrain --benchmark` lists them; each checkpoint a tiny encoder of its own weights
RUNS = [{"seed": 0, "updates": 1, "name": "s0-u1", "train_seconds": 0.5, "flops_per_update": 1000},
        {"seed": 0, "updates": 2, "name": "s0-u2", "train_seconds": 1.25, "flops_per_update": 1000}]


def benchmark_params(modality: str) -> dict:
    params = yaml.safe_load(yaml.safe_dump(TINY_PARAMS))
    max_updates = {m: {method: 2 for method in BENCHMARK[m]["methods"]} for m in BENCHMARK}
    scale = {"seeds": SEEDS, "budget_fractions": [0.5, 1.0], "probe_sizes": PROBE_SIZES, "max_updates": max_updates,
             "finetune": True}
    params["benchmark"] = {"scale": "demo", "scales": {"demo": scale}, **BENCHMARK}
    return params


def fabricate_runs(root, modality: str) -> list[dict]:
    """models/<modality>/data2vec2/pretrain/runs.json and a checkpoint per run, as the Pretrainer saves them."""
    params_path = root / "params.yaml"
    tokenizer = root / "data" / "tokenizers" / modality / "tokenizer.json" if modality != "image" else None
    preset, model_config = probe.data2vec2_config(modality, params_path, tokenizer)
    pretrain_dir = root / "models" / modality / "data2vec2" / "pretrain"
    runs = []
    for k, run in enumerate(RUNS):
        torch.manual_seed(10 + k)
        model = build_model(config_from_dict(model_config))
        path = pretrain_dir / run["name"] / "last.pt"
        path.parent.mkdir(parents=True)
        checkpoint.save(path, {"student": model.state_dict(), "teacher": None, "update": run["updates"],
                               "train_seconds": run["train_seconds"],
                               "config": {"model": model_config, "pretrain": {"method": "data2vec2", "preset": preset}}})
        runs.append({**run, "path": str(path.relative_to(root)), "pretrain_flops": run["flops_per_update"] * run["updates"],
                     "samples": 4 * run["updates"], "preset": preset, "device": "cpu", "world_size": 1,
                     "effective_batch": {"samples_per_update": 4}})
    (pretrain_dir / "runs.json").write_text(json.dumps(runs))
    return runs


@pytest.fixture(scope="module", params=["image", "speech", "text"])
def workdir(request, tmp_path_factory):
    """(modality, folder): params.yaml with a benchmark block, tiny shards, the tokenizer, a data2vec2 runs.json."""
    modality = request.param
    root = tmp_path_factory.mktemp(f"probe-{modality}")
    params = benchmark_params(modality)
    write_params(root / "params.yaml", params)
    raw = root / "data" / "raw" / modality
    prepare(modality, params, raw, progress=False)
    shard(modality, raw, root / "data" / "shards" / modality, Shard(**params[modality]["shard"]), progress=False)
    if modality != "image":
        train_tokenizer(modality, params, root / "data" / "shards" / modality,
                        root / "data" / "tokenizers" / modality / "tokenizer.json")
    fabricate_runs(root, modality)
    return modality, root


def probe_stage(modality: str, method: str, capsys, *extra: str) -> dict:
    assert cli.main(["probe", "--modality", modality, "--method", method, "--no-progress", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def records(root, modality: str, method: str) -> list[dict]:
    return json.loads((root / "models" / modality / method / "probe" / "records.json").read_text())


def test_probe_records_for_a_method_and_both_floors(workdir, monkeypatch, capsys):
    modality, root = workdir
    monkeypatch.chdir(root)
    protocols = set(BENCHMARK[modality]["probes"])
    runs = json.loads((root / "models" / modality / "data2vec2" / "pretrain" / "runs.json").read_text())
    expected_sources = {"data2vec2": [r["name"] for r in runs], "random_init": [f"s{s}" for s in SEEDS],
                        "raw_input": ["raw"]}
    for method, sources in expected_sources.items():
        summary = probe_stage(modality, method, capsys)
        assert summary["sources"] == sources
        assert all(set(summary["seconds"][s]) == {"features", *protocols} for s in sources)
        got = records(root, modality, method)
        for r in got:
            assert SCHEMA <= set(r), SCHEMA - set(r)
            assert (r["modality"], r["method"], r["task"], r["split"]) == (modality, method, BENCHMARK[modality]["task"], "test")
            assert r["protocol"] in protocols and r["metric"] in METRICS[modality]
            assert (r["layer"], r["pooling"]) == (None, BENCHMARK[modality]["pooling"])
            assert r["git_commit"] is None and r["dvc_stage_hash"] is None  # the report stage fills them in
            assert r["counts"]["train"] == PROBE_SIZES[modality]["train"] or modality == "speech"
            assert r["preset"] == "tiny"
            if r["metric"] in ("top1", "accuracy", "wer", "cer"):
                assert 0.0 <= r["value"] <= (1.0 if r["metric"] in ("top1", "accuracy") else 10.0)
        assert {(r["source"], r["protocol"], r["metric"]) for r in got} == {
            (s, p, m) for s in sources for p in protocols for m in METRICS[modality]}
        if method == "data2vec2":  # the pretraining cost, copied from runs.json
            by_source = {r["source"]: r for r in got}
            for run in runs:
                r = by_source[run["name"]]
                assert (r["seed"], r["pretrain_updates"], r["pretrain_seconds"], r["pretrain_flops"], r["pretrain_samples"],
                        r["device"], r["world_size"]) == (0, run["updates"], run["train_seconds"], run["pretrain_flops"],
                                                          run["samples"], "cpu", 1)
                assert r["checkpoint"] == run["path"]
        else:  # floors: no pretraining
            assert {(r["pretrain_updates"], r["pretrain_seconds"], r["pretrain_flops"], r["pretrain_samples"]) for r in got} == {(0, 0.0, 0, 0)}
            assert sorted({r["seed"] for r in got}, key=str) == (SEEDS if method == "random_init" else [None])
        assert sorted(p.name for p in (root / "models" / modality / method / "probe" / "features").iterdir()) == sorted(sources)


def test_a_second_run_reads_the_cache_and_gives_the_same_records(workdir, monkeypatch, capsys):
    modality, root = workdir
    monkeypatch.chdir(root)
    probe_stage(modality, "random_init", capsys)
    first = records(root, modality, "random_init")
    cache = root / "models" / modality / "random_init" / "probe" / "features"
    mtimes = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    assert len([p for p in mtimes if p.suffix == ".pt"]) == 3 * len(SEEDS)  # train, valid, test per seed

    def no_extraction(*args, **kwargs):
        raise AssertionError("extracted again instead of reading the cache")

    monkeypatch.setattr(features, "extract", no_extraction)
    probe_stage(modality, "random_init", capsys)
    assert records(root, modality, "random_init") == first
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == mtimes


@pytest.mark.parametrize("workdir", ["image"], indirect=True)  # one modality: the same code extracts every one
def test_extraction_is_deterministic(workdir, monkeypatch, capsys):
    modality, root = workdir
    monkeypatch.chdir(root)
    out = root / "models" / modality / "data2vec2" / "probe"
    probe_stage(modality, "data2vec2", capsys)
    first = (out / "records.json").read_bytes()
    probe_stage(modality, "data2vec2", capsys, "--out", str(root / "again"))
    assert (root / "again" / "records.json").read_bytes() == first


@pytest.mark.parametrize("workdir", ["image"], indirect=True)  # the checks do not depend on the modality
def test_bad_inputs_are_one_line_errors(workdir, monkeypatch, capsys, tmp_path):
    _, root = workdir
    monkeypatch.chdir(root)
    assert cli.main(["probe", "--modality", "image", "--method", "mae"]) == 2
    assert "run `python -m pipeline pretrain --modality image --method mae --benchmark` first" in capsys.readouterr().err
    params = benchmark_params("image")
    params["benchmark"]["image"]["probes"] = ["ctc_probe"]
    write_params(tmp_path / "params.yaml", params)
    assert cli.main(["probe", "--modality", "image", "--method", "raw_input", "--params", str(tmp_path / "params.yaml")]) == 2
    assert "ctc_probe reads pooling frames" in capsys.readouterr().err
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "runs.json").write_text(json.dumps([{"seed": 0}]))
    assert cli.main(["probe", "--modality", "image", "--method", "data2vec2", "--pretrain-dir", str(tmp_path / "runs")]) == 2
    assert "runs.json: expected a non-empty list of runs" in capsys.readouterr().err


def test_final_runs_are_the_largest_budget_of_each_seed():
    runs = [{"seed": 1, "updates": 50}, {"seed": 0, "updates": 100}, {"seed": 0, "updates": 25}, {"seed": 1, "updates": 100}]
    assert probe.final_runs(runs) == [{"seed": 0, "updates": 100}, {"seed": 1, "updates": 100}]


@pytest.mark.parametrize("argv, says", [
    (["probe", "--modality", "image", "--method", "wav2vec2"], "(wav2vec2 is the speech baseline); image methods: "
     "data2vec2, data2vec1, mae, random_init, raw_input"),
    (["sweep", "--modality", "image", "--method", "mlm"], "(mlm is the text baseline); image methods: "
     "data2vec2, data2vec1, mae, scratch"),
    (["throughput", "--modality", "text", "--method", "data2vec2", "mae"], "(mae is the image baseline); text methods: "
     "data2vec2, data2vec1, mlm"),
])
def test_another_modalitys_method_is_one_line_before_any_work(argv, says, tmp_path, capsys):
    """probe, sweep and throughput refuse another modality's method as pretrain does (a probe used to point at
    `pretrain --modality image --method wav2vec2`, itself an error; a sweep wrote an empty curve)."""
    from helpers import REPO
    from pipeline.cli import main

    assert main([*argv, "--params", str(REPO / "params.yaml"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --method ") and err.endswith(says + "\n") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
