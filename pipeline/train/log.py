"""What a training run shows and leaves behind (rank 0 only): a progress bar with loss, throughput and ETA;
metrics.jsonl; TensorBoard events; loss_curve.png; summary.json; and, when launched through Dagster Pipes,
log lines and the summary's numbers sent back (pipeline/train/pipes.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.train.pipes import PipesReport


def loss_curve_png(records: list[dict[str, Any]], path: Path, title: str) -> None:
    from pipeline import plots

    fig, ax = plots.pyplot().subplots(figsize=(6, 3.2), dpi=100)
    ax.plot([r["update"] for r in records], [r["loss"] for r in records], lw=1.5)
    ax.set_xlabel("update")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    plots.save(fig, path)


class TrainLog:
    """The run's log on rank 0 (on other ranks every method does nothing).

    `total`/`initial`: the update budget and the update the run starts from (a resumed run keeps the records up
    to `initial` and rewrites the rest); `desc`: the progress bar's label; `title`: the loss curve's title;
    `tb_prefix`: the TensorBoard tag prefix (`pretrain/loss`, `finetune/loss`, ...)."""

    def __init__(self, out: Path, is_main: bool, progress: bool, total: int, initial: int, desc: str, title: str,
                 tb_prefix: str = "pretrain"):
        self.out, self.is_main, self.title, self.tb_prefix = out, is_main, title, tb_prefix
        self.bar = self.tb = self.pipes = None
        if not is_main:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="upd", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out / "tb"))
        self._keep_records_up_to(initial)  # a resumed run rewrites what came after its checkpoint
        self.metrics = open(out / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (closed in finish)
        self.pipes = PipesReport()

    def _keep_records_up_to(self, update: int) -> None:
        kept = [r for r in self.records() if r["update"] <= update]
        (self.out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))

    def info(self, message: str) -> None:
        if not self.is_main:
            return
        tqdm.write(message, file=sys.stderr)
        self.pipes.log(message)

    def step(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(record["update"] - self.bar.n)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", samples_s=f"{record['samples_per_s']:.1f}",
                                 tokens_s=f"{record['tokens_per_s']:.0f}", refresh=False)

    def write(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        for key, value in record.items():
            if key != "update" and isinstance(value, (int, float)):
                self.tb.add_scalar(f"{self.tb_prefix}/{key}", value, record["update"])
        self.pipes.log(f"update {record['update']}: loss {record['loss']:.4f}, {record['samples_per_s']:.1f} samples/s")

    def records(self) -> list[dict[str, Any]]:
        path = self.out / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Close the files; add final_loss, samples_per_s and tokens_per_s (of the last record) to `summary`;
        draw loss_curve.png; write summary.json; under Pipes, report the summary's plain values and the folder.
        Returns `summary`."""
        if not self.is_main:
            return summary
        self.bar.close()
        self.tb.close()
        self.metrics.close()
        records = self.records()
        if records:
            last = records[-1]
            summary.update(final_loss=last["loss"], samples_per_s=last["samples_per_s"], tokens_per_s=last["tokens_per_s"])
            loss_curve_png(records, self.out / "loss_curve.png", self.title)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        # the numbers and the folder; the asset adds the loss curve and the rest from the folder (assets/metadata.py)
        self.pipes.materialize({**{k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))},
                                "path": self.out})
        return summary
