"""The Pipes adapter: silent outside Dagster, plain values and a path inside it, and the only module of
pipeline/ that imports Dagster."""
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg

from helpers import REPO
from pipeline.train.pipes import PipesReport, without_pipes

REPORTING_RUN = """
from pathlib import Path
from pipeline.train.pipes import PipesReport
report = PipesReport()
report.log("update 3: loss 1.5000")
report.materialize({"final_loss": 1.5, "updates": 3, "stop_reason": "budget", "skipped": None, "path": Path("models/x")})
report.materialize({"final_loss": 9.0})  # a second report is dropped: one materialization per asset and step
"""

# pretrain --benchmark: several runs in one process, each finishing with its own report, then the stage's
HOLDING_RUN = """
from pathlib import Path
from pipeline.train.pipes import PipesReport
with PipesReport.holding():
    for updates in (2, 4):
        run = PipesReport()
        run.log(f"update {updates}: loss 1.0000")
        run.materialize({"updates": updates, "path": Path(f"models/x/s0-u{updates}")})
PipesReport().materialize({"runs": 2, "path": Path("models/x")})
"""


def _materialize_under_pipes(code: str, tmp_path: Path) -> tuple[dict, list[str]]:
    @dg.asset
    def run(context: dg.AssetExecutionContext, pipes_subprocess_client: dg.PipesSubprocessClient):
        return pipes_subprocess_client.run(command=[sys.executable, "-c", code], context=context,
                                           cwd=str(REPO)).get_materialize_result()

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.materialize([run], instance=instance, resources={"pipes_subprocess_client": dg.PipesSubprocessClient()})
        assert result.success
        materializations = result.asset_materializations_for_node("run")
        assert len(materializations) == 1
        logs = [e.message for e in instance.all_logs(result.run_id) if e.user_message]
    return materializations[0].metadata, logs

def test_fine_tuning_runs_do_not_report_to_dagster(monkeypatch):
    monkeypatch.setenv("DAGSTER_PIPES_CONTEXT", "x")
    monkeypatch.setenv("DAGSTER_PIPES_MESSAGES", "y")
    env = without_pipes()
    assert "DAGSTER_PIPES_CONTEXT" not in env and "DAGSTER_PIPES_MESSAGES" not in env and "PATH" in env


def test_outside_pipes_every_call_is_a_silent_no_op(monkeypatch):
    monkeypatch.delenv("DAGSTER_PIPES_CONTEXT", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dagster_pipes warns when opened outside Dagster; we must not open it
        report = PipesReport()
        report.log("nothing")
        report.materialize({"loss": 1.0, "path": Path("x")})
        report.close()
    assert not report.active


def test_under_pipes_plain_values_and_the_path_reach_the_materialization(tmp_path):
    metadata, logs = _materialize_under_pipes(REPORTING_RUN, tmp_path)
    assert (metadata["final_loss"].value, metadata["updates"].value, metadata["stop_reason"].value) == (1.5, 3, "budget")
    assert metadata["path"] == dg.MetadataValue.path("models/x") and "skipped" not in metadata
    assert any("update 3: loss 1.5000" in m for m in logs)


def test_only_the_adapter_imports_dagster():
    found = subprocess.run(["grep", "-rlE", r"^\s*(from|import) dagster", "pipeline"], cwd=REPO, capture_output=True, text=True)
    assert found.stdout.split() == ["pipeline/train/pipes.py"]


def test_runs_under_holding_log_and_the_stage_reports_once(tmp_path):
    metadata, logs = _materialize_under_pipes(HOLDING_RUN, tmp_path)
    assert metadata["runs"].value == 2 and metadata["path"] == dg.MetadataValue.path("models/x") and "updates" not in metadata
    assert all(any(f"update {u}: loss" in m for m in logs) for u in (2, 4))
