"""Typed pretraining config: the released optimization recipe of a modality (`released`), overridden by
params.yaml `pretrain.<modality>`, then by the command line. Operational knobs (device, nproc, workers) are not here.

A field has either a default below (the same for every modality) or a value in every recipe of `released`, never
both. Fields of the modality's data section (`image`, `speech`, `text`) sit in the same flat params.yaml block
(`pretrain.speech.crop_samples` is `cfg.speech.crop_samples`).

Batch arithmetic: `batch_size` is the global number of samples per update (before the clone batch). Each
rank's micro-batch is batch_size / (world_size x grad_accum), so a run on fewer devices reproduces a larger
one exactly by accumulating more (the learning rate stays put). Changing `batch_size` itself rescales the
learning rate by the rule in `lr_scaling` (linear: lr x batch_size / reference_batch_size).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from pipeline import config as P
from pipeline.errors import UserInputError

# ImageNet normalization (timm's IMAGENET_DEFAULT_MEAN / _STD), for pretraining and fine-tuning alike
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(kw_only=True)
class ImagePretrain:
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop scale, + horizontal flip


@dataclasses.dataclass(kw_only=True)
class SpeechPretrain:
    crop_samples: int | None = None  # random crop of longer utterances; None: the model preset's max_sample_size


@dataclasses.dataclass(kw_only=True)
class TextPretrain:
    block_size: int | None = None  # tokens per packed block; None: the model preset's max_positions


@dataclasses.dataclass(kw_only=True)
class PretrainConfig:
    modality: str
    method: str = "data2vec2"
    preset: str  # model size (model/presets.py)
    seed: int = 0
    # batch and schedule (linear warm-up, then cosine to min_lr)
    batch_size: int
    grad_accum: int = 1
    max_updates: int
    budget_seconds: float | None = None  # wall-clock budget of the training loop; stops at whichever comes first
    lr: float
    lr_scaling: str = "none"  # none | linear (lr x batch_size / reference_batch_size)
    reference_batch_size: int | None = None
    warmup_updates: int
    # when set, warmup_updates = max(1, round(warmup_fraction x max_updates)) (resolved by `build`), so a run of any
    # length gets the same shape of schedule (the released image recipe warms up for 50,040 / 375,300 = 0.133)
    warmup_fraction: float | None = None
    min_lr: float = 0.0
    # AdamW
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    clip_norm: float  # 0 = no clipping
    precision: str = "auto"  # auto (bf16 on GPU and on a CPU with native bf16, else fp32) | bf16 | fp16 (GPU, with a grad scaler) | fp32
    # torch.compile the model (its forward has no host syncs or per-update Python numbers: one graph, no
    # recompiles); compiling takes tens of seconds on a CPU (what it gives: docs/performance.md)
    compile: bool = False
    # checkpoints and guards
    checkpoint_every: int = 50  # updates between last.pt saves
    checkpoint_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # of the budget (seconds if set, else updates)
    guard_after_updates: int = 5000  # collapse guard warm-up (fairseq: 5,000)
    log_every: int = 10
    # data of the modality (the other two are None)
    image: ImagePretrain | None = None
    speech: SpeechPretrain | None = None
    text: TextPretrain | None = None

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


def released(modality: str) -> PretrainConfig:
    """The released data2vec 2.0 pretraining recipe of the base model: fairseq
    examples/data2vec/config/v2/base_{images,audio,text}_only_task.yaml. AdamW, linear warm-up then cosine to 0.
    Image: 375,300 updates of 512 images = 150 ImageNet-1K epochs with 20 of warm-up (the fine-tuning config's
    batch of 512 supports that reading; the checked-in world size alone gives 256)."""
    if modality == "image":
        return PretrainConfig(modality="image", preset="base", batch_size=512, max_updates=375_300, lr=1e-3,
                              warmup_updates=50_040, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05, clip_norm=4.0,
                              image=ImagePretrain())
    if modality == "speech":  # LibriSpeech 960 h
        return PretrainConfig(modality="speech", preset="base", batch_size=64, max_updates=400_000, lr=7.5e-4,
                              warmup_updates=8_000, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, clip_norm=0.0,
                              speech=SpeechPretrain())
    if modality == "text":  # Books + Wikipedia
        return PretrainConfig(modality="text", preset="base", batch_size=64, max_updates=1_000_000, lr=2e-4,
                              warmup_updates=4_000, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, clip_norm=1.0,
                              text=TextPretrain())
    raise UserInputError(f"no pretraining recipe for modality {modality!r}; modalities: {P.MODALITIES}")


def build(modality: str, method: str, params: dict[str, Any], overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """`released(modality)`, then params.yaml `seed` and `pretrain.<modality>`, then `overrides` (the command line),
    with warmup_updates resolved from warmup_fraction when that is set. Raises UserInputError for an unknown key or
    a warmup_fraction outside [0, 1)."""
    where = f"{P.source(params)} pretrain.{modality}"
    cfg = P.merge(released(modality), (f"{P.source(params)} seed", {"seed": P.seed(params)}),
                  (where, P.subtree(params, "pretrain", modality)),
                  ("command line", overrides), inline=modality)
    cfg = dataclasses.replace(cfg, modality=modality, method=method)
    if cfg.warmup_fraction is not None:
        if not 0 <= cfg.warmup_fraction < 1:
            raise UserInputError(f"{where}.warmup_fraction: {cfg.warmup_fraction} must be in [0, 1)")
        cfg = dataclasses.replace(cfg, warmup_updates=max(1, round(cfg.warmup_fraction * cfg.max_updates)))
    return cfg
