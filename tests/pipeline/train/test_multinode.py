"""Many nodes, tested on one machine: two torchrun agents, each a "node" with one process (`--nnodes 2
--nproc-per-node 1`, c10d rendezvous on 127.0.0.1), run the command docs/scaling.md gives for a cluster.

They must train like one process with the same global batch (the tolerance of the 1-vs-2-process test in
tests/pipeline/pretrain/test_pretrain.py), and a worker failing on one node must stop both agents, the failing
node's torchrun reporting that worker's exit status (2: bad input) and message. Tiny image model, a few updates."""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from helpers import run, tiny_image_shards

TOLERANCE = 2e-3  # relative, as test_one_process_and_two_processes_follow_the_same_trajectory


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """params.yaml and tiny Fashion-MNIST shards (16 training images in two shards, 8 test images). Fine-tuning
    without mixup, cutmix and drop path: those draw from each process's own random stream, so one process and two
    would see different mixes (and so different losses) by design."""
    root = tmp_path_factory.mktemp("multinode")
    params = {"seed": 0, "image": {"prepare": {"train_limit": 16, "test_limit": 8}, "shard": {"max_samples_per_shard": 8}},
              "pretrain": {"image": {"preset": "tiny", "batch_size": 4, "max_updates": 3, "warmup_updates": 1,
                                     "checkpoint_every": 3, "log_every": 1}},
              "finetune": {"image": {"preset": "tiny", "batch_size": 4, "max_updates": 3, "valid_size": 4, "eval_every": 3,
                                     "eval_batch_size": 8, "log_every": 1, "checkpoint_every": 3, "mixup": 0.0,
                                     "cutmix": 0.0, "drop_path": 0.0}}}
    tiny_image_shards(root, params)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(workdir, commands: list[list[str]], timeout: int = 240) -> list[subprocess.CompletedProcess]:
    """Start one torchrun agent per command (the stage's arguments after `-m pipeline`) as the nodes of one job
    and wait for both."""
    endpoint, run_id = f"127.0.0.1:{free_port()}", f"test{os.getpid()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                                "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id,
                                "--local-addr", "127.0.0.1", "-m", "pipeline", *command],
                               cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for command in commands]
    try:
        outputs = [agent.communicate(timeout=timeout)[0] for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
    return [subprocess.CompletedProcess(agent.args, agent.returncode, out, "") for agent, out in zip(agents, outputs)]


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line]


def stage(name, out, *extra):
    args = {"pretrain": ["pretrain", "--modality", "image"],
            "finetune": ["finetune", "--modality", "image", "--checkpoint", "none", "--task", "fashion_mnist"]}[name]
    return [*args, "--out", str(out), "--workers", "0", "--no-progress", "--fresh", *extra]


@pytest.mark.parametrize("name", ["pretrain", "finetune"])
def test_two_nodes_follow_the_trajectory_of_one_process(workdir, name):
    run([sys.executable, "-m", "pipeline", *stage(name, workdir / f"{name}-one")], cwd=workdir, env={"OMP_NUM_THREADS": "1"})
    nodes = two_nodes(workdir, [stage(name, workdir / f"{name}-two")] * 2)
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(n.stdout[-3000:] for n in nodes)
    one, two = losses(workdir / f"{name}-one"), losses(workdir / f"{name}-two")
    assert len(one) == len(two) == 3
    assert one == pytest.approx(two, rel=TOLERANCE), (one, two)
    config = json.loads((workdir / f"{name}-two" / "config.json").read_text())
    assert config["effective_batch"]["world_size"] == 2 and config["effective_batch"]["per_rank_micro_batch"] == 2


def test_a_worker_failing_on_one_node_stops_both_with_its_status(workdir):
    bad = workdir / "bad-shards"
    shutil.copytree(workdir / "data" / "shards" / "image", bad)
    shard = bad / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # node 1's copy of the data no longer matches its index.json: its worker exits 2
    shard.write_bytes(bytes(data))
    healthy, failing = two_nodes(workdir, [stage("pretrain", workdir / "fail-a"), stage("pretrain", workdir / "fail-b",
                                                                                         "--shards", str(bad))])
    # torchrun itself exits 1 on any worker failure; its report names the worker's own status and message
    assert failing.returncode == 1 and healthy.returncode == 1, (failing.stdout[-3000:], healthy.stdout[-3000:])
    assert "exitcode  : 2" in failing.stdout and "train-000001.tar: sha256 differs from index.json" in failing.stdout
    # the healthy node stopped instead of waiting for its peer (the timeout above is far shorter than the process
    # group's default of 30 min): its worker lost the connection, and its agent the rendezvous store when the
    # failing node hosted it
    assert "exitcode  : 1" in healthy.stdout or "RendezvousConnectionError" in healthy.stdout, healthy.stdout[-3000:]
    assert not (workdir / "fail-a" / "last.pt").exists() and not (workdir / "fail-b" / "last.pt").exists()
