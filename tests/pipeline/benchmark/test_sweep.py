"""The fine-tuning protocol: which runs it fine-tunes (the final run of each seed of runs.json; scratch: one per
seed), its records, and one sweep end to end on tiny image shards."""
import argparse
import json
import sys

import pytest
import yaml

from helpers import TINY_PARAMS, run, write_params
from pipeline.benchmark.sweep import add_arguments, clear, finetune_command, record, runs_to_finetune
from pipeline.errors import UserInputError

RUNS = [{"seed": s, "updates": u, "name": f"s{s}-u{u}", "train_seconds": u / 10, "flops_per_update": 7,
         "pretrain_flops": 7 * u, "samples": 4 * u, "preset": "tiny", "device": "cpu", "world_size": 1,
         "effective_batch": {"samples_per_update": 4}} for s in (0, 1) for u in (2, 4)]


def params_with(seeds=(0, 1), finetune="final", scale_finetune=True) -> dict:
    params = yaml.safe_load(yaml.safe_dump(TINY_PARAMS))
    params["benchmark"]["scales"][params["benchmark"]["scale"]] |= {"seeds": list(seeds), "finetune": scale_finetune}
    params["benchmark"]["image"]["finetune"] = finetune
    return params


def sweep_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--modality", "image", *argv])


def write_runs(folder, runs=RUNS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for r in runs:
        (folder / r["name"]).mkdir(exist_ok=True)
        (folder / r["name"] / "last.pt").write_bytes(b"")
    (folder / "runs.json").write_text(json.dumps([{**r, "path": str(folder / r["name"] / "last.pt")} for r in runs]))


def test_the_final_run_of_each_seed_is_fine_tuned(tmp_path):
    write_runs(tmp_path / "pretrain")
    chosen = runs_to_finetune(sweep_args("--method", "mae", "--pretrain-dir", str(tmp_path / "pretrain")), params_with(), "t")
    assert [c["name"] for c in chosen] == ["s0-u4", "s1-u4"]
    assert chosen[1]["checkpoint"] == str(tmp_path / "pretrain" / "s1-u4" / "last.pt")
    assert chosen[1]["fields"] == {"preset": "tiny", "seed": 1, "pretrain_updates": 4, "pretrain_samples": 16,
                                   "pretrain_seconds": 0.4, "pretrain_flops": 28, "device": "cpu", "world_size": 1,
                                   "precision": None}  # the fixture's runs.json predates the field
    assert chosen[1]["effective_batch"] == {"samples_per_update": 4}
    with pytest.raises(UserInputError, match="--method mae --benchmark` first"):
        runs_to_finetune(sweep_args("--method", "mae", "--pretrain-dir", str(tmp_path / "missing")), params_with(), "t")


def test_scratch_is_one_run_per_seed_and_none_fine_tunes_nothing():
    chosen = runs_to_finetune(sweep_args("--method", "scratch"), params_with(seeds=(0, 2)), "fashion_mnist")
    assert [(c["name"], c["checkpoint"], c["fields"]["seed"]) for c in chosen] == [("scratch-s0", "none", 0), ("scratch-s2", "none", 2)]
    assert {(c["fields"]["pretrain_updates"], c["fields"]["pretrain_flops"], c["fields"]["pretrain_seconds"]) for c in chosen} == {(0, 0, 0.0)}
    assert runs_to_finetune(sweep_args("--method", "scratch"), params_with(finetune="none"), "fashion_mnist") == []


def test_a_scale_without_fine_tuning_fine_tunes_nothing(tmp_path):
    write_runs(tmp_path / "pretrain")
    params = params_with(scale_finetune=False)
    for method in ("mae", "scratch"):
        assert runs_to_finetune(sweep_args("--method", method, "--pretrain-dir", str(tmp_path / "pretrain")), params, "t") == []


def test_each_fine_tuning_run_gets_its_seed_and_the_sweep_flags():
    args = sweep_args("--method", "mae", "--max-updates", "5", "--workers", "0", "--no-progress")
    cmd = finetune_command(args, "fashion_mnist", "p/last.pt", "out/s1-u4", seed=1)
    assert cmd[cmd.index("--seed") + 1] == "1" and cmd[cmd.index("--max-updates") + 1] == "5"
    assert cmd[cmd.index("--checkpoint") + 1] == "p/last.pt" and "--no-progress" in cmd and "--fresh" in cmd


def test_clear_removes_only_an_earlier_sweep(tmp_path):
    for name in ("s0-u100", "scratch-s1", "budget-0.25", "scratch"):
        (tmp_path / name / "tb").mkdir(parents=True)
    (tmp_path / "curve.json").write_text("[]")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "mine").mkdir()
    clear(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "notes.txt"]


def test_record_follows_the_metrics_schema():
    metrics = {"task": "t", "metric": "top1", "value": 0.5, "split": "test", "checkpoint": "s0-u4/last.pt",
               "label_fraction": 1.0, "finetune_updates": 4}
    fields = {"preset": "tiny", "seed": 0, "pretrain_updates": 4, "pretrain_samples": 16, "pretrain_seconds": 0.4,
              "pretrain_flops": 28, "device": "cpu", "world_size": 1}
    r = record(metrics, "image", "mae", fields, {"samples_per_update": 4})
    assert {**r} == {"modality": "image", "method": "mae", **fields, "protocol": "finetune", "task": "t", "metric": "top1",
                     "value": 0.5, "split": "test", "git_commit": None, "dvc_stage_hash": None,
                     "checkpoint": "s0-u4/last.pt", "label_fraction": 1.0, "finetune_updates": 4,
                     "effective_batch": {"samples_per_update": 4}}


def test_a_sweep_fine_tunes_the_final_run_of_pretrain_benchmark(tmp_path):
    """pretrain --benchmark (TINY_PARAMS: runs of 2 and 4 updates) writes runs.json; the sweep fine-tunes the 4."""
    from pipeline.config import Shard
    from pipeline.data.prepare import prepare
    from pipeline.data.shard import shard

    params = params_with(seeds=(0,))
    write_params(tmp_path / "params.yaml", params)
    prepare("image", params, tmp_path / "raw", progress=False)
    shard("image", tmp_path / "raw", tmp_path / "data" / "shards" / "image", Shard(**params["image"]["shard"]), progress=False)
    run([sys.executable, "-m", "pipeline", "pretrain", "--modality", "image", "--method", "mae", "--benchmark",
         "--workers", "0", "--no-progress"], cwd=tmp_path)
    runs = json.loads((tmp_path / "models" / "image" / "mae" / "pretrain" / "runs.json").read_text())
    result = run([sys.executable, "-m", "pipeline", "sweep", "--modality", "image", "--method", "mae",
                  "--workers", "0", "--no-progress", "--max-updates", "2"], cwd=tmp_path)
    out = tmp_path / "models" / "image" / "mae" / "sweep" / "fashion_mnist"
    assert json.loads(result.stdout)["curve"] == str((out / "curve.json").relative_to(tmp_path))  # stdout: the summary only
    records = json.loads((out / "curve.json").read_text())
    final = max(runs, key=lambda r: r["updates"])
    assert [(r["protocol"], r["seed"], r["pretrain_updates"], r["pretrain_flops"], r["pretrain_seconds"], r["metric"])
            for r in records] == [("finetune", 0, 4, final["pretrain_flops"], final["train_seconds"], "top1")]
    assert records[0]["finetune_updates"] == 2 and (out / final["name"] / "metrics.json").exists()
