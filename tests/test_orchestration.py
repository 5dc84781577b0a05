"""Dagster and DVC drive the same stages: definitions load, a job runs via `dagster job execute`, `dvc repro`
runs end to end and is a no-op the second time, and the two DAGs are the same graph."""
import json
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
    assert expected <= keys
    for job in ("demo", "image_pipeline", "speech_pipeline", "text_pipeline"):
        assert defs.resolve_job_def(job) is not None


def test_loading_the_code_location_does_not_import_torch():
    code = "import sys, assets; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def _dvc_stages() -> dict[str, dict]:
    """dvc.yaml stages with `foreach` expanded: {"shard@image": {"deps": [...], "outs": [...]}}."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = {}
    for name, stage in spec["stages"].items():
        items = stage.get("foreach", [None])
        body = stage.get("do", stage)
        for item in items:
            sub = lambda v: v.replace("${item}", item) if item else v  # noqa: E731
            stages[f"{name}@{item}" if item else name] = {
                "deps": [sub(d) for d in body.get("deps", [])],
                "outs": [sub(o) for o in body.get("outs", [])],
                "cmd": sub(body["cmd"]),
            }
    return stages


def test_dagster_asset_graph_equals_dvc_stage_graph():
    from assets import defs

    stages = _dvc_stages()
    producer = {out: name for name, s in stages.items() for out in s["outs"]}
    dvc_edges = {(producer[d], name) for name, s in stages.items() for d in s["deps"] if d in producer}

    graph = defs.resolve_asset_graph()
    stage_of = {}
    for key in graph.get_all_asset_keys():
        spec = graph.get(key)
        if "dvc_stage" in spec.metadata:
            stage_of[key] = spec.metadata["dvc_stage"]
    dagster_edges = {(stage_of[p], stage_of[k]) for k in stage_of for p in graph.get(k).parent_keys if p in stage_of}
    assert set(stage_of.values()) == set(stages)
    assert dagster_edges == dvc_edges
    # and each asset's DVC stage runs the CLI stage of the same name for the same modality
    for key, stage in stage_of.items():
        name, modality = stage.split("@")
        assert f"-m pipeline {name} --modality {modality}" in stages[stage]["cmd"]


@pytest.mark.slow
def test_dagster_job_execute_runs_a_modality(repo_copy, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    result = run([str(VENV_BIN / "dagster"), "job", "execute", "-m", "assets", "-j", "image_pipeline"],
                 cwd=repo_copy, env={"DAGSTER_HOME": str(home)})
    log = result.stdout + result.stderr
    assert "RUN_SUCCESS" in log
    assert "Asset check 'shards_match_index' on 'image/shards' passed" in log
    shards = repo_copy / "data" / "shards" / "image"
    assert verify_index(shards) == []
    assert json.loads((shards / "index.json").read_text())["splits"]["train"]["num_samples"] == 64
    assert any(home.joinpath("history").rglob("*")) or any(home.rglob("*.db"))  # the run persisted in DAGSTER_HOME


@pytest.mark.slow
def test_dvc_repro_end_to_end_then_no_op(repo_copy):
    first = run([str(DVC), "repro"], cwd=repo_copy)
    assert first.stdout.count("Running stage") == 8
    for modality in ("image", "speech", "text"):
        assert verify_index(repo_copy / "data" / "shards" / modality) == []
    for modality in ("text", "speech"):
        assert (repo_copy / "data" / "tokenizers" / modality / "tokenizer.json").exists()
    lock = yaml.safe_load((repo_copy / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(_dvc_stages())
    second = run([str(DVC), "repro"], cwd=repo_copy)
    assert "Running stage" not in second.stdout
    assert run([str(DVC), "status"], cwd=repo_copy).stdout.strip() == "Data and pipelines are up to date."
