"""Modality front-ends: patch embedding + sin-cos positions, the wav2vec 2.0 CNN, RoBERTa embeddings."""
import numpy as np
import pytest
import torch

from model.config import ImageEncoderConfig, SpeechEncoderConfig, TransformerConfig
from model.data2vec2 import Data2Vec2
from model.image_encoder import ImageContextEncoder, PatchEmbed, sincos_2d_positions
from model.presets import get_config
from model.speech_encoder import SpeechLocalEncoder
from model.text_encoder import TextEmbedding


def _mae_sincos(embed_dim, grid_size):
    """MAE's numpy reference (util/pos_embed.py), transcribed."""

    def one_axis(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64)))
    return np.concatenate([one_axis(embed_dim // 2, grid[0]), one_axis(embed_dim // 2, grid[1])], axis=1)


def test_sincos_positions_match_mae():
    table = sincos_2d_positions(32, 5, 5)
    assert table.shape == (25, 32)
    np.testing.assert_allclose(table.numpy(), _mae_sincos(32, 5), atol=1e-6)


def test_positions_are_fixed_not_learned():
    context = ImageContextEncoder(ImageEncoderConfig(input_size=28, patch_size=4, prenet_depth=0),
                                  TransformerConfig(embed_dim=32, num_heads=4))
    names = [n for n, _ in context.named_parameters()]
    assert names == ["extra_tokens", "norm.weight", "norm.bias"]
    assert "positions" not in context.state_dict()


def test_patch_embed_raster_order():
    embed = PatchEmbed(ImageEncoderConfig(input_size=28, patch_size=4), 16)
    images = torch.randn(1, 3, 28, 28)
    base, _ = embed(images)
    assert base.shape == (1, 49, 16)
    changed = images.clone()
    changed[:, :, 4:8, 8:12] += 1  # patch row 1, column 2 -> token 1 * 7 + 2
    diff = (embed(changed)[0] - base).abs().sum(-1)[0]
    assert diff.nonzero().flatten().tolist() == [9]


@pytest.mark.parametrize("samples,frames", [(16000, 49), (32000, 99), (320000, 999), (400, 1)])
def test_speech_conv_is_50_hz(samples, frames):
    assert SpeechEncoderConfig().num_frames(samples) == frames


def test_speech_local_encoder_shapes_and_frame_padding():
    cfg = get_config("speech", "tiny").speech
    encoder = SpeechLocalEncoder(cfg, 32)
    audio = torch.randn(2, 32000)
    padding = torch.zeros(2, 32000, dtype=torch.bool)
    padding[1, 16000:] = True
    x, frame_padding = encoder(audio, padding)
    assert x.shape == (2, 99, 32)
    assert frame_padding.sum(1).tolist() == [0, 99 - 49]  # 16000 real samples -> 49 real frames
    assert not frame_padding[1, :49].any() and frame_padding[1, 49:].all()


def test_text_embedding_padding_row_and_positions():
    cfg = get_config("text", "tiny")
    model = Data2Vec2(cfg)
    embed = model.local_encoder
    assert isinstance(embed, TextEmbedding)
    assert embed.embed_tokens.weight[cfg.text.pad_idx].abs().sum() == 0
    assert embed.embed_positions.num_embeddings == cfg.text.max_positions + 2  # fairseq offset pad + 1
    tokens = torch.tensor([[0, 9, 10, 2, 1, 1]])
    _, padding = embed(tokens)
    assert padding.tolist() == [[False] * 4 + [True] * 2]


def test_text_features_are_padding_aware():
    model = Data2Vec2(get_config("text", "tiny")).eval()
    tokens = torch.tensor([[0, 17, 18, 19, 20, 2]])
    padded = torch.cat([tokens, torch.ones(1, 4, dtype=torch.long)], dim=1)  # <pad> = 1
    short = model.extract_features(tokens)
    long = model.extract_features(padded)
    assert long["padding_mask"].tolist() == [[False] * 6 + [True] * 4]
    torch.testing.assert_close(short["x"], long["x"][:, :6], atol=1e-5, rtol=1e-5)


def test_max_positions_is_enforced():
    model = Data2Vec2(get_config("text", "tiny"))
    with pytest.raises(ValueError, match="max_positions"):
        model.extract_features(torch.full((1, 129), 7))


@pytest.mark.parametrize("decoder_type,kernel", [("conv1d", 4), ("conv1d", 7), ("conv2d", 4), ("conv2d", 3)])
def test_conv_decoders_keep_the_sequence_and_grid(decoder_type, kernel):
    from model.config import DecoderConfig
    from model.decoder import build_decoder

    cfg = DecoderConfig(decoder_type, decoder_dim=16, decoder_kernel=kernel, decoder_layers=2, decoder_groups=4)
    decoder = build_decoder(cfg, 32, (8, 8) if decoder_type == "conv2d" else None)
    x = torch.randn(3, 64, 32)
    assert decoder(x).shape == (3, 64, 32)
    # position reaches the decoder only through the conv neighbourhood: a change at token 0 stays local
    changed = x.clone()
    changed[:, 0] += 1
    reach = (decoder(changed) - decoder(x)).abs().sum((0, 2)) > 0
    assert reach[0] and not reach[-1]


def test_speech_padding_content_does_not_reach_real_frames():
    """Whatever sits in the padded tail, the features of the real frames are the same."""
    import torch

    from model.presets import get_config
    from model.data2vec2 import Data2Vec2

    torch.manual_seed(0)
    model = Data2Vec2(get_config("speech", "tiny")).eval()
    audio = torch.randn(2, 16000)
    padding = torch.zeros(2, 16000, dtype=torch.bool)
    padding[1, 9000:] = True
    other = audio.clone()
    other[1, 9000:] = torch.randn(7000) * 5
    a = model.extract_features(audio, padding)
    b = model.extract_features(other, padding)
    real = ~a["padding_mask"][1]
    assert real.sum() < real.numel()  # the second utterance really is padded
    torch.testing.assert_close(a["x"][1][real], b["x"][1][real], atol=1e-5, rtol=1e-5)
