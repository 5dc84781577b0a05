"""The throughput stage times the training step pretraining runs (`Trainer.train_step`), in one process without
torchrun. Speed itself is never asserted."""
import argparse
import json
import time

import pytest
import torch

from helpers import write_params
from pipeline.benchmark.throughput import measure
from pipeline.cli import build_parser
from pipeline.config import Shard
from pipeline.data.prepare import prepare
from pipeline.data.shard import shard
from pipeline.pretrain.trainer import Pretrainer
from pipeline.train.trainer import Trainer


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("throughput")
    params = {"seed": 0, "image": {"prepare": {"train_limit": 16, "test_limit": 4}, "shard": {"max_samples_per_shard": 16}},
              "pretrain": {"image": {"preset": "tiny", "batch_size": 4, "max_updates": 10, "warmup_updates": 2}}}
    write_params(root / "params.yaml", params)
    prepare("image", params, root / "raw")
    shard("image", root / "raw", root / "shards", Shard(max_samples_per_shard=16), progress=False)
    return root


def test_the_timed_step_is_the_trainers(image_shards, monkeypatch):
    calls = []
    train_step = Trainer.train_step

    def spy(self, micro_batches):
        stats = train_step(self, micro_batches)
        calls.append((self, len(micro_batches), stats))
        time.sleep(0.02)  # inside the timed step: the measured step time cannot be less
        return stats

    monkeypatch.setattr(Trainer, "train_step", spy)
    deterministic = torch.are_deterministic_algorithms_enabled()
    args = build_parser().parse_args(["throughput", "--modality", "image", "--steps", "3", "--warmup", "1",
                                      "--loader-batches", "2", "--workers", "0", "--device", "cpu",
                                      "--shards", str(image_shards / "shards"), "--params", str(image_shards / "params.yaml")])
    try:
        record = measure(argparse.Namespace(**{**vars(args), "method": "data2vec2"}))
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert len(calls) == 1 + 1 + 3  # the FLOP count, warm-up, timed steps
    trainer = calls[0][0]
    assert isinstance(trainer, Pretrainer) and all(c[0] is trainer for c in calls)
    assert all(n == 1 for _, n, _ in calls)  # the whole batch in one micro-batch
    assert trainer.state["update"] == 5 and trainer.scheduler.last_epoch == 5  # optimizer and schedule stepped
    assert {"loss", "lr", "grad_norm", "ema_decay"} <= set(calls[-1][2])  # the EMA teacher stepped too
    assert record["step_seconds"] >= 0.02 and record["batch_size"] == 4 and record["method"] == "data2vec2"
    assert record["mfu"] == pytest.approx(record["flops_per_sample"] * 4 / record["step_seconds"] / record["matmul_peak_flops_per_s"])
    # MFU is the analytic FLOPs x steps/s / peak, to 1%
    analytic_mfu = record["analytic_flops_per_step"] / record["step_seconds"] / record["matmul_peak_flops_per_s"]
    assert record["mfu"] == pytest.approx(analytic_mfu, rel=0.01)
    assert sum(record["flops_by_component"].values()) == record["analytic_flops_per_step"]
    assert not torch.distributed.is_initialized()  # the world of one is gone again


def test_compare_times_every_kind_and_precision_side_by_side(image_shards, capsys):
    from pipeline.benchmark.throughput import run

    out = image_shards / "compare.json"
    deterministic = torch.are_deterministic_algorithms_enabled()
    args = build_parser().parse_args(["throughput", "--modality", "image", "--compare", "--steps", "1", "--repeats", "2",
                                      "--workers", "0", "--device", "cpu", "--out", str(out),
                                      "--shards", str(image_shards / "shards"), "--params", str(image_shards / "params.yaml")])
    try:
        run(args)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    (record,) = json.loads(out.read_text())
    assert set(record["samples_per_s"]) == {f"{p} {k}" for p in ("fp32", "bf16") for k in ("bare", "step", "loop")}
    assert {"fp32 step/bare", "bf16 loop/bare", "bf16/fp32 step"} <= set(record["ratios"])
    assert record["attention_shapes"]["student"] == [4 * 4, 4, 1 + 12, 32]  # B*M clones, heads, CLS + visible, head dim
    assert "| fp32 step samples/s |" in capsys.readouterr().out
