"""Dagster and DVC drive the same stages and keep one record: definitions load, the two DAGs are the same graph
(also as assets/dvc.py reads dvc.yaml), code versions follow the inputs DVC tracks; a job launched through the
code location runs everything and leaves `dvc status` clean with the report's hashes those of dvc.lock; `dvc repro`
runs end to end, is a no-op the second time, pushes to the default remote and pulls into a fresh clone that
regenerates the same report, runs `dvc exp run --temp`, and reproduces every score from clean model outputs."""
import json
import os
import re
import shutil
import subprocess
import sys

import dagster as dg
import pytest
import yaml

from helpers import DVC, REPO, VENV_BIN, run
from pipeline.config import benchmark, load
from pipeline.data.shard_writer import verify_index

PRETRAIN_METHODS = {m: b.methods for m, b in benchmark(load(REPO / "params.yaml")).items()}
FLOORS = ("random_init", "raw_input")


def test_definitions_load_with_expected_assets_and_jobs():
    from assets import defs

    dg.Definitions.validate_loadable(defs)
    keys = {"/".join(k.path) for k in defs.resolve_all_asset_keys()}
    expected = {f"{m}/{a}" for m in ("image", "speech", "text") for a in ("raw", "shards", "throughput")}
    expected |= {"text/tokenizer", "speech/tokenizer", "text/tokens", "benchmark_report"}
    for modality, methods in PRETRAIN_METHODS.items():
        expected |= {f"{modality}/{method}_pretrained" for method in methods}
        expected |= {f"{modality}/{method}_probed" for method in (*methods, *FLOORS)}
        expected |= {f"{modality}/{method}_finetuned" for method in (*methods, "scratch")}
    assert keys == expected
    for job in ("demo", "image_pipeline", "speech_pipeline", "text_pipeline"):
        assert defs.resolve_job_def(job) is not None
    graph = defs.resolve_asset_graph()
    report_inputs = {"/".join(k.path) for k in graph.get(dg.AssetKey("benchmark_report")).parent_keys}
    assert report_inputs == {k for k in expected if k.endswith(("_probed", "_finetuned", "/throughput"))}
    for key in graph.get_all_asset_keys():  # what the UI shows and what limits concurrency
        spec, name = graph.get(key), "/".join(key.path)
        assert spec.owners and spec.code_version and spec.tags["stage"], name
        trains = name.endswith(("_pretrained", "_probed", "_finetuned", "/throughput"))
        assert spec.pools == ({"training"} if trains else set()), name
    priority = {"/".join(k.path): int(graph.get(k).assets_def.op.tags["dagster/priority"]) for k in graph.get_all_asset_keys()}
    assert priority["text/tokens"] > priority["text/data2vec2_pretrained"] > priority["text/data2vec2_probed"] > priority[
        "benchmark_report"]  # a lane takes the critical path first
    assert priority["speech/random_init_probed"] == priority["image/scratch_finetuned"] == priority["image/mae_probed"]
    in_group = {}
    for key in graph.get_all_asset_keys():  # the lineage shows a key's last part: distinct within each group
        in_group.setdefault(graph.get(key).group_name, []).append(key.path[-1])
    assert all(len(names) == len(set(names)) for names in in_group.values()), in_group
    ops = defs.resolve_job_def("demo").run_config_schema.config_type.fields["ops"].config_type.fields
    knobs = {(op, name): field.description for op, entry in ops.items() if "config" in entry.config_type.fields
             for name, field in getattr(entry.config_type.fields["config"].config_type, "fields", {}).items()}
    assert {"nproc", "device", "workers", "params_path"} <= {name for _, name in knobs}
    assert all(knobs.values()), [k for k, d in knobs.items() if not d]  # the launchpad says what each knob does
    checks = {(("/".join(k.asset_key.path)), k.name) for c in defs.asset_checks for k in c.check_keys}
    assert {(f"{m}/{x}_probed", "beats_random_init") for m, xs in PRETRAIN_METHODS.items() for x in xs} <= checks


def test_the_instance_config_trains_as_many_models_side_by_side_as_a_run_executes_steps(tmp_path):
    from dagster import DagsterInstance

    from assets import defs
    from assets.stage import LANES

    shutil.copy(REPO / "assets" / "dagster.yaml", tmp_path / "dagster.yaml")
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.event_log_storage.supports_global_concurrency_limits
        assert instance.get_concurrency_config().pool_config.default_pool_limit == LANES
        instance.event_log_storage.initialize_concurrency_limit_to_default("training")
        assert instance.event_log_storage.get_concurrency_info("training").slot_count == LANES
    execution = defs.resolve_job_def("demo").run_config_schema.config_type.fields["execution"]
    assert execution.config_type.fields["config"].config_type.fields["max_concurrent"].default_value == LANES


def test_each_step_gets_its_share_of_the_cores():
    from assets.stage import LANES, lanes, step_threads

    assert lanes({}) == LANES and lanes({"execution": {"config": {"max_concurrent": 3}}}) == 3
    assert step_threads({}, cores=2) == 1 and step_threads({}, cores=16) == 8
    assert step_threads({"execution": {"config": {"max_concurrent": 1}}}, cores=2) == 2
    assert step_threads({"execution": {"config": {"max_concurrent": 4}}}, cores=2) == 1  # never 0
    assert lanes({"execution": {"config": {"max_concurrent": 0}}}) >= 1  # Dagster's 0: one per core


def test_launch_sets_params_like_dvc_exp_run_keeping_the_comments(tmp_path):
    from assets.launch import main, set_params, without_set_params

    params = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text()
    params.write_text(text)
    set_params(str(params), ["benchmark.scale=cpu", "benchmark.scales.cpu.seeds=[0]"])
    changed = params.read_text()
    edited = [(a, b) for a, b in zip(text.splitlines(), changed.splitlines(), strict=True) if a != b]
    assert edited == [("  scale: demo", "  scale: cpu"), ("      seeds: [0, 1, 2]", "      seeds: [0]")], edited
    loaded = load(params)
    assert loaded["benchmark"]["scale"] == "cpu" and loaded["benchmark"]["scales"]["cpu"]["seeds"] == [0]
    for bad, says in (("benchmark.scal=cpu", "no key 'benchmark.scal'"), ("benchmark.scale", "expected KEY=VALUE"),
                      ("seed=[1", "not YAML")):
        with pytest.raises(ValueError, match=re.escape(says)):
            set_params(str(params), [bad])
    assert params.read_text() == changed  # nothing written by a failed assignment
    assert main(["demo", "--params", str(params), "-S", "benchmark.nope=1"]) == 2  # one line, exit 2, no run
    # after setting, the run starts in a fresh interpreter without the assignments (the package, imported before
    # the values changed, would hold the old graph and code versions)
    assert without_set_params(["demo", "-S", "a=1", "-Sb=2", "--set-param", "c=3", "--set-param=d=4", "-c", "x.yaml"]) == [
        "demo", "-c", "x.yaml"]


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
    from assets.dvc import stages as read_stages

    stages, dvc_edges = _dvc_graph()
    read = read_stages()  # as assets/dvc.py reads dvc.yaml for the code versions: the same stages, the same edges
    produced_by = {o: name for name, s in read.items() for o in s["outs"]}
    read_edges = {(produced_by[o], name) for name, s in read.items() for d in s["deps"] for o in produced_by
                  if d == o or d.startswith(o + "/")}
    assert set(read) == stages and read_edges == dvc_edges
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
PROBES_OF = {"image": ("knn", "linear"), "speech": ("ctc_probe",), "text": ("knn", "linear")}
RECORD_KEYS = {"modality", "method", "preset", "seed", "pretrain_updates", "pretrain_samples", "pretrain_seconds",
               "pretrain_flops", "device", "world_size", "protocol", "task", "metric", "value", "split", "git_commit",
               "dvc_stage_hash"}
REPRODUCED = ("value", "pretrain_updates", "pretrain_flops")  # the same on every run from the same inputs (CPU)
# One torch thread per stage: on these tiny tensors, threads that wait for a busy core cost more than they compute
# (a probe stage measured 34 s with the 2 default threads on a loaded 2-core machine, 4 s with one). Every run of
# a test uses the same setting, so the reproducibility check compares like with like.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _points(records: list[dict], modality: str, method: str, protocol: str) -> list[tuple]:
    """(seed, pretrain_updates, pretrain_flops) of one curve's primary-metric records, in (seed, updates) order."""
    return sorted(((r["seed"], r["pretrain_updates"], r["pretrain_flops"]) for r in records
                   if (r["modality"], r["method"], r["protocol"], r["metric"]) == (modality, method, protocol, METRIC_OF[modality])),
                  key=lambda p: (str(p[0]), p[1]))


def check_benchmark_outputs(repo) -> list[dict]:
    """What both orchestrators must leave behind at the tiny scale (one seed, complete runs of 2 and 4 updates per
    method): every method's probe curves, both floors, the fine-tuning protocol on the final run and scratch, and
    the report built from all of them."""
    records = json.loads((repo / "reports" / "metrics.json").read_text())
    assert all(RECORD_KEYS <= set(r) for r in records)
    assert all((r["task"], r["split"]) == (TASK_OF[r["modality"]], "test") for r in records)
    for modality, methods in PRETRAIN_METHODS.items():
        for protocol in PROBES_OF[modality]:
            for method in methods:
                points = _points(records, modality, method, protocol)
                assert [p[:2] for p in points] == [(0, 2), (0, 4)], (modality, method, protocol, points)
                assert points[0][2] > 0 and points[1][2] == 2 * points[0][2]  # counted FLOPs per update x updates
            assert _points(records, modality, "random_init", protocol) == [(0, 0, 0)], (modality, protocol)
            assert _points(records, modality, "raw_input", protocol) == [(None, 0, 0)], (modality, protocol)
        for method in methods:  # the fine-tuning protocol on the final run of the seed
            assert [p[:2] for p in _points(records, modality, method, "finetune")] == [(0, 4)], (modality, method)
        assert _points(records, modality, "scratch", "finetune") == [(0, 0, 0)], modality
    md = (repo / "reports" / "benchmark.md").read_text()
    groups = {(r["modality"], r["protocol"], r["task"], r["metric"]) for r in records}
    for section in ("## Headline", "## The paper's claims and what this run shows", "## Throughput and MFU", "## Provenance",
                    *(f"## {m}: {p} on {t} ({metric})" for m, p, t, metric in groups)):
        assert section in md, section
    assert "## Missing inputs" not in md
    for method in ("data2vec1", "mae", "wav2vec2", "mlm", "random_init", "raw_input", "scratch"):
        assert f"| {method}" in md, method
    throughput = [t for m in PRETRAIN_METHODS for t in json.loads((repo / "reports" / "throughput" / f"{m}.json").read_text())]
    assert sorted((t["modality"], t["method"]) for t in throughput) == sorted(
        (m, method) for m, methods in PRETRAIN_METHODS.items() for method in methods)
    plots = sorted("-".join(g) + ".png" for g in groups)
    assert sorted(p.name for p in (repo / "reports" / "plots").iterdir()) == plots
    page = (repo / "reports" / "benchmark.html").read_text()
    assert page.count("data:image/png;base64,") == len(plots) and "<script" not in page
    headline = json.loads((repo / "reports" / "headline.json").read_text())
    assert all(isinstance(v, (int, float)) for v in headline.values())  # flat, for `dvc metrics show`
    for modality, methods in PRETRAIN_METHODS.items():
        for protocol in PROBES_OF[modality]:
            prefix = f"{modality}/{protocol}/{TASK_OF[modality]}/{METRIC_OF[modality]}"
            assert {f"{prefix}/{m}_best" for m in methods} | {f"{prefix}/{f}" for f in FLOORS} <= set(headline), prefix
    return records


@pytest.mark.slow
def test_dagster_demo_job_runs_everything_to_the_report(repo_copy, tmp_path):
    """The `demo` job at the tiny scale, as `make demo` runs it (through workspace.yaml's code location, on the
    project's instance config): data, every method's pretraining runs, the probes and floors, fine-tuning,
    throughput, the report; the run is listed under its job, and DVC sees every stage up to date."""
    from dagster import DagsterInstance

    from assets import defs

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "assets" / "dagster.yaml", home / "dagster.yaml")  # what `make dagster-home` installs
    (repo_copy / ".venv-dvc").symlink_to(REPO / ".venv-dvc")
    # -S as make benchmark-cpu uses it (setting the demo scale's own seeds: the same run); no OMP_NUM_THREADS, so
    # each step takes its share of the cores
    result = run([str(VENV_BIN / "python"), "-m", "assets.launch", "demo", "-S", "benchmark.scales.demo.seeds=[0]"],
                 cwd=repo_copy, env={"DAGSTER_HOME": str(home)}, timeout=1500)
    log = result.stdout + result.stderr
    assert "RUN_SUCCESS" in log
    if "OMP_NUM_THREADS" not in os.environ:
        assert re.search(r"OMP_NUM_THREADS=\d+ \(2 steps side by side on \d+ cores\)", log)
    for modality in ("image", "speech", "text"):
        assert f"Asset check 'shards_match_index' on '{modality}/shards' passed" in log
        assert verify_index(repo_copy / "data" / "shards" / modality) == []
    assert "update 4: loss" in log  # pretraining reported back through Dagster Pipes
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
                pretrained = metadata(modality, f"{method}_pretrained")  # one report for the runs, after the last
                assert pretrained["runs"].value == 2 and pretrained["pretrain_flops"].value > 0, (modality, method)
                assert [r.data["run"] for r in pretrained["pretraining_runs"].value.records] == ["s0-u2", "s0-u4"]
                assert "data:image/png;base64" in pretrained["loss_curve"].value
            for method in (*methods, *FLOORS):
                probed = metadata(modality, f"{method}_probed")
                assert {f"{p}_{METRIC_OF[modality]}" for p in PROBES_OF[modality]} <= set(probed), (modality, method)
            for method in (*methods, "scratch"):
                finetuned = metadata(modality, f"{method}_finetuned")
                assert finetuned["metric"].value == METRIC_OF[modality], (modality, method)
                assert finetuned["curve"].value.count("\n") == 3  # header, rule, the one run of seed 0
                if modality == "speech":
                    assert "| reference | hypothesis |" in finetuned["samples"].value
                else:
                    assert "data:image/png;base64" in finetuned["confusion_matrix"].value
            assert "MFU" in str(metadata(modality, "throughput")["throughput"].value)
        report = metadata("benchmark_report")
        assert "## Headline" in report["report"].value
        assert "data:image/png;base64" in report["plot_image-linear-fashion_mnist-top1"].value

        (dagster_run,) = instance.get_runs()  # under its job and code location, tagged with what it ran from
        assert (dagster_run.job_name, dagster_run.remote_job_origin.location_name) == ("demo", "data2vec")
        assert {"d2v2/git_commit", "d2v2/params_sha256"} <= set(dagster_run.tags)
        spans = {}  # steps ran side by side: one started while another was running
        for entry in instance.all_logs(dagster_run.run_id):
            if entry.is_dagster_event and entry.dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS"):
                spans.setdefault(entry.step_key, {})[entry.dagster_event.event_type_value] = entry.timestamp
        assert any(a["STEP_START"] < b["STEP_START"] < a["STEP_SUCCESS"] for a in spans.values() for b in spans.values()
                   if a is not b)

    records = check_benchmark_outputs(repo_copy)
    assert report["records"].value == len(records)
    assert any(home.joinpath("history").rglob("*")) or any(home.rglob("*.db"))  # the run persisted in DAGSTER_HOME
    # One record: every asset committed its stage to dvc.lock, so DVC has nothing to do and each number's hash is
    # the lock's entry for the folder it came from.
    assert run([str(DVC), "status"], cwd=repo_copy).stdout.strip() == "Data and pipelines are up to date."
    assert "Running stage" not in run([str(DVC), "repro"], cwd=repo_copy, env=ONE_THREAD).stdout
    lock = yaml.safe_load((repo_copy / "dvc.lock").read_text())
    assert set(lock["stages"]) == _dvc_graph()[0]
    outs = {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])}
    for r in records:
        assert r["dvc_stage_hash"] == outs[f"models/{r['modality']}/{r['method']}/{'sweep' if r['protocol'] == 'finetune' else 'probe'}"]


def check_shared_results(repo, tmp_path, git: list[str]) -> None:
    """Results are versioned and shared: reports/ committed with dvc.lock, the outputs pushed to the default
    remote (.dvc/config: a folder beside the repository), a clone pulls them and regenerates the same report."""
    run([*git, "add", "-A"], cwd=repo)
    run([*git, "commit", "-qm", "results"], cwd=repo)
    assert "pushed" in run([str(DVC), "push"], cwd=repo).stdout
    assert any((tmp_path / "d2v2-dvc-remote").rglob("*"))
    clone = tmp_path / "clone"  # beside the repository, so the relative remote is the same folder
    run(["git", "clone", "-q", str(repo), str(clone)], cwd=tmp_path)
    for venv in (".venv", ".venv-dvc"):
        if not (clone / venv).exists():
            (clone / venv).symlink_to(REPO / venv)
    run([str(DVC), "pull"], cwd=clone)
    assert run([str(DVC), "status"], cwd=clone).stdout.strip() == "Data and pipelines are up to date."
    for copy in (repo, clone):  # the same inputs at the same commit give the same report, byte for byte
        run([str(VENV_BIN / "python"), "-m", "pipeline", "report", "--out", "regenerated"], cwd=copy)
    regenerated = sorted(p.relative_to(repo) for p in (repo / "regenerated").rglob("*") if p.is_file())
    assert regenerated and all((repo / p).read_bytes() == (clone / p).read_bytes() for p in regenerated)
    shutil.rmtree(repo / "regenerated")

    diff = json.loads(run([str(DVC), "metrics", "diff", "HEAD~1", "HEAD", "--json"], cwd=repo).stdout)
    assert "image/linear/fashion_mnist/top1/data2vec2_best" in diff["reports/headline.json"]
    run([str(DVC), "exp", "run", "--temp", "-n", "seed1", "-S", "seed=1", "prepare@image"], cwd=repo, env=ONE_THREAD)
    shown = json.dumps(json.loads(run([str(DVC), "exp", "show", "--json"], cwd=repo).stdout))
    assert "seed1" in shown and "data2vec2_best" in shown


@pytest.mark.slow
def test_dvc_repro_end_to_end_no_op_then_reproduced_from_clean_models(repo_copy, tmp_path):
    """`dvc repro` of the tiny graph; a second one does nothing; the results, committed and pushed to the default
    remote, pull into a fresh clone that DVC finds up to date and that regenerates the same report; `dvc metrics
    diff` compares two commits and `dvc exp run --temp` runs a stage in DVC's copy; then, from clean outputs
    (models/ and the DVC cache removed, so no stage is restored from it), a third repro gives the same value,
    updates and FLOPs in every record of reports/metrics.json (scores are a function of code, data, params and
    seed)."""
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    run([*git, "add", "-A"], cwd=repo_copy)
    run([*git, "commit", "-qm", "code"], cwd=repo_copy)
    first = run([str(DVC), "repro"], cwd=repo_copy, env=ONE_THREAD, timeout=1500)
    stages = _dvc_graph()[0]
    assert first.stdout.count("Running stage") == len(stages)
    for modality in ("image", "speech", "text"):
        assert verify_index(repo_copy / "data" / "shards" / modality) == []
    for modality in ("text", "speech"):
        assert (repo_copy / "data" / "tokenizers" / modality / "tokenizer.json").exists()
    lock = yaml.safe_load((repo_copy / "dvc.lock").read_text())
    assert set(lock["stages"]) == stages
    records = check_benchmark_outputs(repo_copy)
    # each number is tied to the dvc.lock entry of the stage output that produced it
    outs = {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])}
    for r in records:
        folder = "sweep" if r["protocol"] == "finetune" else "probe"
        assert r["dvc_stage_hash"] == outs[f"models/{r['modality']}/{r['method']}/{folder}"]
    shown = json.dumps(json.loads(run([str(DVC), "metrics", "show", "--json"], cwd=repo_copy).stdout))
    assert "reports/headline.json" in shown and "image/linear/fashion_mnist/top1/data2vec2_best" in shown
    plots = run([str(DVC), "plots", "show", "--json", "reports/metrics.json"], cwd=repo_copy).stdout
    assert "pretrain_seconds" in plots
    second = run([str(DVC), "repro"], cwd=repo_copy, env=ONE_THREAD)
    assert "Running stage" not in second.stdout
    assert run([str(DVC), "status"], cwd=repo_copy).stdout.strip() == "Data and pipelines are up to date."
    check_shared_results(repo_copy, tmp_path, git)

    shutil.rmtree(repo_copy / "models")
    shutil.rmtree(repo_copy / ".dvc" / "cache")
    third = run([str(DVC), "repro"], cwd=repo_copy, env=ONE_THREAD, timeout=1500)
    assert all(f"Running stage '{s}'" in third.stdout for s in stages if not s.startswith("throughput"))
    again = json.loads((repo_copy / "reports" / "metrics.json").read_text())
    def reproduced(rows: list[dict]) -> dict[tuple, tuple]:
        key = ("modality", "method", "protocol", "metric", "seed", "source", "pretrain_updates")
        return {tuple(r.get(k) for k in key): tuple(r[k] for k in REPRODUCED) for r in rows}

    assert len(again) == len(records) and reproduced(again) == reproduced(records)
