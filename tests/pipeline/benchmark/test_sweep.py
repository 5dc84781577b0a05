"""The sweep's bookkeeping (its fine-tuning runs are exercised end to end by the demo job and `dvc repro`)."""
import pytest

from pipeline.errors import UserInputError
from pipeline.benchmark.sweep import budget_checkpoints, clear, record


def test_budget_checkpoints_in_fraction_order(tmp_path):
    for name in ("budget-1.pt", "budget-0.25.pt", "budget-0.5.pt", "last.pt", "best.pt"):
        (tmp_path / name).write_bytes(b"")
    assert [(f, p.name) for f, p in budget_checkpoints(tmp_path)] == [
        (0.25, "budget-0.25.pt"), (0.5, "budget-0.5.pt"), (1.0, "budget-1.pt")]
    with pytest.raises(UserInputError, match="no budget"):
        budget_checkpoints(tmp_path / "missing")


def test_clear_removes_only_an_earlier_sweep(tmp_path):
    (tmp_path / "budget-0.25" / "tb").mkdir(parents=True)
    (tmp_path / "scratch").mkdir()
    (tmp_path / "curve.json").write_text("[]")
    (tmp_path / "notes.txt").write_text("mine")
    clear(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_record_follows_the_metrics_schema():
    metrics = {"task": "t", "metric": "top1", "value": 0.5, "split": "test", "pretrain_updates": 3, "pretrain_seconds": 1.5,
               "device": "cpu", "world_size": 1, "checkpoint": "budget-1.pt", "label_fraction": 1.0, "finetune_updates": 4}
    r = record(metrics, "image", "mae", "tiny", 8, {"samples_per_update": 8})
    assert (r["pretrain_samples"], r["pretrain_seconds"], r["value"], r["effective_batch"]) == (24, 1.5, 0.5, {"samples_per_update": 8})
