"""Behaviours matched to fairseq where a comparison with its code found a difference (fairseq paths are in the
fairseq repository): the text decoder's init, the data2vec 1.0 text teacher's input, and speech padding before
the positional conv as a config field."""
import dataclasses

import torch
from torch import nn

from model import build_model, get_config


def test_text_decoder_keeps_bert_init_image_and_speech_reset_to_pytorch_defaults():
    # examples/data2vec/models/modalities/text.py TextEncoder.reset_parameters does not reset the decoder;
    # images.py and audio.py call decoder.reset_parameters (PyTorch defaults for its Linear layers)
    torch.manual_seed(0)
    for modality in ("image", "speech", "text"):
        cfg = get_config(modality, "tiny")
        if modality == "text":
            cfg.decoder = dataclasses.replace(cfg.decoder, decoder_dim=512)  # enough weights for a tight std estimate
        linears = [m for m in build_model(cfg).decoder.modules() if isinstance(m, nn.Linear)]
        assert linears
        for m in linears:
            if modality == "text":
                assert torch.count_nonzero(m.bias) == 0
                assert abs(m.weight.std().item() - 0.02) < 0.002
            else:  # kaiming-uniform weights and a uniform bias of bound 1/sqrt(fan_in)
                assert torch.count_nonzero(m.bias) == m.bias.numel()
                assert m.weight.abs().max() <= 1 / m.in_features**0.5 + 1e-6 and m.weight.std() > 0.03


def test_data2vec1_text_teacher_embeds_the_unmasked_tokens_without_dropout():
    # examples/data2vec/models/data2vec_text.py: the teacher (eval mode) embeds the target tokens itself
    torch.manual_seed(0)
    model = build_model(get_config("text", "tiny", "data2vec1")).train()
    tokens = torch.randint(5, 4096, (2, 16))
    targets = []
    for seed in (1, 2):  # two dropout draws of the student's embedding
        torch.manual_seed(seed)
        local, padding = model.local_features(tokens)
        targets.append(model.make_targets(tokens, local, padding))
    assert torch.equal(targets[0], targets[1])
    model.eval()
    local, padding = model.local_features(tokens)
    assert torch.equal(targets[0], model.make_targets(tokens, local, padding))
    assert model.training is False and model.local_encoder.training is False
    model.train()
    model.make_targets(tokens, local, padding)
    assert model.local_encoder.training  # the student's mode is left as it was


def test_speech_padding_before_positional_conv_is_a_config_field():
    cfg = get_config("speech", "tiny")
    assert cfg.speech.zero_padding_before_pos_conv  # ours: padding cannot reach real frames through the conv
    audio = torch.randn(2, 6000, generator=torch.Generator().manual_seed(0))
    padding = torch.zeros(2, 6000, dtype=torch.bool)
    padding[1, 4000:] = True
    other = audio.clone()
    other[1, 4000:] = torch.randn(2000, generator=torch.Generator().manual_seed(1))  # other padding content
    for zero in (True, False):
        cfg.speech.zero_padding_before_pos_conv = zero
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        with torch.no_grad():
            a = model.extract_features(audio, padding)
            b = model.extract_features(other, padding)
        real = ~a["padding_mask"][1]
        assert real.sum() < real.numel()
        # fairseq's data2vec 2.0 audio encoder (modalities/base.py contextualized_features) runs the positional
        # conv over the padded frames as they are, so their content reaches the real frames near the padding
        assert torch.equal(a["x"][1][real], b["x"][1][real]) is zero
        assert torch.equal(a["x"][0], b["x"][0])
