"""Typed configs for data2vec 2.0 (and data2vec 1.0 and the baselines built from the same parts).

Field names follow fairseq's `Data2VecMultiConfig` and modality configs where a concept has one
(`clone_batch`, `average_top_k_layers`, `ema_end_decay`, `instance_norm_target_layer`, ...), so a
checkpoint or config key map stays mechanical. The values of the released models and of the CPU demo are in
model/presets.py (`get_config`). Optimizer, LR schedule and batch size are the trainer's business and are not here.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

MODALITIES = ("image", "speech", "text")
METHODS = ("data2vec2", "data2vec1", "mae", "wav2vec2", "mlm")
# The baselines of the benchmark each exist for one modality (fine-tuning from scratch needs no model).
BASELINE_MODALITY = {"mae": "image", "wav2vec2": "speech", "mlm": "text"}

# wav2vec 2.0 feature extractor: (channels, kernel, stride) per layer. Total stride 320 = 50 Hz at 16 kHz.
WAV2VEC2_CONV_LAYERS = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2


@dataclass
class TransformerConfig:
    """The shared block stack ("blocks") and the block hyper-parameters also used by the prenet."""

    embed_dim: int = 768
    depth: int = 12  # main blocks; the modality prenet blocks come on top (ImageEncoderConfig.prenet_depth)
    num_heads: int = 12
    mlp_ratio: float = 4.0
    layer_norm_first: bool = False  # post-LN in every released data2vec 2.0 config
    norm_eps: float = 1e-5
    dropout: float = 0.1  # attention output projection
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0  # inside the MLP (timm Mlp drop)
    post_mlp_drop: float = 0.1  # on the MLP output before the residual; the target tap is taken before it
    layerdrop: float = 0.0  # main blocks only, student only (the teacher runs in eval mode)
    start_drop_path_rate: float = 0.0  # drop path ramps linearly over the main blocks
    end_drop_path_rate: float = 0.0


@dataclass
class ImageEncoderConfig:
    input_size: int = 224
    in_chans: int = 3
    patch_size: int = 16
    prenet_depth: int = 2
    prenet_dropout: float = 0.0
    num_extra_tokens: int = 1  # the CLS token

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size


@dataclass
class SpeechEncoderConfig:
    conv_feature_layers: list[tuple[int, int, int]] = field(default_factory=lambda: list(WAV2VEC2_CONV_LAYERS))
    conv_pos_width: int = 95  # total width of the relative positional conv stack: kernel = max(3, width // depth)
    conv_pos_depth: int = 5
    conv_pos_groups: int = 16
    prenet_depth: int = 0
    prenet_dropout: float = 0.1  # the context encoder's dropout after its LayerNorm
    alibi_scale: float = 1.0  # initial value of the learned per-head ALiBi scale
    max_sample_size: int = 320_000  # crop length in samples (20 s); used for summaries and default masks
    # Zero padded frames before the positional conv (wav2vec 2.0 `x[padding_mask] = 0`), so the padding cannot
    # reach real frames through it. fairseq's data2vec 2.0 audio encoder does not: imported fairseq weights set
    # False to reproduce its features on padded batches (pipeline/weights/fairseq.py).
    zero_padding_before_pos_conv: bool = True

    def num_frames(self, num_samples: int) -> int:
        """Output length of the conv feature extractor for `num_samples` input samples."""
        length = num_samples
        for _, kernel, stride in self.conv_feature_layers:
            length = (length - kernel) // stride + 1
        return length


@dataclass
class TextEncoderConfig:
    vocab_size: int = 50265  # RoBERTa's GPT-2 BPE dictionary; tiny: the project's own tokenizer size
    max_positions: int = 512
    pad_idx: int = 1  # RoBERTa specials: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4
    mask_idx: int = 4  # used by data2vec 1.0 only (BERT-style <mask> input)
    embed_dropout: float = 0.1


@dataclass
class MaskConfig:
    mask_prob: float = 0.8  # fraction of tokens masked (R)
    mask_length: int = 3  # block width B (2-D: B x B); 1 selects uniform random masking (text)
    mask_prob_adjust: float = 0.07  # A: extra block centres drawn before the count is made exact
    inverse_mask: bool = True  # choose the blocks to keep (images) instead of the blocks to mask
    clone_batch: int = 16  # M masked copies of every sample
    mask_noise_std: float = 0.01  # decoder mask tokens are fresh N(0, std^2) noise


@dataclass
class DecoderConfig:
    decoder_type: str = "conv2d"  # conv2d (images), conv1d (speech, text) or linear (data2vec 1.0 head)
    decoder_dim: int = 768
    decoder_kernel: int = 3
    decoder_layers: int = 6
    decoder_groups: int = 16
    decoder_residual: bool = True
    projection_layers: int = 1
    projection_ratio: float = 2.0
    input_dropout: float = 0.0


@dataclass
class MAEConfig:
    """MAE (He et al. 2021, facebookresearch/mae models_mae.py): decoder and target of the image baseline.

    The decoder is a narrow pre-LN transformer over the encoder's visible outputs plus a learned mask token at
    every masked patch, with fixed 2-D sin-cos positions; it predicts the pixels of every patch.
    """

    decoder_embed_dim: int = 512  # mae_vit_base_patch16_dec512d8b (also the large model's decoder)
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    decoder_mlp_ratio: float = 4.0
    decoder_norm_eps: float = 1e-6
    norm_pix_loss: bool = True  # targets: each patch's pixels normalized by their own mean and variance
    norm_pix_eps: float = 1e-6  # (target - mean) / sqrt(var + eps), var unbiased as in MAE


@dataclass
class Wav2Vec2Config:
    """wav2vec 2.0 (Baevski et al. 2020, fairseq models/wav2vec/wav2vec2.py): quantizer and contrastive task.

    Field names follow fairseq's Wav2Vec2Config; the loss weights are its criterion's `loss_weights`.
    """

    final_dim: int = 256  # context and target projections before the cosine similarity
    latent_vars: int = 320  # V entries per codebook group
    latent_groups: int = 2  # G groups; a codevector concatenates one entry per group
    latent_dim: int = 0  # codevector width; 0 = final_dim
    latent_temp: tuple[float, float, float] = (2.0, 0.5, 0.999995)  # Gumbel temperature start, floor, decay/update
    num_negatives: int = 100  # K distractors from other masked frames of the same utterance
    logit_temp: float = 0.1  # cosine similarities are divided by it
    diversity_weight: float = 0.1  # loss_weights[0] on (GV - perplexity) / GV
    feature_penalty_weight: float = 10.0  # loss_weights[1] on the mean square of the CNN output
    dropout_input: float = 0.1  # on the projected local features fed to the context encoder
    dropout_features: float = 0.1  # on the CNN features fed to the quantizer
    feature_grad_mult: float = 0.1  # scales the gradient reaching the CNN


@dataclass
class MLMConfig:
    """RoBERTa masked language modelling (fairseq MaskTokensDataset + RobertaLMHead).

    The selection itself (15% of tokens) is `cfg.mask`; of the selected tokens 80% become <mask>, 10% a random
    token and 10% stay, and every selected token is predicted.
    """

    leave_unmasked_prob: float = 0.1
    random_token_prob: float = 0.1
    num_special_tokens: int = 5  # ids below this (<s> <pad> </s> <unk> <mask>) are never drawn as random tokens


@dataclass
class Data2Vec2Config:
    modality: str = "image"
    method: str = "data2vec2"
    preset: str = "base"
    encoder: TransformerConfig = field(default_factory=TransformerConfig)
    image: ImageEncoderConfig | None = None
    speech: SpeechEncoderConfig | None = None
    text: TextEncoderConfig | None = None
    mask: MaskConfig = field(default_factory=MaskConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    # Student input. data2vec 2.0 drops masked tokens; data2vec 1.0 keeps all tokens and replaces the masked
    # ones by a learned mask embedding (text: the <mask> token).
    remove_masked: bool = True

    # Targets: average of the top K teacher layers, each normalized, then optionally normalized again.
    average_top_k_layers: int = 10
    end_of_block_targets: bool = False  # False: tap the FFN output before residual and LN (data2vec 2.0)
    instance_norm_target_layer: bool = True
    layer_norm_target_layer: bool = False
    instance_norm_targets: bool = False
    layer_norm_targets: bool = True

    # Loss: L2 (loss_beta=0) or smooth L1, times loss_scale (None = 1/sqrt(D)); cls_loss weights the image
    # global (CLS) term.
    loss_beta: float = 0.0
    loss_scale: float | None = None
    cls_loss: float = 0.01
    # fairseq sums the CLS term over the B_local*M rows of one GPU before dividing by the masked-token count,
    # so its weight grows with the per-GPU batch. Here the term is the per-row mean times this fixed row count
    # (the released image run: 16 images x 16 clones per GPU), so the objective does not change with the
    # number of devices or gradient accumulation.
    cls_loss_reference_rows: int = 256

    # EMA teacher. ema_scope says what the teacher owns (an EMA copy); everything upstream of it is shared:
    #   "all":     local encoder + context encoder + blocks     (images: the teacher re-embeds the raw image)
    #   "encoder": context encoder + blocks                      (speech: shares the student's CNN + projection)
    #   "blocks":  main blocks only                              (text: shares the student's embeddings)
    ema_decay: float = 0.9998
    ema_end_decay: float = 0.99999
    ema_anneal_end_step: int = 100_000
    ema_scope: str = "all"

    # Collapse guard thresholds for the trainer (fairseq raises after 5,000 updates when the std of the
    # targets or predictions falls below them; 0 = off). The model only reports target_var / pred_var.
    min_target_var: float = 0.1
    min_pred_var: float = 0.01

    seed: int = 1  # mask seed used when a batch comes without precomputed masks

    # Baselines on the same encoder: the section of cfg.method, None otherwise. Their models read the
    # modality sections, `encoder`, `mask` and `seed`; the data2vec fields above (decoder, targets, EMA)
    # are unused, and the EMA decays are 1 (no teacher).
    mae: MAEConfig | None = None
    wav2vec2: Wav2Vec2Config | None = None
    mlm: MLMConfig | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if getattr(self, self.modality) is None:
            raise ValueError(f"a {self.modality} config needs its `{self.modality}` section")
        if self.ema_scope not in ("all", "encoder", "blocks"):
            raise ValueError(f"ema_scope must be all, encoder or blocks, got {self.ema_scope!r}")
        if self.encoder.embed_dim % self.encoder.num_heads:
            raise ValueError("embed_dim must be divisible by num_heads")
        if not self.remove_masked and self.mask.clone_batch != 1:
            raise ValueError("a student that sees all tokens (data2vec 1.0) uses one mask per sample")
        if self.method in BASELINE_MODALITY:
            if self.modality != BASELINE_MODALITY[self.method]:
                raise ValueError(f"{self.method} is a {BASELINE_MODALITY[self.method]} method, not {self.modality}")
            if getattr(self, self.method) is None:
                raise ValueError(f"a {self.method} config needs its `{self.method}` section")
            if self.mask.clone_batch != 1:
                raise ValueError(f"{self.method} uses one mask per sample (clone_batch 1)")

    @property
    def embed_dim(self) -> int:
        return self.encoder.embed_dim

    @property
    def prenet_depth(self) -> int:
        return getattr(self, self.modality).prenet_depth if self.modality != "text" else 0

    @property
    def num_extra_tokens(self) -> int:
        return self.image.num_extra_tokens if self.modality == "image" else 0

    def num_tokens(self, input_length: int | None = None) -> int:
        """Tokens per sample after the local encoder.

        input_length: samples per audio crop (speech) or tokens per sequence (text); ignored for images.
        Defaults to the preset's crop length / max positions.
        """
        if self.modality == "image":
            return self.image.grid_size**2
        if self.modality == "speech":
            return self.speech.num_frames(input_length or self.speech.max_sample_size)
        return input_length or self.text.max_positions

    def resolved_loss_scale(self) -> float:
        return 1 / math.sqrt(self.embed_dim) if self.loss_scale is None else self.loss_scale

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Data2Vec2Config":
        """Inverse of `to_dict` (for the resolved config JSON written next to every artifact)."""
        sections = {
            "encoder": TransformerConfig,
            "image": ImageEncoderConfig,
            "speech": SpeechEncoderConfig,
            "text": TextEncoderConfig,
            "mask": MaskConfig,
            "decoder": DecoderConfig,
            "mae": MAEConfig,
            "wav2vec2": Wav2Vec2Config,
            "mlm": MLMConfig,
        }
        kwargs = dict(d)
        for name, section_cls in sections.items():
            if kwargs.get(name) is not None:
                kwargs[name] = section_cls(**kwargs[name])
        if kwargs.get("speech") is not None:
            kwargs["speech"].conv_feature_layers = [tuple(layer) for layer in kwargs["speech"].conv_feature_layers]
        if kwargs.get("wav2vec2") is not None:  # JSON turns the tuple into a list
            kwargs["wav2vec2"].latent_temp = tuple(kwargs["wav2vec2"].latent_temp)
        return cls(**kwargs)
