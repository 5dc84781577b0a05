"""The training engine in one process (a world of one, no torchrun) on a toy regression: accumulation, the NaN
guard, exact resume, the identity check, and the torchrun re-execution's argument list.

The recipes on real data (1 vs 2 processes, SIGKILL resume, budgets) are tested through the CLI in
tests/pipeline/pretrain and tests/pipeline/finetune."""
import dataclasses
import json
import time

import pytest
import torch
from torch import nn

from pipeline.errors import TrainingStopped, UserInputError
from pipeline.train import distributed
from pipeline.train.launch import RunOptions, _without_nproc
from pipeline.train.loader import updates
from pipeline.train.trainer import Trainer


@dataclasses.dataclass
class ToyConfig:
    seed: int = 0
    batch_size: int = 8
    grad_accum: int = 1
    max_updates: int = 6
    lr: float = 0.05
    min_lr: float = 0.0
    warmup_updates: int = 2
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    precision: str = "fp32"
    log_every: int = 2
    checkpoint_every: int = 2

    def micro_batch(self, world_size: int) -> int:
        if self.batch_size % (world_size * self.grad_accum):
            raise UserInputError("batch_size not divisible")
        return self.batch_size // (world_size * self.grad_accum)


class ToyData(torch.utils.data.Dataset):
    """y = x @ w + noise; `dataset[(update, ids)]` is the micro-batch of those sample ids."""

    num_samples = 40

    def __init__(self):
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(self.num_samples, 4, generator=gen)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(self.num_samples, generator=gen)

    def __len__(self):
        return self.num_samples

    def __getitem__(self, item):
        update, ids = item
        return {"x": self.x[ids], "y": self.y[ids], "ids": torch.tensor(ids), "update": torch.tensor(update)}

    def tokens_per_sample(self, batch):
        return 1


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.drop = nn.Dropout(0.1)  # per-rank RNG streams matter for exact resume

    def forward(self, batch):
        pred = self.linear(self.drop(batch["x"])).squeeze(-1)
        loss = ((pred - batch["y"]) ** 2).mean()
        return loss, {"pred_mean": pred.mean().detach()}


class ToyTrainer(Trainer):
    desc = title = "toy"
    model_cfg = None

    def build_model(self):
        return ToyModel()

    def build_data(self):
        return ToyData()

    def find_unused_parameters(self):
        return False

    def run_identity(self):
        return {"lr": self.cfg.lr}


@pytest.fixture
def world():
    """A process group of one in this process; the trainer's global torch settings are put back afterwards."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    d = distributed.setup("cpu")
    try:
        yield d
    finally:
        distributed.teardown()
        torch.use_deterministic_algorithms(deterministic)


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_updates_group_micro_batches_and_keep_only_model_inputs():
    data = ToyData()
    loader = [data[(u, [2 * u + k])] for u in range(3) for k in range(2)]
    grouped = list(updates(loader, grad_accum=2))
    assert [u for u, _ in grouped] == [0, 1, 2]
    assert all(len(mbs) == 2 and all(set(mb) == {"x", "y"} for mb in mbs) for _, mbs in grouped)


def test_accumulated_step_equals_the_full_batch(world):
    data = ToyData()
    batch = {k: v for k, v in data[(0, list(range(8)))].items() if k in ("x", "y")}
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    cfg = dataclasses.replace(ToyConfig(), clip_norm=0.0)
    full, accum = ToyTrainer(cfg, None, world, None), ToyTrainer(cfg, None, world, None)
    full.model.drop.p = accum.model.drop.p = 0.0
    a, b = full.train_step([batch]), accum.train_step(halves)
    assert a["loss"] == pytest.approx(b["loss"]) and a["grad_norm"] == pytest.approx(b["grad_norm"])
    assert torch.allclose(full.model.linear.weight, accum.model.linear.weight, atol=1e-6)
    assert full.state["update"] == accum.state["update"] == 1 and {"lr", "grad_norm", "pred_mean"} <= set(a)


def test_nan_loss_stops_before_the_optimizer_step(world):
    trainer = ToyTrainer(ToyConfig(), None, world, None, RunOptions(debug_nan_at_update=1))
    batch = {k: v for k, v in trainer.dataset[(0, list(range(8)))].items() if k in ("x", "y")}
    trainer.train_step([batch])
    weight = trainer.model.linear.weight.detach().clone()
    with pytest.raises(TrainingStopped, match="loss is nan at update 1"):
        trainer.train_step([batch])
    assert torch.equal(trainer.model.linear.weight, weight) and trainer.state["update"] == 1


class Crash(Exception):
    pass


class CrashingTrainer(ToyTrainer):
    """Dies right after update 4 and its last.pt, as a killed run would."""

    def end_of_update(self, done):
        super().end_of_update(done)
        if done == 4:
            raise Crash


def test_fit_resumes_exactly_and_only_the_same_run(world, tmp_path, capsys):
    options = RunOptions(workers=0, progress=False)
    full = ToyTrainer(ToyConfig(), None, world, tmp_path / "full", options).fit()
    assert full["updates"] == 6 and full["stop_reason"] == "max_updates"
    out = tmp_path / "resumed"
    with pytest.raises(Crash):
        CrashingTrainer(ToyConfig(), None, world, out, options).fit()
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["update"] == 4 and {"model", "optimizer", "scheduler", "scaler", "rng", "world_size", "identity",
                                    "config", "train_seconds"} <= set(ckpt)
    ToyTrainer(ToyConfig(), None, world, out, options).fit()
    assert losses(out) == losses(tmp_path / "full") and len(losses(out)) == 3
    a, b = (torch.load(p / "last.pt", weights_only=True)["model"] for p in (tmp_path / "full", out))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "from another" not in capsys.readouterr().err
    ToyTrainer(dataclasses.replace(ToyConfig(), lr=0.01), None, world, out, options).fit()
    assert "is from another run" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["updates"] == 6


class SlowSavingTrainer(ToyTrainer):
    """Each checkpoint write takes 0.2 s more."""

    def save(self, name):
        time.sleep(0.2)
        super().save(name)


def test_train_seconds_leave_out_checkpoint_writes(world, tmp_path):
    summary = SlowSavingTrainer(ToyConfig(), None, world, tmp_path, RunOptions(workers=0, progress=False)).fit()
    assert summary["updates"] == 6  # last.pt after updates 2, 4 and 6: 0.6 s of writes, none of it training
    assert summary["train_seconds"] < 0.3, summary["train_seconds"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["seconds"] < 0.3


def test_step_flops_count_the_first_update_of_the_run(world):
    cfg = dataclasses.replace(ToyConfig(), grad_accum=2)
    a, b = ToyTrainer(cfg, None, world, None), ToyTrainer(dataclasses.replace(cfg, seed=1), None, world, None)
    batches = a.first_update()
    assert [len(mb["x"]) for mb in batches] == [4, 4] and all(set(mb) == {"x", "y"} for mb in batches)
    # a linear layer 4 -> 1 on 8 rows: forward 2 x 8 x 4 x 1, backward as much again (the weight's gradient; the
    # input needs none), over both micro-batches
    assert a.step_flops(batches) == 2 * (2 * 8 * 4) and a.state["update"] == 1
    assert b.step_flops(b.first_update()) == a.step_flops(a.first_update())  # same shapes, same count


def test_step_flops_count_every_block_under_layerdrop(world):
    """Counts are taken with layerdrop off: two counts of a model that drops blocks agree, with the full model's."""
    from model.data2vec2 import Data2Vec2
    from model.masking import make_mask
    from model.presets import get_config

    def counts(layerdrop: float) -> list[int]:
        model_cfg = get_config("text", "tiny")
        model_cfg.encoder = dataclasses.replace(model_cfg.encoder, layerdrop=layerdrop)

        class TextTrainer(ToyTrainer):
            def build_model(self):
                return Data2Vec2(model_cfg)

        trainer = TextTrainer(ToyConfig(), None, world, None)
        batch = {"tokens": torch.randint(5, 100, (2, 24)), "mask": make_mask(model_cfg, 0, 0, [0, 1], input_length=24)}
        return [trainer.step_flops([batch]) for _ in range(2)]

    dropping = counts(0.5)
    assert dropping[0] == dropping[1] == counts(0.0)[0] > 0


def test_torchrun_workers_get_the_command_without_nproc():
    argv = ["pretrain", "--modality", "image", "--nproc", "2", "--nproc=3", "--out", "x"]
    assert _without_nproc(argv) == ["pretrain", "--modality", "image", "--out", "x"]


def test_compile_option_compiles_the_model_in_place(world):
    from pipeline.pretrain.config import build

    assert build("image", "data2vec2", {"pretrain": {"image": {"compile": True}}}).compile is True
    assert build("image", "data2vec2", {}).compile is False

    @dataclasses.dataclass
    class CompiledConfig(ToyConfig):
        compile: bool = True

    plain, compiled = ToyTrainer(ToyConfig(), None, world, None), ToyTrainer(CompiledConfig(), None, world, None)
    assert compiled.model._compiled_call_impl is not None and plain.model._compiled_call_impl is None
    assert list(compiled.model.state_dict()) == list(plain.model.state_dict())  # the same names in checkpoints
    batches = plain.first_update()
    assert compiled.step_flops(batches) == plain.step_flops(batches) > 0  # counted eagerly, no compilation


def test_precision_auto_follows_the_hardware(monkeypatch):
    """auto: bf16 on a GPU; on a CPU bf16 only with native bf16 instructions (a rule, not a start-up timing)."""
    from pipeline.train import optim

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(optim, "cpu_has_native_bf16", lambda: True)
    assert optim.resolve_precision("auto", cpu)[0] == "bf16" and optim.autocast_dtype("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(optim, "cpu_has_native_bf16", lambda: False)
    assert optim.resolve_precision("auto", cpu)[0] == "fp32" and optim.autocast_dtype("auto", cpu) is None
    assert optim.resolve_precision("auto", gpu)[0] == "bf16"
    assert optim.autocast_dtype("bf16", cpu) is torch.bfloat16 and optim.autocast_dtype("fp32", gpu) is None
    with pytest.raises(UserInputError, match="fp16 needs a GPU"):
        optim.resolve_precision("fp16", cpu)
    with pytest.raises(UserInputError, match="must be auto, bf16, fp16 or fp32"):
        optim.resolve_precision("half", cpu)


class _Marker:
    """An object a checkpoint must not hold: unpickling it would create the file `touched`."""

    touched = None

    def __reduce__(self):
        return (open, (str(self.touched), "w"))


def test_a_checkpoint_holding_python_objects_is_refused_in_one_line_and_never_unpickled(tmp_path):
    from pipeline.train import checkpoint

    marker = _Marker()
    marker.touched = tmp_path / "touched"
    torch.save({"student": {}, "extra": marker}, tmp_path / "evil.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    for name in ("evil.pt", "garbage.pt"):
        with pytest.raises(UserInputError) as raised:
            checkpoint.load(tmp_path / name)
        message = str(raised.value)
        assert message.startswith(f"{tmp_path / name}: not a loadable checkpoint (weights_only loading refused it")
        assert "\n" not in message and "weights_only=False" not in message and "`weights_only` set to `False`" not in message
    assert not marker.touched.exists()
    torch.save({"student": {"w": torch.ones(2)}, "updates": 3}, tmp_path / "good.pt")
    assert checkpoint.load(tmp_path / "good.pt")["updates"] == 3
