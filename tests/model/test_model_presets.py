"""Presets against the released configs (fairseq examples/data2vec/config/v2/*_only_task.yaml) and parameter
counts of known architectures."""
import dataclasses

import pytest
import torch

from model.config import Data2Vec2Config
from model.data2vec2 import Data2Vec2
from model.presets import get_config
from model.summary import summarize


def _meta_model(modality, preset, method="data2vec2"):
    with torch.device("meta"):
        return Data2Vec2(get_config(modality, preset, method))


def _count(module):
    return sum(p.numel() for p in module.parameters())


def _encoder_count(model):
    return _count(model.local_encoder) + _count(model.context_encoder) + _count(model.blocks)


VIT_BLOCK_768 = 7_087_872  # qkv 1,771,776 + proj 590,592 + fc1 2,362,368 + fc2 2,360,064 + 2 LN 3,072


def test_image_base_is_a_vit_b16():
    model = _meta_model("image", "base")
    encoder = _encoder_count(model)
    # patch embed 590,592 + CLS 768 + context LN 1,536 + 12 blocks (2 prenet + 10 main)
    assert encoder == 590_592 + 768 + 1_536 + 12 * VIT_BLOCK_768 == 85_647_360
    # timm vit_base_patch16_224 without its head has 85,798,656: the same plus a learned position table
    # (197 x 768 = 151,296; fixed sin-cos here, a buffer) and a final norm instead of the context LN
    assert encoder + 197 * 768 == 85_798_656
    assert _count(model.decoder) == 6 * (768 * 48 * 9 + 768) + 768 * 768 + 768 == 2_585_856
    assert _count(model.teacher) == encoder


def test_speech_base_matches_the_data2vec_audio_base_architecture():
    model = _meta_model("speech", "base")
    cnn = 10 * 512 + 4 * 3 * 512 * 512 + 2 * 2 * 512 * 512 + 7 * 2 * 512  # convs (no bias) + 7 affine LNs
    local = cnn + 2 * 512 + 512 * 768 + 768  # + LayerNorm(512) + Linear(512 -> 768)
    pos_conv = 5 * (768 * 48 * 19 + 768)  # 5 layers, kernel 19, 16 groups
    assert _count(model.local_encoder) == local == 4_601_600
    assert _count(model.context_encoder) == pos_conv + 1_536 + 12  # + context LN + ALiBi scales
    encoder = _encoder_count(model)
    assert encoder == local + pos_conv + 1_536 + 12 + 12 * VIT_BLOCK_768 == 93_163_532
    # HF Data2VecAudioModel (base) has the same parts without the ALiBi scales and with a 768-d mask embedding
    assert encoder - 12 + 768 == 93_164_288
    assert _count(model.decoder) == (384 * 48 * 7 + 384) + 3 * (384 * 24 * 7 + 384) + 384 * 768 + 768
    assert _count(model.teacher) == pos_conv + 1_536 + 12 + 12 * VIT_BLOCK_768  # not the CNN, not the projection


def test_text_base_is_roberta_base():
    model = _meta_model("text", "base")
    encoder = _encoder_count(model)
    assert encoder == 50_265 * 768 + 514 * 768 + 1_536 + 12 * VIT_BLOCK_768 == 124_054_272
    # HF RobertaModel (roberta-base) has 124,645,632 = the same + pooler (590,592) + token-type embedding (768)
    assert encoder + 590_592 + 768 == 124_645_632
    assert _count(model.teacher) == 12 * VIT_BLOCK_768
    assert _count(model.decoder) == 5 * (768 * 768 * 9 + 768) + (768 * 1536 + 1536) + (1536 * 768 + 768)


def test_large_presets_match_vit_l_roberta_large_and_d2v_audio_large():
    image = _encoder_count(_meta_model("image", "large"))
    assert image + 197 * 1024 == 303_301_632  # timm vit_large_patch16_224 without its head
    text = _encoder_count(_meta_model("text", "large"))
    assert text + 1_049_600 + 1_024 == 355_359_744  # HF RobertaModel roberta-large
    speech = _meta_model("speech", "large")
    assert len(speech.context_encoder.blocks) == 8 and len(speech.blocks) == 16
    assert 310e6 < _encoder_count(speech) < 320e6  # wav2vec 2.0 / data2vec large: ~315M


# the released configs: (depth+prenet, D, K, M, mask R/A/B, inverse, decoder layers/dim/kernel/groups, EMA, cls, scale)
RELEASED = {
    ("image", "base"): (10, 2, 768, 10, 16, 0.80, 0.07, 3, True, 6, 768, 3, 16, 0.9998, 0.99999, 100_000, 0.01, None),
    ("image", "large"): (24, 0, 1024, 18, 16, 0.75, 0.10, 3, True, 3, 1024, 5, 16, 0.9998, 0.99999, 150_000, 0.01,
                         None),
    ("speech", "base"): (12, 0, 768, 8, 8, 0.50, 0.05, 5, False, 4, 384, 7, 16, 0.999, 0.99999, 75_000, 0.0, None),
    ("speech", "large"): (16, 8, 1024, 16, 12, 0.55, 0.10, 5, False, 4, 768, 7, 16, 0.9997, 1.0, 300_000, 0.0, None),
    ("text", "base"): (12, 0, 768, 12, 8, 0.48, 0.0, 1, False, 5, 768, 9, 1, 0.9999, 0.99999, 100_000, 0.0, 1.0),
    ("text", "large"): (24, 0, 1024, 24, 8, 0.50, 0.0, 1, False, 5, 768, 9, 1, 0.9999, 0.99999, 100_000, 0.0, 1.0),
}


@pytest.mark.parametrize("key", sorted(RELEASED))
def test_presets_follow_the_released_configs(key):
    cfg = get_config(*key)
    m, d = cfg.mask, cfg.decoder
    actual = (cfg.encoder.depth, cfg.prenet_depth, cfg.embed_dim, cfg.average_top_k_layers, m.clone_batch,
              m.mask_prob, m.mask_prob_adjust, m.mask_length, m.inverse_mask, d.decoder_layers, d.decoder_dim,
              d.decoder_kernel, d.decoder_groups, cfg.ema_decay, cfg.ema_end_decay, cfg.ema_anneal_end_step,
              cfg.cls_loss, cfg.loss_scale)
    assert actual == RELEASED[key]


def test_target_normalization_and_regularization_per_modality():
    image, speech, text, text_large = (get_config(m, p) for m, p in
                                       [("image", "base"), ("speech", "base"), ("text", "base"), ("text", "large")])
    assert image.instance_norm_target_layer and image.layer_norm_targets
    assert speech.instance_norm_target_layer and not speech.layer_norm_targets
    assert text.instance_norm_target_layer and not text.layer_norm_targets
    assert text_large.layer_norm_target_layer and text_large.instance_norm_targets
    assert not text_large.instance_norm_target_layer
    assert speech.encoder.layerdrop == 0.05 and image.encoder.dropout == 0.0 and text.text.embed_dropout == 0.1
    assert (image.ema_scope, speech.ema_scope, text.ema_scope) == ("all", "encoder", "blocks")
    assert all(not c.encoder.layer_norm_first for c in (image, speech, text))


@pytest.mark.parametrize("modality", ["image", "speech", "text"])
def test_tiny_presets_are_small(modality):
    cfg = get_config(modality, "tiny")
    assert 64 <= cfg.embed_dim <= 128 and 2 <= cfg.encoder.depth + cfg.prenet_depth <= 4
    assert cfg.mask.clone_batch == 4
    if modality == "image":
        assert (cfg.image.input_size, cfg.image.patch_size, cfg.num_tokens()) == (28, 4, 49)
    elif modality == "speech":
        assert [(k, s) for _, k, s in cfg.speech.conv_feature_layers] == \
               [(k, s) for _, k, s in get_config("speech", "base").speech.conv_feature_layers]
        assert cfg.speech.max_sample_size == 32_000 and cfg.num_tokens() == 99
    else:
        assert (cfg.text.vocab_size, cfg.text.max_positions) == (4096, 128)


@pytest.mark.parametrize("method", ["data2vec2", "data2vec1"])
def test_config_round_trips_through_a_dict(method):
    cfg = get_config("speech", "base", method)
    assert Data2Vec2Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        get_config("video", "base")
    with pytest.raises(ValueError):
        dataclasses.replace(cfg, ema_scope="decoder")


@pytest.mark.parametrize("modality", ["image", "speech", "text"])
@pytest.mark.parametrize("preset", ["tiny", "base", "large"])
def test_summary_runs_a_meta_training_step(modality, preset):
    text = summarize(modality, preset)
    assert "student encoder parameters" in text and "GFLOP" in text and "FlopCounterMode" in text
    model = _meta_model(modality, preset)
    assert f"{_encoder_count(model):,}" in text and f"{_count(model.teacher):,}" in text


def test_summary_of_data2vec1():
    text = summarize("image", "tiny", "data2vec1")
    assert "data2vec1" in text and "clone batch M                   1" in text
