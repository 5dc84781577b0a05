"""Typed pretraining config: the released optimization recipe per modality (spec §1.9), overridden by
params.yaml `pretrain.<modality>`. Operational knobs (device, nproc, workers) are not here.

Batch arithmetic: `batch_size` is the global number of samples per update (before the clone batch). Each
rank's micro-batch is batch_size / (world_size x grad_accum), so a run on fewer devices reproduces a larger
one exactly by accumulating more (the learning rate stays put). Changing `batch_size` itself rescales the
learning rate by the rule in `lr_scaling` (linear: lr x batch_size / reference_batch_size).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.errors import UserInputError


@dataclasses.dataclass
class PretrainConfig:
    modality: str = "image"
    method: str = "data2vec2"
    preset: str = "tiny"
    seed: int = 0
    # batch and schedule
    batch_size: int = 32
    grad_accum: int = 1
    max_updates: int = 100
    budget_seconds: float | None = None  # wall-clock budget of the training loop; stops at whichever comes first
    lr: float = 1e-3
    lr_scaling: str = "none"  # none | linear (lr x batch_size / reference_batch_size)
    reference_batch_size: int | None = None
    warmup_updates: int = 10
    min_lr: float = 0.0  # cosine decays to this
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.05
    clip_norm: float = 4.0  # 0 = no clipping
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 (GPU, with a grad scaler) | fp32
    # data
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    image_crop_scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop scale, + horizontal flip
    speech_crop_samples: int | None = None  # None: the model preset's max_sample_size
    text_block_size: int | None = None  # None: the model preset's max_positions
    # checkpoints and guards
    checkpoint_every: int = 50  # updates between last.pt saves
    checkpoint_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # of the budget (seconds if set, else updates)
    guard_after_updates: int = 5000  # collapse guard warm-up (fairseq: 5,000)
    log_every: int = 10

    def resolved_lr(self) -> float:
        if self.lr_scaling == "linear":
            return self.lr * self.batch_size / (self.reference_batch_size or self.batch_size)
        return self.lr

    def micro_batch(self, world_size: int) -> int:
        per_step = world_size * self.grad_accum
        if self.batch_size % per_step:
            raise UserInputError(
                f"batch_size {self.batch_size} is not divisible by world_size x grad_accum = {world_size} x {self.grad_accum}"
            )
        return self.batch_size // per_step


# The released recipes (spec §1.9 and §4), for the base presets.
RELEASED = {
    "image": dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05, clip_norm=4.0, warmup_updates=50_040,
                  max_updates=375_300, batch_size=512),
    "speech": dict(lr=7.5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, clip_norm=0.0, warmup_updates=8_000,
                   max_updates=400_000, batch_size=64),
    "text": dict(lr=2e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, clip_norm=1.0, warmup_updates=4_000,
                 max_updates=1_000_000, batch_size=64),
}


def build(modality: str, method: str, params: dict[str, Any], overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """Released recipe for `modality`, then params.yaml `pretrain.<modality>`, then `overrides` (CLI)."""
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    section = dict((params.get("pretrain") or {}).get(modality) or {})
    for source, values in (("params.yaml pretrain." + modality, section), ("overrides", overrides or {})):
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserInputError(f"{source}: unknown key(s) {unknown}")
    merged: dict[str, Any] = {**RELEASED[modality], "seed": int(params.get("seed", 0)), **section, **(overrides or {})}
    merged.update(modality=modality, method=method)
    for key in ("betas", "image_mean", "image_std", "image_crop_scale", "checkpoint_fractions"):
        if key in merged and merged[key] is not None:
            merged[key] = tuple(merged[key])
    return PretrainConfig(**merged)
