"""Presets: functions that return a complete `Data2Vec2Config`, looked up by `get_config(modality, preset, method)`.

  * `base` / `large`: the released data2vec 2.0 configs, fairseq examples/data2vec/config/v2/
    {base,large}_{images,audio,text}_only_task.yaml.
  * `tiny`: a CPU demo that trains in minutes (see `_tiny_encoder` and the notes above it for what is shrunk
    and why).
  * `data2vec1`: data2vec 1.0 (Baevski et al., 2022, arXiv 2202.03555) on the same encoder (`_to_data2vec1`).
  * baselines on the same encoder (`mae` for images, `wav2vec2` for speech, `mlm` for text): the data2vec 2.0
    preset of the modality with the baseline's own section (`MAEConfig`, `Wav2Vec2Config`, `MLMConfig`) and
    masks; see `_to_baseline` for the released values taken.
"""
from __future__ import annotations

import dataclasses

from model.config import (
    BASELINE_MODALITY,
    METHODS,
    MODALITIES,
    WAV2VEC2_CONV_LAYERS,
    Data2Vec2Config,
    DecoderConfig,
    ImageEncoderConfig,
    MAEConfig,
    MaskConfig,
    MLMConfig,
    SpeechEncoderConfig,
    TextEncoderConfig,
    TransformerConfig,
    Wav2Vec2Config,
)

PRESETS = ("tiny", "base", "large")


# ----------------------------------------------------------------------------------------------------
# data2vec 2.0: base and large from the released configs (fairseq examples/data2vec/config/v2/*_only_task.yaml)


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
    # large_audio_only_task.yaml sets layerdrop 0 and leaves the dropouts at their defaults, as base does.
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
# data2vec 1.0 on the same encoder (fairseq examples/data2vec/models/data2vec_{audio,text,vision}.py and
# config/{audio,text,vision}/pretraining/*.yaml): the student sees every token, masked ones replaced by a
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
# Baselines on the same encoder, so that the benchmark compares methods and not architectures: the data2vec 2.0
# preset of the modality keeps its encoder (sizes, post-LN blocks, dropouts, layerdrop, local/context encoders)
# and input sizes; the method brings its own masks, head and loss. One mask per sample, no teacher.
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
