"""Typed fine-tuning config: the released recipe per modality (spec §5), overridden by params.yaml
`finetune.<modality>` (and, for `--mode linear_probe`, by `finetune.<modality>.linear_probe`), then by the CLI.

Batch arithmetic is the pretraining one (pipeline/pretrain/config.py): `batch_size` is the global number of
labeled samples per update, each rank's micro-batch is batch_size / (world_size x grad_accum), and the global
batches are a pure function of (seed, update), so 1 and N processes see the same samples. Schedules are
given as fractions of `max_updates`, so scaling the number of updates keeps their shape.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.errors import UserInputError

MODES = ("finetune", "linear_probe")
PRIMARY_METRIC = {"image": "top1", "speech": "wer", "text": "accuracy"}
LOWER_IS_BETTER = {"wer", "cer"}


@dataclasses.dataclass
class FinetuneConfig:
    modality: str = "image"
    task: str = ""
    mode: str = "finetune"  # finetune | linear_probe (image: frozen encoder)
    label_fraction: float = 1.0  # of the labeled training split; stratified by class (speech: utterances)
    preset: str = "tiny"  # model size of the `scratch` baseline (a pretrained checkpoint brings its own)
    seed: int = 0
    # batch and schedule
    batch_size: int = 32
    grad_accum: int = 1
    max_updates: int = 100
    lr: float = 1e-3
    min_lr: float = 0.0  # cosine floor
    schedule: str = "cosine"  # cosine | tri_stage | polynomial
    warmup_fraction: float = 0.1
    hold_fraction: float = 0.4  # tri_stage only
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 0.0  # 0 = no clipping
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    layer_decay: float = 1.0  # lr x layer_decay^(N - i) for block i of N; 1 = off
    # regularization pushed into the encoder config (None = keep the pretrained / preset value)
    drop_path: float | None = None
    dropout: float | None = None  # attention output projection and post-MLP dropout
    attention_dropout: float | None = None
    activation_dropout: float | None = None
    layerdrop: float | None = None
    # image
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0
    mix_prob: float = 1.0  # probability that a batch is mixed at all (when mixup or cutmix is on)
    switch_prob: float = 0.5  # probability of cutmix instead of mixup when both are on
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop + horizontal flip in training
    hflip: bool = True
    eval_crop_ratio: float = 0.875  # evaluation: resize to input/ratio, center crop (ImageNet: 256 -> 224)
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # speech (CTC)
    mask_prob: float = 0.65  # time masks: spans of mask_length frames, replaced by noise
    mask_length: int = 10
    mask_noise_std: float = 0.01
    mask_channel_prob: float = 0.25  # channel masks: spans of mask_channel_length channels, zeroed
    mask_channel_length: int = 64
    freeze_updates: int = 0  # only the head trains for the first freeze_updates (freeze_finetune_updates)
    final_dropout: float = 0.0
    max_sample_size: int = 16000 * 30  # training crop of longer utterances, in samples
    # text
    pooler_dropout: float = 0.0
    # evaluation, logs, checkpoints
    valid_size: int = 1000  # carved (stratified) from train when the task has no validation split
    eval_every: int = 100  # updates between validations (best.pt); also after the last update
    eval_batch_size: int = 256
    log_every: int = 10
    checkpoint_every: int = 100

    def micro_batch(self, world_size: int) -> int:
        per_step = world_size * self.grad_accum
        if self.batch_size % per_step:
            raise UserInputError(
                f"finetune batch_size {self.batch_size} is not divisible by world_size x grad_accum = {world_size} x {self.grad_accum}")
        return self.batch_size // per_step

    @property
    def warmup_updates(self) -> int:
        return max(1, int(self.max_updates * self.warmup_fraction))

    @property
    def metric(self) -> str:
        return PRIMARY_METRIC[self.modality]


# The released recipes (spec §5): ImageNet ViT-B (mae_imagenet_clean), LibriSpeech 10 h (vox_10h, the
# README-recommended config for d2v2 audio), GLUE (RoBERTa-style, the README's default LR).
RELEASED = {
    "image": dict(lr=1e-3, min_lr=1e-6, schedule="cosine", warmup_fraction=16_000 / 250_200, betas=(0.9, 0.95),
                  weight_decay=0.05, layer_decay=0.65, drop_path=0.1, label_smoothing=0.1, mixup=0.7, cutmix=1.0,
                  mix_prob=0.9, switch_prob=0.5, batch_size=512, max_updates=250_200, clip_norm=0.0, preset="base"),
    "speech": dict(lr=1e-4, schedule="tri_stage", warmup_fraction=0.1, hold_fraction=0.4, betas=(0.9, 0.98), eps=1e-8,
                   weight_decay=0.0, mask_prob=0.75, mask_channel_prob=0.25, mask_channel_length=64, mask_length=10,
                   freeze_updates=10_000, layerdrop=0.1, activation_dropout=0.1, max_updates=20_000, batch_size=256,
                   preset="base"),
    "text": dict(lr=2e-5, schedule="polynomial", warmup_fraction=0.06, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1,
                 pooler_dropout=0.0, batch_size=32, max_updates=20_935, preset="base"),
}

_TUPLES = ("betas", "crop_scale", "image_mean", "image_std")


def build(modality: str, task: str, mode: str, params: dict[str, Any], overrides: dict[str, Any] | None = None) -> FinetuneConfig:
    """Released recipe, then params.yaml `finetune.<modality>`, then its `linear_probe` block (linear probe
    only), then `overrides` (the CLI)."""
    if mode not in MODES:
        raise UserInputError(f"--mode must be one of {MODES}, got {mode!r}")
    if mode == "linear_probe" and modality != "image":
        raise UserInputError("--mode linear_probe is defined for images (classification on frozen features)")
    names = {f.name for f in dataclasses.fields(FinetuneConfig)}
    section = dict((params.get("finetune") or {}).get(modality) or {})
    probe = dict(section.pop("linear_probe", None) or {})
    layers = [(f"params.yaml finetune.{modality}", section), (f"params.yaml finetune.{modality}.linear_probe", probe),
              ("overrides", overrides or {})]
    for source, values in layers:
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserInputError(f"{source}: unknown key(s) {unknown}")
    merged: dict[str, Any] = {**RELEASED[modality], "seed": int(params.get("seed", 0)), **section,
                              **(probe if mode == "linear_probe" else {}), **(overrides or {})}
    merged.update(modality=modality, task=task, mode=mode)
    for key in _TUPLES:
        if merged.get(key) is not None:
            merged[key] = tuple(merged[key])
    cfg = FinetuneConfig(**merged)
    if not 0 < cfg.label_fraction <= 1:
        raise UserInputError(f"--label-fraction must be in (0, 1], got {cfg.label_fraction}")
    if cfg.schedule not in ("cosine", "tri_stage", "polynomial"):
        raise UserInputError(f"finetune.{modality}.schedule must be cosine, tri_stage or polynomial, got {cfg.schedule!r}")
    return cfg
