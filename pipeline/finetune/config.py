"""Typed fine-tuning config: the released recipe of a modality (`released`), overridden by params.yaml
`finetune.<modality>` (and, for `--mode linear_probe`, by `finetune.<modality>.linear_probe`), then by the
command line.

Common fields (batch, schedule, optimizer, precision, encoder regularization, cadence) are flat; what only one
modality uses sits in its section: `cfg.image` (augmentation, mixup/cutmix, label smoothing), `cfg.speech` (CTC
masks, frozen encoder updates, crops), `cfg.text` (pooler dropout); the other two sections are None. params.yaml
keeps one flat block per modality: `finetune.speech.mask_prob` is `cfg.speech.mask_prob`.
A field has either a default below or a value in every recipe of `released` that uses it, never both.

Batch arithmetic is the pretraining one (pipeline/pretrain/config.py): `batch_size` is the global number of
labeled samples per update, each rank's micro-batch is batch_size / (world_size x grad_accum), and the global
batches are a pure function of (seed, update), so 1 and N processes see the same samples. Schedules are
given as fractions of `max_updates`, so scaling the number of updates keeps their shape.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from pipeline import config as P
from pipeline.errors import UserInputError
from pipeline.finetune.metrics import PRIMARY_METRIC
from pipeline.pretrain.config import IMAGENET_MEAN, IMAGENET_STD

MODES = ("finetune", "linear_probe")
SCHEDULES = ("cosine", "tri_stage", "polynomial")


@dataclasses.dataclass(kw_only=True)
class ImageFinetune:
    """Classification: timm-style augmentation, mixup/cutmix and label smoothing."""

    label_smoothing: float
    mixup: float  # Beta(alpha, alpha); 0 = off
    cutmix: float
    mix_prob: float  # probability that a batch is mixed at all (when mixup or cutmix is on)
    switch_prob: float  # probability of cutmix instead of mixup when both are on
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop + horizontal flip in training
    hflip: bool = True
    eval_crop_ratio: float = 0.875  # evaluation: resize to input/ratio, center crop (ImageNet: 256 -> 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclasses.dataclass(kw_only=True)
class SpeechFinetune:
    """CTC on letters (fairseq wav2vec2_asr.py): time and channel masks, a frozen encoder at first."""

    mask_prob: float  # time masks: spans of mask_length frames, replaced by noise
    mask_length: int
    mask_channel_prob: float  # channel masks: spans of mask_channel_length channels, zeroed
    mask_channel_length: int
    freeze_updates: int  # only the head trains for the first freeze_updates (fairseq freeze_finetune_updates)
    mask_noise_std: float = 0.01
    final_dropout: float = 0.0
    max_sample_size: int = 16000 * 30  # training crop of longer utterances, in samples


@dataclasses.dataclass(kw_only=True)
class TextFinetune:
    """Sentence classification from <s> with the RoBERTa classification head."""

    pooler_dropout: float


@dataclasses.dataclass(kw_only=True)
class FinetuneConfig:
    modality: str
    task: str
    mode: str = "finetune"  # finetune | linear_probe (image: frozen encoder)
    label_fraction: float = 1.0  # of the labeled training split; stratified by class (speech: utterances)
    preset: str  # model size of the `scratch` baseline (a pretrained checkpoint brings its own)
    seed: int = 0
    # batch and schedule
    batch_size: int
    grad_accum: int = 1
    max_updates: int
    lr: float
    min_lr: float  # cosine floor
    schedule: str  # cosine | tri_stage | polynomial
    warmup_fraction: float
    hold_fraction: float = 0.4  # tri_stage only (fairseq phase_ratio 0.1 / 0.4 / 0.5)
    # AdamW, with layer-wise learning-rate decay: lr x layer_decay^(N - i) for block i of N; 1 = off
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    layer_decay: float
    clip_norm: float = 0.0  # 0 = no clipping
    precision: str = "auto"  # auto (bf16 on GPU and on a CPU with native bf16, else fp32) | bf16 | fp16 | fp32
    # regularization pushed into the encoder config (None = keep the pretrained / preset value)
    drop_path: float | None
    dropout: float | None  # attention output projection and post-MLP dropout
    attention_dropout: float | None
    activation_dropout: float | None
    layerdrop: float | None
    # evaluation, logs, checkpoints
    valid_size: int = 1000  # carved (stratified) from train when the task has no validation split
    eval_every: int = 100  # updates between validations (best.pt); also after the last update
    eval_batch_size: int = 256
    log_every: int = 10
    checkpoint_every: int = 100
    # what only the modality uses (the other two are None)
    image: ImageFinetune | None = None
    speech: SpeechFinetune | None = None
    text: TextFinetune | None = None

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


def released(modality: str, task: str) -> FinetuneConfig:
    """The released fine-tuning recipe of the base model for `task`:
    image  ImageNet-1K, fairseq examples/data2vec/config/vision/finetuning/mae_imagenet_clean.yaml (100 epochs at 512);
    speech LibriSpeech 10 h, examples/wav2vec/config/finetuning/vox_10h.yaml (what the data2vec README recommends
           for data2vec 2.0 audio; tri-stage schedule);
    text   GLUE SST-2, examples/data2vec/config/v2/text_finetuning/sst_2.yaml (10 epochs, the README's default LR)."""
    if modality == "image":
        return FinetuneConfig(
            modality="image", task=task, preset="base", batch_size=512, max_updates=250_200, lr=1e-3, min_lr=1e-6,
            schedule="cosine", warmup_fraction=16_000 / 250_200, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05,
            layer_decay=0.65, drop_path=0.1, dropout=None, attention_dropout=None, activation_dropout=None, layerdrop=None,
            image=ImageFinetune(label_smoothing=0.1, mixup=0.7, cutmix=1.0, mix_prob=0.9, switch_prob=0.5))
    if modality == "speech":
        return FinetuneConfig(
            modality="speech", task=task, preset="base", batch_size=256, max_updates=20_000, lr=1e-4, min_lr=0.0,
            schedule="tri_stage", warmup_fraction=0.1, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0, layer_decay=1.0,
            drop_path=None, dropout=None, attention_dropout=None, activation_dropout=0.1, layerdrop=0.1,
            speech=SpeechFinetune(mask_prob=0.75, mask_length=10, mask_channel_prob=0.25, mask_channel_length=64,
                                  freeze_updates=10_000))
    if modality == "text":
        return FinetuneConfig(
            modality="text", task=task, preset="base", batch_size=32, max_updates=20_935, lr=2e-5, min_lr=0.0,
            schedule="polynomial", warmup_fraction=0.06, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1, layer_decay=1.0,
            drop_path=None, dropout=None, attention_dropout=None, activation_dropout=None, layerdrop=None,
            text=TextFinetune(pooler_dropout=0.0))
    raise UserInputError(f"no fine-tuning recipe for modality {modality!r}; modalities: {P.MODALITIES}")


def build(modality: str, task: str, mode: str, params: dict[str, Any], overrides: dict[str, Any] | None = None) -> FinetuneConfig:
    """`released(modality, task)`, then params.yaml `seed` and `finetune.<modality>`, then its `linear_probe` block
    (linear probe only), then `overrides` (the command line)."""
    if mode not in MODES:
        raise UserInputError(f"--mode must be one of {MODES}, got {mode!r}")
    if mode == "linear_probe" and modality != "image":
        raise UserInputError("--mode linear_probe is defined for images (classification on frozen features)")
    where = f"{P.source(params)} finetune.{modality}"
    block = dict(P.subtree(params, "finetune", modality))
    probe = (f"{where}.linear_probe", block.pop("linear_probe", None))
    recipe = released(modality, task)
    layers = [(f"{P.source(params)} seed", {"seed": P.seed(params)}), (where, block), probe, ("command line", overrides)]
    if mode != "linear_probe":
        P.merge(recipe, probe, inline=modality)  # a wrong key there is an error in every mode
        layers.remove(probe)
    cfg = P.merge(recipe, *layers, inline=modality)
    cfg = dataclasses.replace(cfg, modality=modality, task=task, mode=mode)
    if not 0 < cfg.label_fraction <= 1:
        raise UserInputError(f"--label-fraction must be in (0, 1], got {cfg.label_fraction}")
    if cfg.schedule not in SCHEDULES:
        raise UserInputError(f"{where}.schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    return cfg


def from_dict(values: dict[str, Any]) -> FinetuneConfig:
    """The config a fine-tuned checkpoint stores (`dataclasses.asdict` of a FinetuneConfig) back as a config."""
    return P.merge(released(values["modality"], values["task"]), ("the checkpoint's config.finetune", values))
