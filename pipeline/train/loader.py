"""Training batches for every recipe: each update's global batch (a pure function of (seed, update), pipeline/
data/shard_reader.py), this rank's rows of it, cut into grad_accum micro-batches, through a DataLoader whose
workers do the decoding; and their grouping back into updates on the training side.

A dataset here is map-style over (update, ids): `dataset[(update, ids)]` is one ready micro-batch (a dict of
tensors) and `dataset.num_samples` the size of the split it samples (pipeline/pretrain/data.py PretrainBatches,
pipeline/finetune/data.py LabeledBatches).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from pipeline.data.shard_reader import RankBatchSampler


def default_workers(nproc: int) -> int:
    """DataLoader workers per process: the CPU cores left per process after its trainer's, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) // nproc - 1))


def make_loader(dataset, cfg, rank: int, world_size: int, start_update: int, stop_update: int,
                workers: int) -> torch.utils.data.DataLoader:
    """Micro-batches for updates [start_update, stop_update): each update's rank rows are split into
    grad_accum consecutive micro-batches, so accumulation never changes which samples make an update.

    `cfg` gives seed, batch_size (global samples per update), grad_accum and micro_batch(world_size). Each item
    carries "update" (the update it belongs to) and "ids" (its sample ids) besides the model's inputs."""
    rank_batches = RankBatchSampler(dataset.num_samples, cfg.batch_size, rank, world_size, cfg.seed, start_update, stop_update)

    def micro_batches() -> Iterator[tuple[int, list[int]]]:
        micro = cfg.micro_batch(world_size)
        for update, ids in zip(range(start_update, stop_update), rank_batches):
            for k in range(cfg.grad_accum):
                yield update, ids[k * micro : (k + 1) * micro]

    class _Sampler(torch.utils.data.Sampler):
        def __len__(self) -> int:
            return (stop_update - start_update) * cfg.grad_accum

        def __iter__(self):
            return micro_batches()

    return torch.utils.data.DataLoader(
        dataset, sampler=_Sampler(), batch_size=None, num_workers=workers, persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
        # its own generator: starting the loader must not draw from the global RNG a resumed run restores
        generator=torch.Generator().manual_seed(cfg.seed),
        worker_init_fn=_die_with_trainer,
    )


def updates(loader, grad_accum: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Group the loader's micro-batches into updates: yields (update, [micro-batch, ...]), the micro-batches
    without their "update" and "ids" entries (the model's inputs only)."""
    group: list = []
    for mb in loader:
        group.append(mb)
        if len(group) == grad_accum:
            update = int(mb["update"])
            yield update, [{k: v for k, v in b.items() if k not in ("update", "ids")} for b in group]
            group = []


def _die_with_trainer(worker_id: int) -> None:
    """Loader workers go when their trainer goes (at once, instead of at PyTorch's next watchdog poll)."""
    from pipeline.train.distributed import die_with_launcher

    die_with_launcher()
