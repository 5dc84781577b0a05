"""The torchrun launcher (pipeline/train/launch.py): a worker's exit status and its one-line message survive
`--nproc 2` (2: bad input, 3: a guard stopped training), printed last with no torchrun traceback; a signal to the
launcher reaches the workers.

Each end-to-end case trains a tiny image model on two processes (seconds each)."""
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from helpers import tiny_image_shards
from pipeline.errors import TrainingStopped, UserInputError


@pytest.fixture(scope="module")
def image_workdir(tmp_path_factory):
    """params.yaml and tiny Fashion-MNIST shards (16 training images in two shards)."""
    root = tmp_path_factory.mktemp("launch")
    params = {"seed": 0, "image": {"prepare": {"train_limit": 16, "test_limit": 8}, "shard": {"max_samples_per_shard": 8}},
              "pretrain": {"image": {"preset": "tiny", "batch_size": 4, "max_updates": 4, "warmup_updates": 1,
                                     "checkpoint_every": 1, "log_every": 1}}}
    tiny_image_shards(root, params)
    return root


def pretrain(root, out, *extra, timeout=300):
    cmd = [sys.executable, "-m", "pipeline", "pretrain", "--modality", "image", "--out", str(out), "--workers", "0",
           "--no-progress", "--nproc", "2", *extra]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def test_a_guard_stop_on_two_processes_exits_3_with_its_line_last(image_workdir):
    result = pretrain(image_workdir, image_workdir / "nan", "--debug-nan-at-update", "2")
    assert result.returncode == 3, result.stderr[-3000:]
    assert last_line(result.stderr) == (f"stopped: loss is nan at update 2; stopped, last good checkpoint kept in "
                                        f"{image_workdir / 'nan' / 'last.pt'}")
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    assert result.stderr.count("loss is nan at update 2") == 1  # printed once, by the launcher
    assert result.stdout == ""


def test_bad_input_on_two_processes_exits_2_with_its_line_last(image_workdir, tmp_path):
    import shutil

    root = tmp_path / "truncated"
    shutil.copytree(image_workdir, root)
    shard = root / "data" / "shards" / "image" / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:5000])  # a copy that stopped half-way
    result = pretrain(root, root / "out")
    assert result.returncode == 2, result.stderr[-3000:]
    line = last_line(result.stderr)
    assert line.startswith("error: data/shards/image/train-000001.tar: 5000 bytes") and "re-run `python -m pipeline shard" in line
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr


def test_sigterm_to_the_launcher_reaches_the_workers(image_workdir):
    out = image_workdir / "terminated"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "pretrain", "--modality", "image", "--out", str(out),
                             "--workers", "0", "--no-progress", "--nproc", "2", "--max-updates", "100000"],
                            cwd=image_workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 2):
        time.sleep(0.1)
    workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == proc.pid]
    assert len(workers) == 2, "two workers, children of the launcher (the torchrun agent runs in it)"
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == -signal.SIGTERM, stderr[-3000:]  # died of the signal, as its workers did
    assert not [w for w in workers if os.path.exists(f"/proc/{w}") and _state(w) != "Z"]


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_the_first_reported_error_is_raised_again():
    from pipeline.train.launch import worker_error

    def failure(data, timestamp, message=""):
        return SimpleNamespace(error_file_data=data, timestamp=timestamp, message=message)

    crash = failure({"message": "<NONE>"}, 5)
    peer = failure({"message": "RuntimeError: Connection closed by peer"}, 1)  # a consequence, reported first
    stopped = failure({"message": "loss is nan", "pipeline_error": "TrainingStopped"}, 3, "loss is nan")
    bad = failure({"message": "shard.tar: truncated", "pipeline_error": "UserInputError"}, 4, "shard.tar: truncated")
    error = worker_error([crash, peer, bad, stopped])
    assert isinstance(error, TrainingStopped) and str(error) == "loss is nan"
    assert isinstance(worker_error([bad, crash]), UserInputError)
    assert worker_error([crash, peer]) is None  # a crash: torchrun's own report stands


def test_a_worker_writes_its_error_for_the_launcher(tmp_path, monkeypatch):
    from pipeline.train.launch import report_error, worker_error

    error_file = tmp_path / "error.json"
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert report_error(UserInputError("x"), "x") is False and not error_file.exists()  # not a worker: print it
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.delenv("PIPELINE_LAUNCHED", raising=False)
    assert report_error(UserInputError("bad"), "bad") is False  # torchrun started by hand: the worker prints too
    monkeypatch.setenv("PIPELINE_LAUNCHED", "1")
    assert report_error(TrainingStopped("nan"), "nan") is True
    record = json.loads(error_file.read_text())
    assert record["message"] == "nan" and record["pipeline_error"] == "TrainingStopped" and record["timestamp"] > 0
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    failure = ProcessFailure(local_rank=1, pid=1, exitcode=3, error_file=str(error_file))  # how torchrun reads it
    assert failure.message == "nan" and isinstance(worker_error([failure]), TrainingStopped)
