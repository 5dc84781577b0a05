"""Dagster and DVC drive the same stages: definitions load, a job runs via `dagster job execute`, `dvc repro`
runs end to end and is a no-op the second time, and the two DAGs are the same graph."""
import json
import re
import subprocess
import sys

import dagster as dg
import pytest
import yaml

from conftest import DVC, REPO, VENV_BIN, run
from pipeline.shard_writer import verify_index


def test_definitions_load_with_expected_assets_and_jobs():
    from assets import defs

    dg.Definitions.validate_loadable(defs)
    keys = {"/".join(k.path) for k in defs.resolve_all_asset_keys()}
    expected = {f"{m}/{a}" for m in ("image", "speech", "text") for a in ("raw", "shards")} | {"text/tokenizer", "speech/tokenizer"}
    expected |= {f"{m}/{method}/finetuned" for m in ("image", "speech", "text") for method in ("data2vec2", "scratch")}
    expected |= {"image/data2vec2/linear_probe"}
    assert expected <= keys
    for job in ("demo", "image_pipeline", "speech_pipeline", "text_pipeline"):
        assert defs.resolve_job_def(job) is not None


def test_loading_the_code_location_does_not_import_torch():
    code = "import sys, assets; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def _dvc_graph() -> tuple[set[str], set[tuple[str, str]]]:
    """DVC's own view of dvc.yaml (foreach and matrix expanded): stage names and dependency edges."""
    dot = run([str(DVC), "dag", "--dot"], cwd=REPO).stdout
    edges = {(a, b) for a, b in re.findall(r'"([^"]+)" -> "([^"]+)"', dot)}
    nodes = set(re.findall(r'^\s*"([^"]+)";', dot, flags=re.M)) | {n for e in edges for n in e}
    return nodes, edges


def test_dagster_asset_graph_equals_dvc_stage_graph():
    from assets import defs

    stages, dvc_edges = _dvc_graph()
    graph = defs.resolve_asset_graph()
    stage_of = {}
    for key in graph.get_all_asset_keys():
        spec = graph.get(key)
        if "dvc_stage" in spec.metadata:
            stage_of[key] = spec.metadata["dvc_stage"]
    dagster_edges = {(stage_of[p], stage_of[k]) for k in stage_of for p in graph.get(k).parent_keys if p in stage_of}
    assert set(stage_of.values()) == stages
    assert dagster_edges == dvc_edges


@pytest.mark.slow
def test_dagster_job_execute_runs_a_modality(repo_copy, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    result = run([str(VENV_BIN / "dagster"), "job", "execute", "-m", "assets", "-j", "image_pipeline"],
                 cwd=repo_copy, env={"DAGSTER_HOME": str(home)})
    log = result.stdout + result.stderr
    assert "RUN_SUCCESS" in log
    assert "Asset check 'shards_match_index' on 'image/shards' passed" in log
    # the pretraining subprocess reported back through Dagster Pipes (rank 0)
    assert "update 3: loss" in log
    shards = repo_copy / "data" / "shards" / "image"
    assert verify_index(shards) == []
    assert json.loads((shards / "index.json").read_text())["splits"]["train"]["num_samples"] == 64
    ckpt = repo_copy / "models" / "image" / "data2vec2" / "pretrain" / "last.pt"
    assert ckpt.exists()
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["image", "data2vec2", "pretrained"]))
    metadata = event.asset_materialization.metadata
    assert metadata["final_loss"].value > 0 and metadata["samples_per_s"].value > 0
    assert "data:image/png;base64" in metadata["loss_curve"].value
    # fine-tuned from that checkpoint and from scratch, each reporting its test metric and confusion matrix
    for key in (["image", "data2vec2", "finetuned"], ["image", "scratch", "finetuned"], ["image", "data2vec2", "linear_probe"]):
        with DagsterInstance.from_config(str(home)) as instance:
            metadata = instance.get_latest_materialization_event(dg.AssetKey(key)).asset_materialization.metadata
        assert metadata["metric"].value == "top1" and 0 <= metadata["top1"].value <= 1, key
        assert "data:image/png;base64" in metadata["confusion_matrix"].value
    metrics = json.loads((repo_copy / "models/image/data2vec2/finetune/fashion_mnist/metrics.json").read_text())
    assert metrics["pretrain_updates"] == 3 and metrics["finetune_updates"] == 4
    assert any(home.joinpath("history").rglob("*")) or any(home.rglob("*.db"))  # the run persisted in DAGSTER_HOME


@pytest.mark.slow
def test_dvc_repro_end_to_end_then_no_op(repo_copy):
    first = run([str(DVC), "repro"], cwd=repo_copy)
    assert first.stdout.count("Running stage") == 18  # 3 prepare, 3 shard, 2 tokenizer, 3 pretrain, 7 fine-tuning
    for modality in ("image", "speech", "text"):
        assert verify_index(repo_copy / "data" / "shards" / modality) == []
    for modality in ("text", "speech"):
        assert (repo_copy / "data" / "tokenizers" / modality / "tokenizer.json").exists()
    lock = yaml.safe_load((repo_copy / "dvc.lock").read_text())
    assert set(lock["stages"]) == _dvc_graph()[0]
    for modality in ("image", "speech", "text"):
        summary = json.loads((repo_copy / "models" / modality / "data2vec2" / "pretrain" / "summary.json").read_text())
        assert summary["updates"] == 3 and summary["final_loss"] > 0
    metric_of = {"image": "top1", "speech": "wer", "text": "accuracy"}
    task_of = {"image": "fashion_mnist", "speech": "synth", "text": "lexname"}
    for modality in ("image", "speech", "text"):
        for method in ("data2vec2", "scratch"):
            result = json.loads((repo_copy / "models" / modality / method / "finetune" / task_of[modality] / "metrics.json").read_text())
            assert (result["method"], result["metric"], result["split"]) == (method, metric_of[modality], "test")
            assert result["pretrain_updates"] == (3 if method == "data2vec2" else 0)
    shown = run([str(DVC), "metrics", "show", "--json"], cwd=repo_copy).stdout
    assert "models/text/scratch/finetune/lexname/metrics.json" in shown
    second = run([str(DVC), "repro"], cwd=repo_copy)
    assert "Running stage" not in second.stdout
    assert run([str(DVC), "status"], cwd=repo_copy).stdout.strip() == "Data and pipelines are up to date."
