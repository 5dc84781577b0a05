"""Typed configs and presets for data2vec 2.0 (and data2vec 1.0 built from the same parts).

Field names follow fairseq's `Data2VecMultiConfig` / modality configs where a concept has one
(`clone_batch`, `average_top_k_layers`, `ema_end_decay`, `instance_norm_target_layer`, ...), so a
checkpoint or config key map stays mechanical.

Presets are plain functions: `get_config(modality, preset, method)`.
  * `base` / `large`: the released fairseq configs (examples/data2vec/config/v2/*_only_task.yaml),
    shared/reference/data2vec2-spec.md section 4.
  * `tiny`: a CPU demo that trains in minutes (see `_tiny_*` for what is shrunk and why).
  * baselines on the same encoder (`mae` for images, `wav2vec2` for speech, `mlm` for text): the data2vec 2.0
    preset of the modality with the baseline's own section (`MAEConfig`, `Wav2Vec2Config`, `MLMConfig`) and
    masks; see `_to_baseline` for the released values taken.
Optimizer, LR schedule and batch size are the trainer's business and are not here.
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
PRESETS = ("tiny", "base", "large")

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


# ----------------------------------------------------------------------------------------------------
# data2vec 2.0 presets: base and large from the released configs (spec section 4)


def _image_base() -> Data2Vec2Config:
    # ViT-B/16 = 2 prenet + 10 main blocks; no dropout anywhere; LN eps 1e-6.
    encoder = TransformerConfig(768, 10, 12, norm_eps=1e-6, dropout=0.0, attention_dropout=0.0, post_mlp_drop=0.0)
    return Data2Vec2Config(
        modality="image",
        encoder=encoder,
        image=ImageEncoderConfig(input_size=224, patch_size=16, prenet_depth=2),
        mask=MaskConfig(mask_prob=0.8, mask_length=3, mask_prob_adjust=0.07, inverse_mask=True, clone_batch=16),
        decoder=DecoderConfig("conv2d", 768, 3, 6, 16, decoder_residual=True, projection_layers=1),
        average_top_k_layers=10,
        layer_norm_targets=True,
        cls_loss=0.01,
        ema_decay=0.9998,
        ema_end_decay=0.99999,
        ema_anneal_end_step=100_000,
        ema_scope="all",
        min_target_var=0.0,  # the image configs switch the collapse guard off
        min_pred_var=0.0,
    )


def _image_large() -> Data2Vec2Config:
    cfg = _image_base()
    cfg.encoder = dataclasses.replace(cfg.encoder, embed_dim=1024, depth=24, num_heads=16)
    cfg.image.prenet_depth = 0
    cfg.mask = dataclasses.replace(cfg.mask, mask_prob=0.75, mask_prob_adjust=0.10)
    cfg.decoder = DecoderConfig("conv2d", 1024, 5, 3, 16, decoder_residual=True, projection_layers=1)
    cfg.average_top_k_layers = 18
    cfg.ema_anneal_end_step = 150_000
    return cfg


def _speech_base() -> Data2Vec2Config:
    encoder = TransformerConfig(768, 12, 12, norm_eps=1e-5, layerdrop=0.05)
    return Data2Vec2Config(
        modality="speech",
        encoder=encoder,
        speech=SpeechEncoderConfig(),
        mask=MaskConfig(mask_prob=0.5, mask_length=5, mask_prob_adjust=0.05, inverse_mask=False, clone_batch=8),
        decoder=DecoderConfig("conv1d", 384, 7, 4, 16, decoder_residual=True, projection_layers=1, input_dropout=0.1),
        average_top_k_layers=8,
        layer_norm_targets=False,
        cls_loss=0.0,
        ema_decay=0.999,
        ema_end_decay=0.99999,
        ema_anneal_end_step=75_000,
        ema_scope="encoder",
    )


def _speech_large() -> Data2Vec2Config:
    cfg = _speech_base()
    # The spec's table lists layerdrop 0 for audio large; dropouts as base (not listed separately).
    cfg.encoder = dataclasses.replace(cfg.encoder, embed_dim=1024, depth=16, num_heads=16, layerdrop=0.0)
    cfg.speech.prenet_depth = 8
    cfg.mask = dataclasses.replace(cfg.mask, mask_prob=0.55, mask_prob_adjust=0.10, clone_batch=12)
    cfg.decoder = dataclasses.replace(cfg.decoder, decoder_dim=768)
    cfg.average_top_k_layers = 16
    cfg.ema_decay, cfg.ema_end_decay, cfg.ema_anneal_end_step = 0.9997, 1.0, 300_000
    return cfg


def _text_base() -> Data2Vec2Config:
    encoder = TransformerConfig(768, 12, 12, norm_eps=1e-5)
    return Data2Vec2Config(
        modality="text",
        encoder=encoder,
        text=TextEncoderConfig(),
        mask=MaskConfig(mask_prob=0.48, mask_length=1, mask_prob_adjust=0.0, inverse_mask=False, clone_batch=8),
        decoder=DecoderConfig("conv1d", 768, 9, 5, 1, decoder_residual=False, projection_layers=2, input_dropout=0.1),
        average_top_k_layers=12,
        layer_norm_targets=False,
        loss_scale=1.0,
        cls_loss=0.0,
        ema_decay=0.9999,
        ema_end_decay=0.99999,
        ema_anneal_end_step=100_000,
        ema_scope="blocks",
    )


def _text_large() -> Data2Vec2Config:
    cfg = _text_base()
    cfg.encoder = dataclasses.replace(cfg.encoder, embed_dim=1024, depth=24, num_heads=16)
    cfg.mask = dataclasses.replace(cfg.mask, mask_prob=0.5)
    cfg.average_top_k_layers = 24
    # text large: LN per layer instead of IN, and a final instance norm
    cfg.instance_norm_target_layer, cfg.layer_norm_target_layer, cfg.instance_norm_targets = False, True, True
    return cfg


# ----------------------------------------------------------------------------------------------------
# tiny presets: same recipe, shrunk to train in minutes on a CPU. What changes and why:
#   * width 128, 4 heads, 4 blocks (image: 1 prenet + 3 main), K = all main blocks;
#   * clone batch M = 4 instead of 8-16 (the student cost grows with M; 4 keeps the teacher amortized);
#   * EMA 0.999 -> 0.9999 over 2,000 updates (the released 75k-150k step ramps never finish in a demo);
#   * image: 28x28 input (Fashion-MNIST as RGB), patch 4 -> 7x7 grid; masking R=0.75, A=0.1 (the large
#     setting; 0.8 would leave only 9 of 49 patches visible), 3-layer 2-D decoder of width 128;
#   * speech: the same conv kernels and strides (50 Hz) with 64 channels, 2 s crops (99 frames), no layerdrop
#     (dropping one of 4 blocks is too coarse), decoder width 64;
#   * text: 4096-token vocabulary (the project's BPE), 128 positions, a 3-layer decoder of width 128.


def _tiny_encoder(depth: int, dropout: float, norm_eps: float) -> TransformerConfig:
    return TransformerConfig(
        128, depth, 4, norm_eps=norm_eps, dropout=dropout, attention_dropout=dropout, post_mlp_drop=dropout
    )


def _image_tiny() -> Data2Vec2Config:
    cfg = _image_base()
    cfg.encoder = _tiny_encoder(3, 0.0, 1e-6)
    cfg.image = ImageEncoderConfig(input_size=28, patch_size=4, prenet_depth=1)
    cfg.mask = dataclasses.replace(cfg.mask, mask_prob=0.75, mask_prob_adjust=0.10, clone_batch=4)
    cfg.decoder = DecoderConfig("conv2d", 128, 3, 3, 8, decoder_residual=True, projection_layers=1)
    cfg.average_top_k_layers = 3
    cfg.ema_decay, cfg.ema_end_decay, cfg.ema_anneal_end_step = 0.999, 0.9999, 2_000
    return cfg


def _speech_tiny() -> Data2Vec2Config:
    cfg = _speech_base()
    cfg.encoder = _tiny_encoder(4, 0.1, 1e-5)
    cfg.speech = SpeechEncoderConfig(
        conv_feature_layers=[(64, k, s) for _, k, s in WAV2VEC2_CONV_LAYERS], max_sample_size=16_000 * 2
    )
    cfg.mask = dataclasses.replace(cfg.mask, clone_batch=4)
    cfg.decoder = dataclasses.replace(cfg.decoder, decoder_dim=64)
    cfg.average_top_k_layers = 4
    cfg.ema_decay, cfg.ema_end_decay, cfg.ema_anneal_end_step = 0.999, 0.9999, 2_000
    return cfg


def _text_tiny() -> Data2Vec2Config:
    cfg = _text_base()
    cfg.encoder = _tiny_encoder(4, 0.1, 1e-5)
    cfg.text = TextEncoderConfig(vocab_size=4096, max_positions=128)
    cfg.mask = dataclasses.replace(cfg.mask, clone_batch=4)
    cfg.decoder = dataclasses.replace(cfg.decoder, decoder_dim=128, decoder_layers=3)
    cfg.average_top_k_layers = 4
    cfg.ema_decay, cfg.ema_end_decay, cfg.ema_anneal_end_step = 0.999, 0.9999, 2_000
    return cfg


_DATA2VEC2_PRESETS = {
    ("image", "tiny"): _image_tiny,
    ("image", "base"): _image_base,
    ("image", "large"): _image_large,
    ("speech", "tiny"): _speech_tiny,
    ("speech", "base"): _speech_base,
    ("speech", "large"): _speech_large,
    ("text", "tiny"): _text_tiny,
    ("text", "base"): _text_base,
    ("text", "large"): _text_large,
}


# ----------------------------------------------------------------------------------------------------
# data2vec 1.0 on the same encoder (spec section 7): the student sees every token, masked ones replaced by a
# learned embedding; one mask per sample; a linear regression head; the 1.0 targets, losses and EMA.
# Masks reuse this project's exact-count block/span functions, which approximate the originals:
# speech spans of 10 at p=0.65 (fairseq compute_mask_indices, whose overlaps mask ~49%; here exactly 65%),
# text spans of 4 covering 35% (no 80/10/10 replacement), images 2-D blocks covering 60% (BEiT's
# masking generator draws blocks of random aspect ratio).


def _to_data2vec1(cfg: Data2Vec2Config) -> Data2Vec2Config:
    dim = cfg.embed_dim
    cfg.method = "data2vec1"
    cfg.remove_masked = False
    cfg.cls_loss = 0.0
    cfg.instance_norm_targets = False
    if cfg.modality == "image":
        cfg.mask = MaskConfig(mask_prob=0.6, mask_length=3, mask_prob_adjust=0.0, inverse_mask=False, clone_batch=1)
        cfg.decoder = DecoderConfig("linear", dim, projection_layers=1)
        cfg.average_top_k_layers = min(6, cfg.encoder.depth)
        cfg.end_of_block_targets = True
        cfg.instance_norm_target_layer, cfg.layer_norm_target_layer, cfg.layer_norm_targets = False, False, True
        cfg.loss_beta = 2.0
        cfg.ema_decay, cfg.ema_end_decay = 0.999, 0.9998
        cfg.ema_scope = "all"
    elif cfg.modality == "speech":
        cfg.mask = MaskConfig(mask_prob=0.65, mask_length=10, mask_prob_adjust=0.0, inverse_mask=False, clone_batch=1)
        cfg.decoder = DecoderConfig("linear", dim, projection_layers=1)
        cfg.average_top_k_layers = min(8, cfg.encoder.depth)
        cfg.instance_norm_target_layer, cfg.layer_norm_target_layer, cfg.layer_norm_targets = True, False, False
        cfg.ema_decay, cfg.ema_end_decay = 0.999, 0.9999
        cfg.ema_anneal_end_step = 30_000 if cfg.preset != "tiny" else cfg.ema_anneal_end_step
        cfg.ema_scope = "blocks"  # ema_transformer_only: CNN and positional conv are shared
    else:
        cfg.mask = MaskConfig(mask_prob=0.35, mask_length=4, mask_prob_adjust=0.0, inverse_mask=False, clone_batch=1)
        cfg.decoder = DecoderConfig("linear", dim, projection_layers=2, projection_ratio=2.0)
        cfg.average_top_k_layers = min(10, cfg.encoder.depth)
        cfg.instance_norm_target_layer, cfg.layer_norm_target_layer, cfg.layer_norm_targets = False, True, False
        cfg.loss_beta, cfg.loss_scale = 4.0, 1.0
        cfg.ema_decay, cfg.ema_end_decay = 0.999, 0.9999
        cfg.ema_anneal_end_step = 300_000 if cfg.preset != "tiny" else cfg.ema_anneal_end_step
        cfg.ema_scope = "blocks"
    return cfg


# ----------------------------------------------------------------------------------------------------
# Baselines on the same encoder (spec section 7, issue 6): the data2vec 2.0 preset of the modality keeps its
# encoder (sizes, post-LN blocks, dropouts, layerdrop, local/context encoders) and input sizes; the method
# brings its own masks, head and loss. One mask per sample, no teacher.
#
# Released values taken:
#   * MAE (mae_vit_*_dec512d8b, main_pretrain.py): 75% random masking (MAE `random_masking`: exactly
#     int(L * 0.25) visible patches per image), decoder 8 blocks x 512 with 16 heads (base and large),
#     norm_pix_loss. tiny: decoder 2 blocks x 64 with 2 heads (the MAE head width of 32).
#   * wav2vec 2.0 (wav2vec2_base_librispeech.yaml / wav2vec2_large_librivox.yaml): G=2 groups x V=320 entries,
#     codevectors of final_dim (256 base, 768 large), K=100 distractors, logit temperature 0.1, diversity
#     weight 0.1, feature penalty 10 (large: 0), Gumbel temperature 2 -> 0.5 (large: 0.1) x 0.999995 per
#     update, dropout_input/dropout_features 0.1 and feature_grad_mult 0.1 (large: 0, 0 and 1).
#     Masks: fairseq's mask_prob=0.65 with spans of 10 means 0.065 * T span starts per utterance; their overlaps
#     cover ~49% of the frames (the paper's "approximately 49%"). Here mask_prob is the exact masked fraction,
#     so: int(T * (0.49 + 0.16) / 10) span starts, then exactly int(T * 0.49) masked frames.
#     tiny: G=2 x V=32, codevectors and final_dim 64, the temperature reaches 0.5 after ~2,000 updates
#     (decay 0.9993, the tiny EMA horizon), everything else as base.
#   * RoBERTa (MaskTokensDataset defaults): 15% of the tokens selected (exactly T - int(T * 0.85) per
#     sequence; fairseq rounds int(0.15 * T + rand)), of them 80% <mask> / 10% random / 10% unchanged;
#     a tied LM head. tiny: as base.


def _to_baseline(cfg: Data2Vec2Config, method: str) -> Data2Vec2Config:
    cfg.method = method
    cfg.cls_loss = 0.0
    cfg.ema_decay = cfg.ema_end_decay = 1.0  # no teacher
    cfg.min_target_var = cfg.min_pred_var = 0.0  # the collapse guard watches teacher targets; there are none
    tiny, large = cfg.preset == "tiny", cfg.preset == "large"
    if method == "mae":
        cfg.remove_masked = True  # the encoder sees the visible patches only
        cfg.mask = MaskConfig(mask_prob=0.75, mask_length=1, mask_prob_adjust=0.0, inverse_mask=True, clone_batch=1)
        cfg.mae = MAEConfig(decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=2) if tiny else MAEConfig()
    elif method == "wav2vec2":
        cfg.remove_masked = False  # every frame, masked ones replaced by a learned mask embedding
        cfg.mask = MaskConfig(mask_prob=0.49, mask_length=10, mask_prob_adjust=0.16, inverse_mask=False, clone_batch=1)
        if tiny:
            cfg.wav2vec2 = Wav2Vec2Config(final_dim=64, latent_vars=32, latent_temp=(2.0, 0.5, 0.9993))
        elif large:
            cfg.wav2vec2 = Wav2Vec2Config(final_dim=768, latent_temp=(2.0, 0.1, 0.999995), feature_penalty_weight=0.0,
                                          dropout_input=0.0, dropout_features=0.0, feature_grad_mult=1.0)
        else:
            cfg.wav2vec2 = Wav2Vec2Config(final_dim=256)
    else:
        cfg.remove_masked = False  # BERT-style corrupted input
        cfg.mask = MaskConfig(mask_prob=0.15, mask_length=1, mask_prob_adjust=0.0, inverse_mask=False, clone_batch=1)
        cfg.mlm = MLMConfig()
    return cfg


def get_config(modality: str, preset: str, method: str = "data2vec2") -> Data2Vec2Config:
    """The config of `method` for `modality` at size `preset` (tiny, base or large)."""
    if (modality, preset) not in _DATA2VEC2_PRESETS:
        raise ValueError(
            f"no preset {preset!r} for modality {modality!r}; presets: {PRESETS}, modalities: {MODALITIES}"
        )
    if method not in METHODS:
        hint = " (fine-tuning from scratch pretrains nothing)" if method == "scratch" else ""
        raise ValueError(f"method must be one of {METHODS} here, got {method!r}{hint}")
    if method in BASELINE_MODALITY and modality != BASELINE_MODALITY[method]:
        raise ValueError(f"{method} is the {BASELINE_MODALITY[method]} baseline; there is no {method} for "
                         f"{modality} (baselines: {BASELINE_MODALITY})")
    cfg = _DATA2VEC2_PRESETS[(modality, preset)]()
    cfg.preset = preset
    if method == "data2vec1":
        cfg = _to_data2vec1(cfg)
    elif method in BASELINE_MODALITY:
        cfg = _to_baseline(cfg, method)
    cfg.__post_init__()
    return cfg
