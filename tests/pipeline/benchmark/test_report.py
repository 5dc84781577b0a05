"""The benchmark report from fixture records (no training): speed-ups only where the analysis states them, else
"inconclusive" and why; floors drawn and tabled; metrics.json in the record schema; headline.json flat."""
import argparse
import json
import re

import pytest

from pipeline.benchmark.report import SCHEMA, build, headline_metrics, run, slow_runs

UPDATES = (100, 200, 400)
COST = {"data2vec2": (1.5, 3e12), "data2vec1": (1.2, 2.5e12), "mae": (1.0, 2e12), "wav2vec2": (1.0, 2e12)}
BATCH = 64


def curve(method, means, jitter=0.005, seeds=(0, 1, 2), modality="image", protocol="linear", task="fashion_mnist",
          metric="top1", seconds_scale=1.0):
    """One record per (budget, seed) in the record schema: mean - jitter, mean, mean + jitter over three seeds."""
    seconds, flops = COST[method]
    return [{"modality": modality, "method": method, "preset": "tiny", "seed": seed, "pretrain_updates": updates,
             "pretrain_samples": updates * BATCH, "pretrain_seconds": seconds * updates * seconds_scale,
             "pretrain_flops": flops * updates, "device": "x86_64 CPU, 2 threads", "world_size": 1, "precision": "bf16", "protocol": protocol, "task": task,
             "metric": metric, "value": mean + jitter * (seed - 1), "split": "test", "git_commit": "abc123def456",
             "dvc_stage_hash": "0123456789ab", "layer": None, "pooling": "mean"}
            for updates, mean in zip(UPDATES, means) for seed in seeds]


def floor(method, value, seeds=(0, 1, 2), jitter=0.005, **keys):
    base = {"modality": "image", "protocol": "linear", "task": "fashion_mnist", "metric": "top1", **keys}
    return [{**base, "method": method, "preset": "tiny", "seed": s, "pretrain_updates": 0, "pretrain_samples": 0,
             "pretrain_seconds": 0.0, "pretrain_flops": 0, "value": value + jitter * ((1 if s is None else s) - 1), "split": "test",
             "git_commit": "abc123def456", "dvc_stage_hash": "0123456789ab"} for s in seeds]


def floors(random_init, raw_input, **keys):
    return floor("random_init", random_init, **keys) + floor("raw_input", raw_input, seeds=(None,), jitter=0, **keys)


THROUGHPUT = [{"modality": "image", "method": m, "preset": "tiny", "device": "x86_64 CPU, 2 threads", "precision": "bf16",
               "batch_size": BATCH, "clone_batch": 8 if m == "data2vec2" else 1, "train_samples_per_s": 100.0,
               "train_tokens_per_s": 4900.0, "loader_samples_per_s": 3501.0, "flops_per_sample": 4.2e9, "mfu": 0.31,
               "matmul_peak_flops_per_s": 2.1e11} for m in ("data2vec2", "mae")]
CONTEXT = {"git_commit": "abc123", "dvc_lock_md5": "feedbeef", "hardware": "2-core CPU"}

# separated: data2vec 2.0 reaches mae's best (0.70 at 400 updates) at 200 updates, far above the floors
SEPARATED = curve("data2vec2", [0.60, 0.70, 0.80]) + curve("mae", [0.55, 0.62, 0.70]) + floors(0.50, 0.45)


def test_a_separated_fixture_states_the_speedup_in_seconds_and_flops(tmp_path):
    result = build(SEPARATED, THROUGHPUT, tmp_path, CONTEXT)
    md = (tmp_path / "benchmark.md").read_text()
    # seconds: mae 400 x 1.0 s / data2vec 2.0 200 x 1.5 s; FLOPs: 400 x 2e12 / (200 x 3e12)
    assert "| mae | stated | 1.33x | 1.33x | data2vec2 is within the spread of mae's best" in md
    assert "| linear | fashion_mnist | top1 | 0.8 ± 0.005 | 0.7 ± 0.005 | 0.5 ± 0.005 | 0.45 | 1.33x time, 1.33x FLOPs |" in md
    assert re.search(r"\*\*image\*\*: the paper reports that data2vec 2.0 matches MAE's ImageNet-1K accuracy with 16.4x "
                     r"less pretraining time; this run shows, linear top1: data2vec 2.0's best 0.8 ± 0.005 is better than the "
                     r"random_init floor \(0.5\), it reaches mae's best 1.33x faster in seconds and 1.33x faster in FLOPs\.",
                     result["statements"][0])
    headline = headline_metrics(result["groups"])
    assert headline["image/linear/fashion_mnist/top1/speedup_seconds_vs_mae"] == pytest.approx(4 / 3)
    assert headline["image/linear/fashion_mnist/top1/speedup_flops_vs_mae"] == pytest.approx(4 / 3)
    assert headline["image/linear/fashion_mnist/top1/data2vec2_best"] == pytest.approx(0.8)
    assert "⚠ Below" not in md


def test_no_speedup_within_the_seed_spread_below_the_floor_or_with_one_seed(tmp_path):
    records = (curve("data2vec2", [0.60, 0.64, 0.70], jitter=0.04) + curve("mae", [0.58, 0.66, 0.69], jitter=0.04)
               + floors(0.40, 0.35)  # linear: within noise
               + curve("data2vec2", [0.30, 0.35, 0.41], protocol="knn") + curve("mae", [0.28, 0.33, 0.39], protocol="knn")
               + floors(0.556, 0.5, protocol="knn")  # knn: every pretrained point below random_init
               + curve("data2vec2", [0.6, 0.7, 0.8], seeds=(0,), jitter=0, protocol="finetune", metric="accuracy")
               + curve("mae", [0.55, 0.62, 0.7], seeds=(0,), jitter=0, protocol="finetune", metric="accuracy")
               + floor("scratch", 0.5, seeds=(0,), jitter=0, protocol="finetune", metric="accuracy"))  # one seed
    result = build(records, [], tmp_path, CONTEXT)
    md = (tmp_path / "benchmark.md").read_text()
    assert "| knn | fashion_mnist | top1 |" in md and "inconclusive (below the floor) |" in md
    assert "inconclusive (within noise) |" in md and "inconclusive (one seed) |" in md
    assert "| stated |" not in md and not re.search(r"\d\.\d\dx", md)  # no ratio anywhere
    assert "| mae | inconclusive |  |  | one seed: spread unknown" in md
    assert "⚠ Below the random_init floor (the encoder at initialisation scores better): data2vec2 at 100, 200, 400 " \
           "updates; mae at 100, 200, 400 updates." in md
    assert "| data2vec2 | 0.41 ± 0.005 | 3 | 400 | 600 | 1.2e+15 | 400 | worse by 0.146 ⚠ below the floor |" in md
    sentence = result["statements"][0]
    assert "knn top1: data2vec 2.0's best 0.41 ± 0.005 is worse than the random_init floor (0.556), not better than " \
           "the raw_input floor (0.5): not a result for this protocol yet, speed-up over mae inconclusive (below the " \
           "floor:" in sentence
    # linear: 0.70 is above raw_input (0.35), so no such clause
    assert "linear top1: data2vec 2.0's best 0.7" in sentence and sentence.count("raw_input floor") == 1
    assert "finetune accuracy: data2vec 2.0's best 0.8 is better than the scratch floor (0.5), speed-up over mae " \
           "inconclusive (one seed: spread unknown" in sentence
    assert not any("speedup" in k for k in headline_metrics(result["groups"]))


def test_floors_are_drawn_on_every_plot_and_tabled(tmp_path):
    result = build(SEPARATED + floor("scratch", 0.52, protocol="finetune") + curve("mae", [0.6, 0.6, 0.6], protocol="finetune"),
                   [], tmp_path, CONTEXT)
    assert result["plots"]["image-linear-fashion_mnist-top1"] == {"methods": ["data2vec2", "mae"],
                                                                  "floors": ["random_init", "raw_input"]}
    assert result["plots"]["image-finetune-fashion_mnist-top1"]["floors"] == ["scratch"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["image-finetune-fashion_mnist-top1.png",
                                                                      "image-linear-fashion_mnist-top1.png"]
    md = (tmp_path / "benchmark.md").read_text()
    assert "| random_init (floor) | 0.5 ± 0.005 | 3 | 0 | 0 | 0 |  |  |" in md and "| raw_input (floor) | 0.45 | 1 |" in md


def test_report_has_every_section_and_a_self_contained_page(tmp_path):
    slow = [{**r, "pretrain_seconds": r["pretrain_samples"] / (50.0 if r["seed"] else 80.0)}
            for r in curve("mae", [0.55, 0.62, 0.70])]
    records = curve("data2vec2", [0.60, 0.70, 0.80], seconds_scale=0.5) + slow + floors(0.50, 0.45)
    build(records, THROUGHPUT, tmp_path, {**CONTEXT, "missing": ["models/image/mae/probe/records.json"]})
    md = (tmp_path / "benchmark.md").read_text()
    for section in ("## Missing inputs", "## Headline", "### image", "## The paper's claims and what this run shows",
                    "## image: linear on fashion_mnist (top1)", "## Throughput and MFU", "## Effective batch",
                    "## Provenance"):
        assert section in md
    assert "`models/image/mae/probe/records.json`" in md
    assert "2-core CPU" in md and "feedbeef" in md and "abc123" in md and "31.0%" in md and "| 4.2 |" in md
    # mae's runs moved 50 samples/s against the throughput stage's 100: a busy machine; data2vec 2.0's did not
    assert "Seconds measured on a busy machine are inflated" in md
    assert "- image/mae: 6 of 9 runs (seed 1 at 100 updates, seed 1 at 200 updates, seed 1 at 400 updates, seed 2 at " \
           "100 updates, seed 2 at 200 updates, seed 2 at 400 updates) at 0.50x the throughput stage's 100.0 samples/s" in md
    assert "image/data2vec2:" not in md
    # samples/update from the records, clones from throughput, precision from the records (the fixtures': bf16)
    assert "| image | data2vec2 |  | 1 |  | 8 | 64 | bf16 |" in md
    assert "| image | data2vec2 | linear | 0, 1, 2 | 100, 200, 400 | 9 | `abc123def4` | `0123456789` |" in md
    assert "| image | random_init | linear | 0, 1, 2 | 0 | 3 |" in md and "| image | raw_input | linear | none | 0 | 1 |" in md
    page = (tmp_path / "benchmark.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "<script" not in page and 'src="http' not in page
    assert "<h3>image</h3>" in page and re.search(r"<td>random_init \(floor\)</td><td>0.5 ± 0.005</td>", page)


def test_the_busy_machine_warning_compares_a_run_only_with_the_throughput_of_the_same_step():
    """Same batch, precision and device: an fp32 or another device's figure says nothing of a bf16 run's speed.
    Older throughput records spell the precision as torch's dtype ("bfloat16")."""
    runs = [{**r, "pretrain_seconds": r["pretrain_samples"] / 50.0} for r in curve("mae", [0.55, 0.62, 0.70], seeds=(0,))]
    stage = THROUGHPUT[1]  # mae, bf16, 100 samples/s
    fp32 = {**stage, "precision": "fp32", "train_samples_per_s": 200.0}
    other_device = {**stage, "device": "NVIDIA H100", "train_samples_per_s": 900.0}
    legacy = {**stage, "precision": "bfloat16"}
    assert slow_runs(runs, [fp32]) == [] and slow_runs(runs, [other_device]) == []
    assert slow_runs(runs, [{**stage, "batch_size": 2 * BATCH}]) == []
    warning = ["image/mae: all 3 runs at 0.50x the throughput stage's 100.0 samples/s"]
    assert slow_runs(runs, [legacy, fp32, other_device]) == warning  # the latest record is fp32: not the same step
    assert slow_runs(runs, [stage]) == warning


def test_a_record_without_required_fields_is_refused(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        build([{"modality": "image"}], [], tmp_path, {})


def test_the_stage_reads_the_benchmark_inputs_stamps_them_and_names_the_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("benchmark:\n  image: {methods: [data2vec2, mae], task: fashion_mnist, "
                                          "probes: [linear]}\n")
    probes = {"data2vec2": curve("data2vec2", [0.6, 0.7, 0.8]), "mae": curve("mae", [0.55, 0.62, 0.7]),
              "random_init": floor("random_init", 0.5)}
    for method, rows in probes.items():
        path = tmp_path / "models/image" / method / "probe"
        path.mkdir(parents=True)
        (path / "records.json").write_text(json.dumps([{k: v for k, v in r.items() if k not in ("git_commit", "dvc_stage_hash",
                                                                                              "layer", "pooling")} for r in rows]))
    sweep = tmp_path / "models/image/scratch/sweep/fashion_mnist"
    sweep.mkdir(parents=True)
    (sweep / "curve.json").write_text(json.dumps([{**r, "finetune_updates": 4} for r in floor("scratch", 0.4, protocol="finetune")]))
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  probe_image@data2vec2:\n    outs:\n"
                                       "    - path: models/image/data2vec2/probe\n      md5: 5eed.dir\n")
    result = run(argparse.Namespace(records=None, out="reports"))
    err = capsys.readouterr().err
    assert "4 of 8 inputs not found" in err and "models/image/raw_input/probe/records.json" in err
    assert "models/image/mae/sweep/fashion_mnist/curve.json" in err and "reports/throughput/image.json" in err
    assert result["missing"] == ["models/image/raw_input/probe/records.json",
                                 "models/image/data2vec2/sweep/fashion_mnist/curve.json",
                                 "models/image/mae/sweep/fashion_mnist/curve.json", "reports/throughput/image.json"]
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert len(metrics) == 9 + 9 + 3 + 3 and all(set(SCHEMA) <= set(r) for r in metrics)
    assert len({tuple(r) for r in metrics}) == 1  # one key set, or `dvc plots show` reads no records
    hashes = {r["method"]: r["dvc_stage_hash"] for r in metrics}
    assert hashes == {"data2vec2": "5eed.dir", "mae": "not in dvc.lock", "random_init": "not in dvc.lock",
                      "scratch": "not in dvc.lock"}
    headline = json.loads((tmp_path / "reports/headline.json").read_text())
    assert headline and all(isinstance(v, (int, float)) for v in headline.values())
    assert headline["image/finetune/fashion_mnist/top1/scratch"] == pytest.approx(0.4)
    md = (tmp_path / "reports/benchmark.md").read_text()
    assert "## Missing inputs" in md and "`models/image/raw_input/probe/records.json`" in md


def test_the_header_says_when_the_scale_runs_no_fine_tuning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scale = {"seeds": [0], "budget_fractions": [1.0], "probe_sizes": {"image": {"train": 4, "valid": 2, "test": 2}},
             "max_updates": {"image": {"data2vec2": 2}}, "finetune": False}
    # --params: a file of another name (./params.yaml, the default, is a different benchmark)
    (tmp_path / "small.yaml").write_text(json.dumps({"benchmark": {
        "scale": "small", "scales": {"small": scale},
        "image": {"methods": ["data2vec2"], "task": "fashion_mnist", "probes": ["linear"]}}}))
    (tmp_path / "params.yaml").write_text("benchmark:\n  text: {methods: [data2vec2], task: lexname}\n")
    path = tmp_path / "models/image/data2vec2/probe"
    path.mkdir(parents=True)
    (path / "records.json").write_text(json.dumps(curve("data2vec2", [0.6, 0.7, 0.8])))
    run(argparse.Namespace(records=None, out="reports", params=tmp_path / "small.yaml"))
    md = (tmp_path / "reports/benchmark.md").read_text()
    assert "Scale `small`: the fine-tuning protocol is off at this scale" in md


def test_no_records_at_all_is_a_user_error(tmp_path, monkeypatch):
    from pipeline.errors import UserInputError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("benchmark:\n  text: {methods: [data2vec2], task: lexname}\n")
    with pytest.raises(UserInputError, match="no benchmark records"):
        run(argparse.Namespace(records=None, out="reports"))


def test_the_published_cpu_result_was_produced_at_the_cpu_scale_params_yaml_has():
    """docs/results/cpu is the generated report of the cpu scale: every stage its dvc.lock records read the
    budgets and probe sizes params.yaml now gives that scale (all but the seeds: it is a one-seed run). A change
    to the cpu scale needs `make benchmark-cpu SEEDS='[0]'` (or the stages `dvc status` names) to be published."""
    import yaml

    from helpers import REPO

    lock = yaml.safe_load((REPO / "docs/results/cpu/dvc.lock").read_text())
    cpu = yaml.safe_load((REPO / "params.yaml").read_text())["benchmark"]["scales"]["cpu"]
    checked = 0
    for stage, body in lock["stages"].items():
        for key, value in (body.get("params") or {}).get("params.yaml", {}).items():
            if key.startswith("benchmark.scales.cpu.") and key != "benchmark.scales.cpu.seeds":
                node = cpu
                for part in key.removeprefix("benchmark.scales.cpu.").split("."):
                    node = node[part]
                assert node == value, (stage, key, value, node)
                checked += 1
            elif key == "benchmark.scale":
                assert value == "cpu", stage
    assert checked >= 20  # every pretraining and probe stage records its budgets or sizes
