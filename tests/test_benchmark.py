"""The benchmark path end to end on tiny data: baselines pretrain through the same entry point, the sweep
fine-tunes every budget checkpoint, and the report is built from the sweeps (no timing is asserted)."""
import json
import sys

import pytest

from conftest import TINY_PARAMS, run, write_params


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from pipeline.params import Shard
    from pipeline.prepare import prepare
    from pipeline.shard import shard
    from pipeline.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("bench")
    params = json.loads(json.dumps(TINY_PARAMS))
    for modality in ("image", "speech", "text"):
        params["pretrain"][modality]["checkpoint_fractions"] = [0.5, 1.0]
    write_params(root / "params.yaml", params)
    for modality in ("image", "speech", "text"):
        raw = root / "data" / "raw" / modality
        prepare(modality, params, raw, progress=False)
        shard(modality, raw, root / "data" / "shards" / modality, Shard(**params[modality]["shard"]), progress=False)
    for modality in ("speech", "text"):
        train_tokenizer(modality, params, root / "data" / "shards" / modality, root / "data" / "tokenizers" / modality / "tokenizer.json")
    return root


def pretrain(root, modality, method):
    run([sys.executable, "-m", "pipeline", "pretrain", "--modality", modality, "--method", method, "--workers", "0",
         "--no-progress"], cwd=root)
    return json.loads((root / "models" / modality / method / "pretrain" / "summary.json").read_text())


@pytest.mark.parametrize("modality,method", [("image", "mae"), ("image", "data2vec1"), ("speech", "wav2vec2"), ("text", "mlm")])
def test_every_baseline_pretrains_through_the_same_entry_point(bench, modality, method):
    summary = pretrain(bench, modality, method)
    assert summary["method"] == method and summary["updates"] == 3 and summary["final_loss"] == summary["final_loss"]
    names = sorted(p.name for p in (bench / "models" / modality / method / "pretrain").glob("budget-*.pt"))
    assert names == ["budget-0.5.pt", "budget-1.pt"]


def test_sweep_then_report(bench):
    for method in ("data2vec2", "mae"):
        if not (bench / "models" / "image" / method / "pretrain" / "budget-1.pt").exists():
            pretrain(bench, "image", method)
    for method in ("data2vec2", "mae", "scratch"):
        run([sys.executable, "-m", "pipeline", "sweep", "--modality", "image", "--method", method, "--workers", "0",
             "--no-progress"], cwd=bench)
    curve = json.loads((bench / "models" / "image" / "mae" / "sweep" / "fashion_mnist" / "curve.json").read_text())
    assert [r["pretrain_updates"] for r in curve] == [2, 3]  # budget-0.5 after 2 of 3 updates, budget-1 after 3
    assert all(r["metric"] == "top1" and 0 <= r["value"] <= 1 and r["task"] == "fashion_mnist" for r in curve)
    scratch = json.loads((bench / "models" / "image" / "scratch" / "sweep" / "fashion_mnist" / "curve.json").read_text())
    assert len(scratch) == 1 and scratch[0]["pretrain_seconds"] == 0

    result = json.loads(run([sys.executable, "-m", "pipeline", "report"], cwd=bench).stdout)
    assert result["records"] == 5
    records = json.loads((bench / "reports" / "metrics.json").read_text())
    keys = {"modality", "method", "preset", "pretrain_seconds", "pretrain_updates", "pretrain_samples", "device",
            "world_size", "task", "metric", "value", "split", "git_commit", "dvc_stage_hash"}
    assert all(keys <= set(r) for r in records)
    assert {r["dvc_stage_hash"] for r in records} == {"not in dvc.lock"}  # run outside DVC, and the report says so
    md = (bench / "reports" / "benchmark.md").read_text()
    assert "## image: fashion_mnist" in md and "| mae |" in md and "## Effective batch per pretraining run" in md
    assert (bench / "reports" / "plots" / "image-fashion_mnist-top1.png").exists()
    assert "data:image/png;base64," in (bench / "reports" / "benchmark.html").read_text()
    headline = json.loads((bench / "reports" / "headline.json").read_text())
    assert "data2vec2_best_top1" in headline["image"]["fashion_mnist"]
