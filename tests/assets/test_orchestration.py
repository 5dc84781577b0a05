"""Dagster and DVC drive the same stages: definitions load, a job runs via `dagster job execute`, `dvc repro`
runs end to end and is a no-op the second time, and the two DAGs are the same graph."""
import json
import re
import subprocess
import sys

import dagster as dg
import pytest
import yaml

from helpers import DVC, REPO, VENV_BIN, run
from pipeline.config import benchmark, load
from pipeline.data.shard_writer import verify_index

PRETRAIN_METHODS = {m: b.methods for m, b in benchmark(load(REPO / "params.yaml")).items()}


def test_definitions_load_with_expected_assets_and_jobs():
    from assets import defs

    dg.Definitions.validate_loadable(defs)
    keys = {"/".join(k.path) for k in defs.resolve_all_asset_keys()}
    expected = {f"{m}/{a}" for m in ("image", "speech", "text") for a in ("raw", "shards", "throughput")}
    expected |= {"text/tokenizer", "speech/tokenizer", "image/data2vec2/linear_probe", "benchmark_report"}
    for modality, methods in PRETRAIN_METHODS.items():
        expected |= {f"{modality}/{method}/pretrained" for method in methods}
        expected |= {f"{modality}/{method}/finetuned" for method in (*methods, "scratch")}
    assert keys == expected
    for job in ("demo", "image_pipeline", "speech_pipeline", "text_pipeline"):
        assert defs.resolve_job_def(job) is not None
    graph = defs.resolve_asset_graph()
    report_inputs = {"/".join(k.path) for k in graph.get(dg.AssetKey("benchmark_report")).parent_keys}
    assert report_inputs == {k for k in expected if k.endswith("/finetuned") or k.endswith("/throughput")}


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


METRIC_OF = {"image": "top1", "speech": "wer", "text": "accuracy"}
TASK_OF = {"image": "fashion_mnist", "speech": "synth", "text": "lexname"}
RECORD_KEYS = {"modality", "method", "preset", "pretrain_seconds", "pretrain_updates", "pretrain_samples", "device",
               "world_size", "task", "metric", "value", "split", "git_commit", "dvc_stage_hash"}


def check_benchmark_outputs(repo) -> list[dict]:
    """What both orchestrators must leave behind: every method's sweep and the report built from all of them."""
    records = json.loads((repo / "reports" / "metrics.json").read_text())
    assert all(RECORD_KEYS <= set(r) for r in records)
    for modality, methods in PRETRAIN_METHODS.items():
        for method in methods:
            mine = [r for r in records if (r["modality"], r["method"], r["metric"]) == (modality, method, METRIC_OF[modality])]
            # budget-0.5 after 2 of 3 updates, budget-1 after 3, each fine-tuned and tested
            assert [r["pretrain_updates"] for r in mine] == [2, 3], (modality, method)
            assert all((r["task"], r["split"]) == (TASK_OF[modality], "test") for r in mine)
            assert mine[0]["pretrain_seconds"] < mine[1]["pretrain_seconds"]
        scratch = [r for r in records if (r["modality"], r["method"], r["metric"]) == (modality, "scratch", METRIC_OF[modality])]
        assert len(scratch) == 1 and scratch[0]["pretrain_seconds"] == 0
    # 3 modalities x (3 methods x 2 budgets + scratch), and speech's second curve (test CTC loss) for each run
    assert len(records) == 21 + 7 and sum(r["metric"] == "ctc_loss" for r in records) == 7
    md = (repo / "reports" / "benchmark.md").read_text()
    for section in ("## Headline", "## image: fashion_mnist", "## speech: synth", "## text: lexname", "## Throughput and MFU",
                    "## Where we agree and disagree with the paper", "## Effective batch per pretraining run", "## Provenance"):
        assert section in md, section
    for method in ("data2vec1", "mae", "wav2vec2", "mlm", "scratch"):
        assert f"| {method} |" in md
    throughput = [t for m in PRETRAIN_METHODS for t in json.loads((repo / "reports" / "throughput" / f"{m}.json").read_text())]
    assert sorted((t["modality"], t["method"]) for t in throughput) == sorted(
        (m, method) for m, methods in PRETRAIN_METHODS.items() for method in methods)
    assert sorted(p.name for p in (repo / "reports" / "plots").iterdir()) == [
        "image-fashion_mnist-top1.png", "speech-synth-ctc_loss.png", "speech-synth-wer.png", "text-lexname-accuracy.png"]
    page = (repo / "reports" / "benchmark.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "<script" not in page
    headline = json.loads((repo / "reports" / "headline.json").read_text())
    assert {"data2vec2_best_top1", "mae_best_top1", "scratch_best_top1", "speedup_vs_mae"} <= set(headline["image"]["fashion_mnist"])
    return records


@pytest.mark.slow
def test_dagster_demo_job_runs_everything_to_the_report(repo_copy, tmp_path):
    """The `demo` job on a micro budget: data, every method's pretraining, the sweeps, throughput, the report."""
    from dagster import DagsterInstance

    from assets import defs

    home = tmp_path / "dagster_home"
    home.mkdir()
    result = run([str(VENV_BIN / "dagster"), "job", "execute", "-m", "assets", "-j", "demo"],
                 cwd=repo_copy, env={"DAGSTER_HOME": str(home)}, timeout=1500)
    log = result.stdout + result.stderr
    assert "RUN_SUCCESS" in log
    for modality in ("image", "speech", "text"):
        assert f"Asset check 'shards_match_index' on '{modality}/shards' passed" in log
        assert verify_index(repo_copy / "data" / "shards" / modality) == []
    assert "update 3: loss" in log  # pretraining reported back through Dagster Pipes (rank 0)
    assert json.loads((repo_copy / "data/shards/image/index.json").read_text())["splits"]["train"]["num_samples"] == 64

    with DagsterInstance.from_config(str(home)) as instance:
        def metadata(*key):
            event = instance.get_latest_materialization_event(dg.AssetKey(list(key)))
            assert event is not None, key
            return event.asset_materialization.metadata

        for key in defs.resolve_all_asset_keys():  # everything materialized in this one run
            metadata(*key.path)
        for modality, methods in PRETRAIN_METHODS.items():
            for method in methods:
                pretrained = metadata(modality, method, "pretrained")
                assert pretrained["final_loss"].value > 0 and pretrained["updates"].value == 3, (modality, method)
                assert "data:image/png;base64" in pretrained["loss_curve"].value
            for method in (*methods, "scratch"):
                # the sweep reports its curve and the full-budget run's result, not one report per fine-tuning run
                finetuned = metadata(modality, method, "finetuned")
                assert finetuned["metric"].value == METRIC_OF[modality], (modality, method)
                assert finetuned["curve"].value.count("\n") == (3 if method == "scratch" else 4)  # header, rule, rows
                if modality == "speech":
                    assert "| reference | hypothesis |" in finetuned["samples"].value
                else:
                    assert "data:image/png;base64" in finetuned["confusion_matrix"].value
            assert "MFU" in str(metadata(modality, "throughput")["throughput"].value)
        probe = metadata("image", "data2vec2", "linear_probe")
        assert probe["metric"].value == "top1" and 0 <= probe["top1"].value <= 1
        report = metadata("benchmark_report")
        assert report["records"].value == 28 and "## Headline" in report["report"].value
        assert "data:image/png;base64" in report["plot_image-fashion_mnist-top1"].value

    records = check_benchmark_outputs(repo_copy)
    assert {r["dvc_stage_hash"] for r in records} == {"not in dvc.lock"}  # run outside DVC, and the record says so
    assert any(home.joinpath("history").rglob("*")) or any(home.rglob("*.db"))  # the run persisted in DAGSTER_HOME


@pytest.mark.slow
def test_dvc_repro_end_to_end_then_no_op(repo_copy):
    first = run([str(DVC), "repro"], cwd=repo_copy, timeout=1500)
    # 3 prepare, 3 shard, 2 tokenizer, 9 pretrain, 12 sweeps, 1 linear probe, 3 throughput, 1 report
    assert first.stdout.count("Running stage") == 34
    for modality in ("image", "speech", "text"):
        assert verify_index(repo_copy / "data" / "shards" / modality) == []
    for modality in ("text", "speech"):
        assert (repo_copy / "data" / "tokenizers" / modality / "tokenizer.json").exists()
    lock = yaml.safe_load((repo_copy / "dvc.lock").read_text())
    assert set(lock["stages"]) == _dvc_graph()[0]
    records = check_benchmark_outputs(repo_copy)
    # each number is tied to the dvc.lock entry of the sweep that produced it
    outs = {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])}
    for r in records:
        assert r["dvc_stage_hash"] == outs[f"models/{r['modality']}/{r['method']}/sweep"]
    shown = json.loads(run([str(DVC), "metrics", "show", "--json"], cwd=repo_copy).stdout)
    assert "data2vec2_best_top1" in json.dumps(shown) and "reports/headline.json" in json.dumps(shown)
    plots = run([str(DVC), "plots", "show", "--json", "reports/metrics.json"], cwd=repo_copy).stdout
    assert "pretrain_seconds" in plots
    second = run([str(DVC), "repro"], cwd=repo_copy)
    assert "Running stage" not in second.stdout
    assert run([str(DVC), "status"], cwd=repo_copy).stdout.strip() == "Data and pipelines are up to date."
