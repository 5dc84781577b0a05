"""The pretraining engine on CPU: torchrun (gloo), exact resume after SIGKILL, equal batches per rank, guards.

Throughput is not asserted here (see the benchmark command); these tests check behaviour and exactness.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from helpers import run, write_params
from pipeline.config import Shard
from pipeline.data.prepare import prepare
from pipeline.data.shard import shard
from pipeline.data.shard_reader import IndexedShards, RankBatchSampler, global_batch
from pipeline.train.optim import resolve_precision

PRETRAIN = {"preset": "tiny", "batch_size": 8, "max_updates": 6, "lr": 0.001, "warmup_updates": 2,
            "checkpoint_every": 2, "log_every": 1}


@pytest.fixture(scope="module")
def image_workdir(tmp_path_factory):
    """A folder with params.yaml and tiny Fashion-MNIST shards (two uneven shards: 24 + 16 + ... samples)."""
    root = tmp_path_factory.mktemp("pretrain")
    params = {"seed": 0, "image": {"prepare": {"train_limit": 40, "test_limit": 8}, "shard": {"max_samples_per_shard": 24}},
              "pretrain": {"image": PRETRAIN}}
    write_params(root / "params.yaml", params)
    prepare("image", params, root / "data" / "raw" / "image")
    shard("image", root / "data" / "raw" / "image", root / "data" / "shards" / "image", Shard(max_samples_per_shard=24), progress=False)
    return root


def pretrain_cmd(out, *extra):
    return [sys.executable, "-m", "pipeline", "pretrain", "--modality", "image", "--out", str(out), "--workers", "0",
            "--no-progress", *extra]


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_global_batches_do_not_depend_on_world_size():
    for world in (1, 2, 4):
        parts = [list(RankBatchSampler(50, 8, r, world, seed=3, start=0, stop=12)) for r in range(world)]
        assert all(len(p) == 12 for p in parts)  # equal batch count on every rank
        for b in range(12):
            assert sum((p[b] for p in parts), []) == global_batch(3, b, 50, 8)
    # an epoch is a permutation: 6 full batches of 8 from 50 samples, no repeats
    ids = sum((global_batch(3, b, 50, 8) for b in range(6)), [])
    assert len(set(ids)) == 48
    assert global_batch(3, 6, 50, 8) != global_batch(3, 0, 50, 8)  # the next epoch reshuffles


def test_indexed_shards_read_every_sample_once(image_workdir):
    shards = IndexedShards(image_workdir / "data" / "shards" / "image", "train")
    keys = [shards[i]["__key__"] for i in range(len(shards))]
    assert len(shards) == 40 and keys == sorted(set(keys))
    assert set(shards[39]) == {"__key__", "png", "cls", "json"}


def test_one_process_and_two_processes_follow_the_same_trajectory(image_workdir):
    run(pretrain_cmd(image_workdir / "one", "--nproc", "1"), cwd=image_workdir)
    run(pretrain_cmd(image_workdir / "two", "--nproc", "2"), cwd=image_workdir)
    one, two = losses(image_workdir / "one"), losses(image_workdir / "two")
    assert len(one) == len(two) == 6
    assert one == pytest.approx(two, rel=2e-3), (one, two)
    config = json.loads((image_workdir / "two" / "config.json").read_text())
    assert config["effective_batch"] == {"per_rank_micro_batch": 4, "world_size": 2, "grad_accum": 1, "clone_batch": 4,
                                         "samples_per_update": 8, "student_rows_per_update": 32}


def test_gradient_accumulation_matches_the_full_batch(image_workdir):
    params = yaml.safe_load((image_workdir / "params.yaml").read_text())
    params["pretrain"]["image"]["grad_accum"] = 2
    write_params(image_workdir / "accum.yaml", params)
    run(pretrain_cmd(image_workdir / "accum", "--params", "accum.yaml"), cwd=image_workdir)
    if not (image_workdir / "one").exists():
        run(pretrain_cmd(image_workdir / "one"), cwd=image_workdir)
    assert losses(image_workdir / "accum") == pytest.approx(losses(image_workdir / "one"), rel=2e-3)


def _students_equal(a, b):
    a, b = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return a["update"] == b["update"] and all(torch.equal(a["student"][k], b["student"][k]) for k in a["student"]) and all(
        torch.equal(a["teacher"][k], b["teacher"][k]) for k in a["teacher"])


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in os.listdir("/proc"):
        if proc.isdigit():
            try:
                with open(f"/proc/{proc}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        pids.append(int(proc))
            except OSError:
                pass
    return pids


def test_sigkill_then_resume_equals_uninterrupted(image_workdir):
    full, killed = image_workdir / "full", image_workdir / "killed"
    run(pretrain_cmd(full, "--max-updates", "10", "--workers", "1"), cwd=image_workdir)
    proc = subprocess.Popen(pretrain_cmd(killed, "--max-updates", "10", "--workers", "1"), cwd=image_workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((killed / "metrics.jsonl").exists() and len(losses(killed)) >= 5):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the torchrun agent, no chance to clean up; its workers must die with it
    proc.wait()
    deadline = time.time() + 2  # the kernel kills them at once (PR_SET_PDEATHSIG); an orphan would still be training
    while time.time() < deadline and _processes_mentioning(str(killed)):
        time.sleep(0.1)
    assert not _processes_mentioning(str(killed)), "a worker outlived its torchrun agent"
    assert 5 <= len(losses(killed)) < 10, "the run must be killed mid-way"
    assert torch.load(killed / "last.pt", weights_only=True)["update"] < 10
    run(pretrain_cmd(killed, "--max-updates", "10", "--workers", "1"), cwd=image_workdir)
    assert _students_equal(full / "last.pt", killed / "last.pt")
    assert [r for r in losses(killed)] == losses(full)  # metrics.jsonl rewritten from the checkpoint on


def test_checkpoints_are_plain_state_dicts_at_budget_fractions(image_workdir):
    out = image_workdir / "one"
    if not out.exists():
        run(pretrain_cmd(out), cwd=image_workdir)
    names = sorted(p.name for p in out.glob("*.pt"))
    assert names == ["best.pt", "budget-0.25.pt", "budget-0.5.pt", "budget-0.75.pt", "budget-1.pt", "last.pt"]
    ckpt = torch.load(out / "budget-0.5.pt", weights_only=True)
    assert ckpt["update"] == 3 and {"student", "teacher", "optimizer", "scheduler", "scaler", "rng"} <= set(ckpt)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["updates"] == 6 and summary["stop_reason"] == "max_updates" and summary["samples_per_s"] > 0
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((out / "tb").iterdir())


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(image_workdir):
    out = image_workdir / "nan"
    result = subprocess.run(pretrain_cmd(out, "--debug-nan-at-update", "4"), cwd=image_workdir, capture_output=True, text=True)
    assert result.returncode != 0
    assert "loss is nan at update 4" in result.stderr
    assert torch.load(out / "last.pt", weights_only=True)["update"] == 4  # saved after update 4 (0-based 3), before the NaN


def test_uneven_shards_on_two_ranks_finish(image_workdir):
    # 40 samples in shards of 24 + 16; 2 ranks x 3 samples; 7 updates cross the epoch boundary (40 // 6 = 6)
    params = yaml.safe_load((image_workdir / "params.yaml").read_text())
    params["pretrain"]["image"].update(batch_size=6, max_updates=7)
    write_params(image_workdir / "uneven.yaml", params)
    run(pretrain_cmd(image_workdir / "uneven", "--params", "uneven.yaml", "--nproc", "2"), cwd=image_workdir, timeout=300)
    assert len(losses(image_workdir / "uneven")) == 7


def test_throughput_command_keeps_one_record_per_setup(image_workdir):
    out = image_workdir / "throughput.json"
    command = [sys.executable, "-m", "pipeline", "throughput", "--modality", "image", "--steps", "2", "--warmup", "1",
               "--loader-batches", "3", "--workers", "0", "--precision", "fp32", "--out", str(out)]
    run(command + ["--method", "data2vec2", "mae"], cwd=image_workdir)
    first = json.loads(out.read_text())
    assert [r["method"] for r in first] == ["data2vec2", "mae"]
    run(command, cwd=image_workdir)  # the same setup again replaces its record, the other method's stays
    records = json.loads(out.read_text())
    assert [r["method"] for r in records] == ["mae", "data2vec2"] and records[0] == first[1]
    assert records[1]["measured_at"] >= first[0]["measured_at"]
    r = records[1]
    assert r["batch_size"] == 8 and r["tokens_per_sample"] == 49 and r["precision"] == "fp32"  # params.yaml's spelling, as runs.json
    # consistency of the derived figures (not their size: speed is never asserted)
    assert r["train_samples_per_s"] == pytest.approx(8 / r["step_seconds"])
    assert r["mfu"] == pytest.approx(r["flops_per_sample"] * 8 / r["step_seconds"] / r["matmul_peak_flops_per_s"])
    assert r["flops_per_sample"] > 0 and r["loader_samples_per_s"] > 0


def test_bf16_autocast_runs_on_cpu(image_workdir):
    params = yaml.safe_load((image_workdir / "params.yaml").read_text())
    params["pretrain"]["image"].update(precision="bf16", max_updates=2)
    write_params(image_workdir / "bf16.yaml", params)
    run(pretrain_cmd(image_workdir / "bf16", "--params", "bf16.yaml"), cwd=image_workdir)
    config = json.loads((image_workdir / "bf16" / "config.json").read_text())
    assert config["precision"] == "bf16"
    assert all(l == l and l > 0 for l in losses(image_workdir / "bf16"))  # finite, positive


def test_resume_only_the_same_run(image_workdir):
    """Training longer resumes; other hyper-parameters (as after a params.yaml change under `dvc repro`) start fresh."""
    out = image_workdir / "identity"

    def budget_checkpoints():
        return {p.name: torch.load(p, weights_only=True)["update"] for p in sorted(out.glob("budget-*.pt"))}

    run(pretrain_cmd(out, "--max-updates", "3"), cwd=image_workdir)
    assert budget_checkpoints() == {"budget-0.25.pt": 1, "budget-0.5.pt": 2, "budget-0.75.pt": 3, "budget-1.pt": 3}
    longer = run(pretrain_cmd(out, "--max-updates", "5"), cwd=image_workdir)
    assert "from another run" not in longer.stderr and len(losses(out)) == 5
    assert torch.load(out / "last.pt", weights_only=True)["update"] == 5
    # the budget checkpoints follow the new budget: fractions already passed are saved at the first update of the
    # resumed run, the rest when reached; none is left from the 3-update budget
    assert budget_checkpoints() == {"budget-0.25.pt": 4, "budget-0.5.pt": 4, "budget-0.75.pt": 4, "budget-1.pt": 5}
    params = yaml.safe_load((image_workdir / "params.yaml").read_text())
    params["pretrain"]["image"]["lr"] = 0.002
    write_params(image_workdir / "lr.yaml", params)
    changed = run(pretrain_cmd(out, "--max-updates", "5", "--params", "lr.yaml"), cwd=image_workdir)
    assert "from another run" in changed.stderr
    assert [json.loads(line)["update"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert json.loads((out / "config.json").read_text())["pretrain"]["lr"] == 0.002


def test_a_finished_run_trains_no_more_and_a_passed_budget_starts_over(image_workdir):
    """Run again once its budget is spent (as `dvc repro` does after a code change): nothing trains, no checkpoint
    changes. A smaller budget the run has already passed cannot get its budget checkpoints: the run starts over."""
    out = image_workdir / "finished"

    def checkpoints():
        return {p.name: torch.load(p, weights_only=True)["update"] for p in sorted(out.glob("*.pt"))}

    run(pretrain_cmd(out, "--max-updates", "4"), cwd=image_workdir)
    done = checkpoints()
    assert done == {"best.pt": 4, "budget-0.25.pt": 1, "budget-0.5.pt": 2, "budget-0.75.pt": 3, "budget-1.pt": 4, "last.pt": 4}
    again = json.loads(run(pretrain_cmd(out, "--max-updates", "4"), cwd=image_workdir).stdout)
    assert again["updates"] == 4 and checkpoints() == done and len(losses(out)) == 4
    smaller = run(pretrain_cmd(out, "--max-updates", "2"), cwd=image_workdir)
    assert "past this budget (2u)" in smaller.stderr
    assert [json.loads(line)["update"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert checkpoints() == {"best.pt": 2, "budget-0.25.pt": 1, "budget-0.5.pt": 1, "budget-0.75.pt": 2, "budget-1.pt": 2,
                             "last.pt": 2}


def test_wall_clock_budget_stops_saves_its_fractions_and_is_not_extended(image_workdir):
    """--budget-seconds: training stops when the loop has run that long (max_updates only caps it), budget-<f>.pt
    are saved once f x budget has passed, and running it again adds no update (it used to add one each time)."""
    out = image_workdir / "wall_clock"
    # 6 s, not less: the first update also starts the DataLoader worker (4 s on a busy 2-core machine), and the
    # test needs several updates inside the budget
    budget = 6
    cmd = pretrain_cmd(out, "--budget-seconds", str(budget), "--max-updates", "100000")
    first = json.loads(run(cmd, cwd=image_workdir).stdout)
    assert first["stop_reason"] == "budget_seconds" and first["train_seconds"] >= budget and 1 < first["updates"] < 100000
    saved = {p.name: torch.load(p, weights_only=True) for p in sorted(out.glob("budget-*.pt"))}
    assert set(saved) == {"budget-0.25.pt", "budget-0.5.pt", "budget-0.75.pt", "budget-1.pt"}
    for name, ckpt in saved.items():
        assert ckpt["train_seconds"] >= float(name[len("budget-"):-len(".pt")]) * budget
    assert saved["budget-1.pt"]["update"] == first["updates"]
    last = torch.load(out / "last.pt", weights_only=True)
    again = json.loads(run(cmd, cwd=image_workdir).stdout)
    assert again["stop_reason"] == "budget_seconds" and again["updates"] == first["updates"]
    assert torch.load(out / "last.pt", weights_only=True)["train_seconds"] == last["train_seconds"]
    assert len(losses(out)) == first["updates"]


def test_benchmark_trains_each_budget_as_a_complete_run_once(image_workdir):
    """--benchmark: every (seed, budget) of the scale is a complete run of its own (warm-up and cosine over its own
    updates) with its FLOPs counted on a thrown-away trainer; running it again trains nothing."""
    params = yaml.safe_load((image_workdir / "params.yaml").read_text())
    params["pretrain"]["image"] = {**PRETRAIN, "warmup_fraction": 0.25}
    params["benchmark"] = {"scale": "demo", "image": {"methods": ["data2vec2"], "task": "fashion_mnist"},
                           "scales": {"demo": {"seeds": [0, 1], "budget_fractions": [0.5, 1.0],
                                               "probe_sizes": {"image": {"train": 8, "valid": 4, "test": 4}},
                                               "max_updates": {"image": {"data2vec2": 4}}, "finetune": True}}}
    write_params(image_workdir / "bench.yaml", params)
    out = image_workdir / "bench"
    printed = json.loads(run(pretrain_cmd(out, "--benchmark", "--params", "bench.yaml"), cwd=image_workdir).stdout)
    runs = json.loads((out / "runs.json").read_text())
    assert printed == {"runs_json": str(out / "runs.json"), "runs": runs}
    assert [(r["seed"], r["updates"], r["name"]) for r in runs] == [(0, 2, "s0-u2"), (0, 4, "s0-u4"), (1, 2, "s1-u2"),
                                                                     (1, 4, "s1-u4")]
    for r in runs:
        run_dir = out / r["name"]
        assert r["path"] == str(run_dir / "last.pt") and torch.load(run_dir / "last.pt", weights_only=True)["update"] == r["updates"]
        assert sorted(p.name for p in run_dir.glob("*.pt")) == ["best.pt", "last.pt"]  # no budget-<f>.pt inside a point
        config = json.loads((run_dir / "config.json").read_text())["pretrain"]
        assert (config["seed"], config["max_updates"], config["warmup_updates"], config["budget_seconds"]) == (
            r["seed"], r["updates"], 1, None)
        lrs = [json.loads(line)["lr"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert lrs[0] == pytest.approx(0.001) and lrs[-1] == pytest.approx(0.0, abs=1e-12)  # its own complete schedule
        assert r["samples"] == 8 * r["updates"] and r["pretrain_flops"] == r["flops_per_update"] * r["updates"]
        assert (r["preset"], r["world_size"], r["effective_batch"]["samples_per_update"]) == ("tiny", 1, 8)
        assert r["train_seconds"] > 0 and "CPU" in r["device"]
        assert r["precision"] == resolve_precision("auto", torch.device("cpu"))[0]  # what params.yaml's auto chose here
        summary = json.loads((run_dir / "summary.json").read_text())
        assert (summary["flops_per_update"], summary["pretrain_flops"]) == (r["flops_per_update"], r["pretrain_flops"])
    # counted once per seed, on the first batch of each: the same shape gives the same count
    assert runs[0]["flops_per_update"] > 0 and len({r["flops_per_update"] for r in runs}) == 1

    written = {r["name"]: (out / r["name"] / "last.pt").stat().st_mtime_ns for r in runs}
    (out / "s0-u12").mkdir()  # a run of another scale (DVC keeps the folder between runs): deleted, and said so
    (out / "s0-u12" / "last.pt").write_bytes(b"")
    again = run(pretrain_cmd(out, "--benchmark", "--params", "bench.yaml"), cwd=image_workdir)
    assert not (out / "s0-u12").exists() and "deleted 1 run folder(s) of another scale" in again.stderr
    assert {r["name"]: (out / r["name"] / "last.pt").stat().st_mtime_ns for r in runs} == written
    untimed = [{k: v for k, v in r.items() if k != "train_seconds"} for r in runs]
    assert [{k: v for k, v in r.items() if k != "train_seconds"} for r in json.loads((out / "runs.json").read_text())] == untimed

    # counting FLOPs left the runs alone: a plain run of the same seed and budget trains the same weights
    run(pretrain_cmd(image_workdir / "seed1", "--params", "bench.yaml", "--seed", "1", "--max-updates", "4"), cwd=image_workdir)
    assert json.loads((image_workdir / "seed1" / "config.json").read_text())["pretrain"]["seed"] == 1
    assert _students_equal(out / "s1-u4" / "last.pt", image_workdir / "seed1" / "last.pt")


def test_benchmark_budgets_come_from_params_yaml_only(image_workdir):
    result = subprocess.run(pretrain_cmd(image_workdir / "nope", "--benchmark", "--max-updates", "3"), cwd=image_workdir,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--max-updates: --benchmark trains the seeds and update budgets" in result.stderr


@pytest.mark.parametrize("modality, method, valid", [("image", "wav2vec2", "data2vec2, data2vec1, mae"),
                                                     ("text", "mae", "data2vec2, data2vec1, mlm")])
def test_another_modalitys_method_is_one_line_naming_the_valid_ones(modality, method, valid, tmp_path, capsys):
    from helpers import REPO
    from pipeline.cli import main

    # --nproc 2: refused before torchrun starts (no worker's log around the line)
    assert main(["pretrain", "--modality", modality, "--method", method, "--nproc", "2", "--out", str(tmp_path / "x"),
                 "--params", str(REPO / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --method {method}: not a pretraining method for {modality} (")
    assert err.endswith(f"; {modality} methods: {valid}\n") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_remove_stale_runs_deletes_only_other_run_folders(tmp_path):
    from pipeline.config import Run
    from pipeline.pretrain.stage import remove_stale_runs

    for name in ("s0-u12", "s1-u12", "s0-u480", "s0-u480-old", "tb"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "last.pt").write_bytes(b"x")
    (tmp_path / "s1-u24").write_text("a file, not a run folder")
    (tmp_path / "runs.json").write_text("[]")
    assert remove_stale_runs(tmp_path, [Run(0, 480, "s0-u480")]) == [tmp_path / "s0-u12", tmp_path / "s1-u12"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.json", "s0-u480", "s0-u480-old", "s1-u24", "tb"]
    assert (tmp_path / "s0-u480" / "last.pt").read_bytes() == b"x"  # the current run resumes from it
    assert remove_stale_runs(tmp_path / "absent", []) == []
