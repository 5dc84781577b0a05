"""The Dagster UI as `make ui` serves it: the webserver and the daemon on 127.0.0.1 over a tiny repository copy;
headless Chromium renders the asset graph and an asset's page; a materialization launched through the UI's
GraphQL API (what its "Materialize" button sends) is started by the daemon, succeeds, and leaves its DVC stage
recorded in dvc.lock."""
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from helpers import DVC, REPO, VENV_BIN, run

CHROMIUM = shutil.which("chromium")  # Debian's package (make setup installs it with the other APT_PACKAGES)
LAUNCH = """mutation($p: ExecutionParams!) { launchPipelineExecution(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
STATUS = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status tags { key value } } } }"
LOCATIONS = """query { workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(url: str, query: str, variables: dict) -> dict:
    request = urllib.request.Request(f"{url}/graphql", json.dumps({"query": query, "variables": variables}).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["data"]


def _page(url: str, *expected: str, tries: int = 3) -> str:
    """The page's DOM once its scripts have run (headless Chromium, up to 30 s of virtual time), rendered again
    (up to `tries` times) while any `expected` text is missing: on a busy machine the UI's data can arrive after
    the virtual-time budget."""
    for _ in range(tries):
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                              "--window-size=1600,1200", "--virtual-time-budget=30000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        if all(text in dom for text in expected):
            break
    return dom


def _wait_for_code_location(url: str, name: str, seconds: int = 300) -> None:
    """Until the webserver has loaded the code location (its definitions import in a code server process)."""
    for _ in range(seconds):
        entries = _graphql(url, LOCATIONS, {})["workspaceOrError"]["locationEntries"]
        entry = next((e for e in entries if e["name"] == name), None)
        if entry and entry["loadStatus"] == "LOADED":
            assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
            return
        time.sleep(1)
    raise AssertionError(f"code location {name} not loaded after {seconds} s: {entries}")


@pytest.mark.slow
def test_a_materialization_launched_from_the_ui_runs_and_is_recorded_by_dvc(repo_copy, tmp_path):
    assert CHROMIUM, "chromium not found: apt-get install chromium (make setup does)"
    (repo_copy / ".venv-dvc").symlink_to(REPO / ".venv-dvc")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "assets" / "dagster.yaml", home / "dagster.yaml")  # what `make dagster-home` installs,
    # and the storage it creates: started together on a fresh instance, the two servers race to create it
    run([str(VENV_BIN / "dagster"), "instance", "migrate"], cwd=repo_copy, env={"DAGSTER_HOME": str(home)})
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(repo_copy), "OMP_NUM_THREADS": "1",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "TOKENIZERS_PARALLELISM": "false"}
    logs = tmp_path / "logs.txt"
    with logs.open("w") as log:  # the two processes `make ui` starts
        servers = [subprocess.Popen([str(VENV_BIN / name), *args, "-w", "workspace.yaml"], cwd=repo_copy, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                   for name, args in (("dagster-daemon", ["run"]), ("dagster-webserver", ["-h", "127.0.0.1", "-p", str(port)]))]
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/server_info", timeout=5)
                break
            except OSError:
                assert all(p.poll() is None for p in servers), logs.read_text()[-3000:]
                time.sleep(1)
        _wait_for_code_location(url, "data2vec")
        lineage = _page(f"{url}/locations/data2vec/asset-groups/image/lineage", "Materialize all", "_probed")
        assert "Materialize all" in lineage and "_probed" in lineage, lineage[-2000:]

        params = {"selector": {"repositoryLocationName": "data2vec", "repositoryName": "__repository__",
                               "pipelineName": "__ASSET_JOB", "assetSelection": [{"path": ["image", "raw"]}],
                               "assetCheckSelection": []}, "runConfigData": {}}
        launched = _graphql(url, LAUNCH, {"p": params})["launchPipelineExecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        for _ in range(300):  # queued until the daemon starts it
            run_ = _graphql(url, STATUS, {"id": launched["run"]["runId"]})["runOrError"]
            if run_["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            time.sleep(1)
        assert run_["status"] == "SUCCESS", logs.read_text()[-3000:]
        tags = {t["key"]: t["value"] for t in run_["tags"]}
        assert {"d2v2/git_commit", "d2v2/params_sha256"} <= set(tags)

        expected = ("Owners", "prepare@image", "dvc_lock_md5")
        page = _page(f"{url}/assets/image/raw", *expected)
        assert all(s in page for s in expected), page[-2000:]  # with its dvc.lock md5
        assert run([str(DVC), "status", "prepare@image"], cwd=repo_copy).stdout.strip() == "Data and pipelines are up to date."
    finally:
        for process in servers:  # the daemon and webserver started above, with their children (code servers)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in servers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
