"""wav2vec 2.0 baseline: the contrastive loss by hand, distractor sampling, the quantizer and its diversity loss,
Gumbel temperature annealing, the loss terms, and span masks from make_mask."""
import math

import numpy as np
import pytest
import torch

from model.build import build_model
from model.masking import make_mask
from model.presets import get_config
from model.quantizer import GumbelVectorQuantizer, diversity_loss, perplexity
from model.wav2vec2 import GradMultiply, contrastive_logits, contrastive_loss, sample_negatives
from model_synthetic import batch_for


def _model(preset="tiny"):
    torch.manual_seed(0)
    return build_model(get_config("speech", preset, "wav2vec2"))


def test_contrastive_loss_by_hand():
    # one utterance, two masked frames, one distractor each: frame 0's is frame 1's target and vice versa
    pred = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (B=1, N=2, F=2)
    targets = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    neg_slots = torch.tensor([[[1], [0]]])  # (B, N, K=1)
    negatives = targets[0][neg_slots]  # (1, 2, 1, 2)
    logits = contrastive_logits(pred, targets, negatives, logit_temp=0.1)
    # cosines: frame 0: target 1, distractor 1/sqrt(2); frame 1: target 1/sqrt(2), distractor 0
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(logits, torch.tensor([[[10.0, 10 * s], [10 * s, 0.0]]]))
    ce0 = math.log(1 + math.exp(10 * s - 10))  # -log softmax(logits)[0]
    ce1 = math.log(1 + math.exp(-10 * s))
    loss, accuracy = contrastive_loss(logits, torch.ones(1, 2))
    assert loss.item() == pytest.approx((ce0 + ce1) / 2, rel=1e-5) and accuracy.item() == 1.0
    loss, _ = contrastive_loss(logits, torch.tensor([[1.0, 0.0]]))  # weight 0: frame 1 carries no loss
    assert loss.item() == pytest.approx(ce0, rel=1e-5)


def test_a_distractor_equal_to_the_target_is_ignored():
    pred = torch.tensor([[[0.3, 0.9], [0.5, -0.2]]])
    targets = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # both frames chose the same codevector
    negatives = targets[0][torch.tensor([[[1], [0]]])]
    logits = contrastive_logits(pred, targets, negatives, 0.1)
    assert torch.isinf(logits[..., 1]).all() and (logits[..., 1] < 0).all()
    loss, _ = contrastive_loss(logits, torch.ones(1, 2))
    assert loss.item() == 0.0


def test_distractors_come_from_the_other_masked_frames_of_the_same_utterance():
    torch.manual_seed(0)
    num_valid = torch.tensor([6, 3])
    slots = sample_negatives(num_valid, num_slots=6, num_negatives=3000)  # (2, 6, 3000)
    for b, n in enumerate(num_valid.tolist()):
        for i in range(n):
            drawn = slots[b, i]
            assert not (drawn == i).any() and drawn.min() >= 0 and drawn.max() < n
            counts = torch.bincount(drawn, minlength=n).float() / drawn.numel()
            others = [j for j in range(n) if j != i]
            assert (counts[others] - 1 / (n - 1)).abs().max() < 0.04  # uniform over the others


def test_perplexity_and_diversity_loss_are_minimal_for_uniform_codebook_use():
    G, V = 2, 8
    uniform = torch.full((5, G, V), 1 / V)
    assert perplexity(uniform).item() == pytest.approx(G * V, rel=1e-5)
    assert diversity_loss(perplexity(uniform), G * V).item() == pytest.approx(0.0, abs=1e-5)
    # every frame picks entry 3 in each group: perplexity G, the largest loss (G*V - G) / (G*V)
    peaked = torch.zeros(5, G, V)
    peaked[..., 3] = 1
    assert perplexity(peaked).item() == pytest.approx(G, rel=1e-5)
    assert diversity_loss(perplexity(peaked), G * V).item() == pytest.approx((G * V - G) / (G * V), rel=1e-5)
    # frames that each use one entry, but all entries equally often on average: uniform use, loss 0
    spread = torch.eye(V).repeat(1, G).reshape(V, G, V)
    assert diversity_loss(perplexity(spread), G * V).item() == pytest.approx(0.0, abs=1e-5)
    random = torch.rand(7, G, V).softmax(-1)
    assert 0 < diversity_loss(perplexity(random), G * V).item() < (G * V - G) / (G * V)
    # rows with weight 0 (padding) do not count
    weight = torch.tensor([1.0, 1, 1, 1, 1, 0])
    mixed = torch.cat([uniform, peaked[:1]])
    assert perplexity(mixed, weight).item() == pytest.approx(G * V, rel=1e-5)


def test_quantizer_picks_one_codebook_entry_per_group():
    torch.manual_seed(0)
    q = GumbelVectorQuantizer(dim=6, num_vars=4, groups=2, vq_dim=10, temp=(2.0, 0.5, 0.999995))
    x = torch.randn(2, 3, 6)
    entries = q.vars[0]  # (G*V, 5)
    for mode in ("eval", "train"):
        getattr(q, mode)()
        out = q(x)
        assert out["x"].shape == (2, 3, 10)
        flat = out["x"].reshape(6, 2, 5)
        for g in range(2):  # each group's half is exactly one of that group's V entries
            distance = (flat[:, g, None, :] - entries[None, g * 4:(g + 1) * 4]).abs().sum(-1)  # (6, V)
            assert (distance.min(-1).values < 1e-6).all()
    q.eval()
    choice = q.weight_proj(x).reshape(6, 2, 4).argmax(-1)  # eval: the argmax entry, no noise
    expected = torch.cat([entries[choice[:, 0]], entries[4 + choice[:, 1]]], dim=-1)
    torch.testing.assert_close(q(x)["x"].reshape(6, 10), expected)
    q.train()
    out = q(x)
    (out["x"].sum() + out["prob_perplexity"]).backward()
    assert q.weight_proj.weight.grad.abs().sum() > 0 and q.vars.grad.abs().sum() > 0
    with torch.no_grad():
        q.weight_proj.weight.zero_()
    assert q(x)["prob_perplexity"].item() == pytest.approx(8.0, rel=1e-5)  # equal logits: uniform use


def test_gumbel_temperature_anneals_in_ema_step_and_is_checkpointed():
    model = _model()
    start, floor, decay = model.cfg.wav2vec2.latent_temp
    assert model.quantizer.temp.item() == start
    assert model.ema_step(1000) == 1.0  # no teacher: the trainer logs 1.0 as ema_decay
    assert model.quantizer.temp.item() == pytest.approx(start * decay**1000)
    _, stats = model(batch_for("speech", 2))
    assert float(stats["temp"]) == pytest.approx(start * decay**1000)
    model.ema_step(100_000)
    assert model.quantizer.temp.item() == floor
    fresh = _model()
    fresh.load_state_dict(model.state_dict())  # a resumed run continues at the annealed temperature
    assert fresh.quantizer.temp.item() == floor
    base = get_config("speech", "base", "wav2vec2").wav2vec2.latent_temp
    assert base == (2.0, 0.5, 0.999995)
    assert 2.0 * 0.999995**277_000 == pytest.approx(0.5, rel=0.01)  # base reaches the floor after ~277k updates


def test_loss_terms():
    model = _model().eval()  # eval: no dropout, hard codebook choices
    batch = batch_for("speech", 2)
    captured = {}
    model.local_encoder.feature_extractor.register_forward_hook(lambda m, i, o: captured.update(cnn=o))
    model.context_encoder.register_forward_pre_hook(lambda m, args: captured.update(encoder_input=args[0]))
    model.quantizer.register_forward_pre_hook(lambda m, args: captured.update(quantizer_input=args[0]))
    batch["mask"] = make_mask(model.cfg, 0, 0, [0, 1], input_length=batch["audio"].shape[-1])
    loss, stats = model(batch)
    w = model.cfg.wav2vec2
    torch.testing.assert_close(loss, stats["loss_contrastive"] + stats["loss_diversity"] + stats["loss_features"])
    torch.testing.assert_close(stats["loss_features"], w.feature_penalty_weight * captured["cnn"].pow(2).mean())
    num_vars = w.latent_vars * w.latent_groups
    torch.testing.assert_close(stats["loss_diversity"],
                               w.diversity_weight * (num_vars - stats["prob_perplexity"]) / num_vars)
    # the encoder sees every frame, the masked ones replaced by the mask embedding
    mask = batch["mask"]
    features = model.local_encoder.layer_norm(captured["cnn"].transpose(1, 2))  # (B, T, C)
    x = captured["encoder_input"]
    assert torch.equal(x[mask], model.mask_embedding.expand(int(mask.sum()), -1))
    torch.testing.assert_close(x[~mask], model.local_encoder.proj(features)[~mask])
    # the quantizer gets the unmasked CNN features of the masked frames, in time order
    torch.testing.assert_close(captured["quantizer_input"].reshape(-1, features.shape[-1]), features[mask])


def test_feature_gradient_is_scaled():
    x = torch.ones(3, requires_grad=True)
    (GradMultiply.apply(x, 0.1) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.1, 0.2, 0.3]))
    assert get_config("speech", "base", "wav2vec2").wav2vec2.feature_grad_mult == 0.1


def test_released_hyperparameters():
    base, large = (get_config("speech", p, "wav2vec2") for p in ("base", "large"))
    w = base.wav2vec2
    assert (w.latent_groups, w.latent_vars, w.final_dim, w.latent_dim or w.final_dim) == (2, 320, 256, 256)
    assert (w.num_negatives, w.logit_temp, w.diversity_weight, w.feature_penalty_weight) == (100, 0.1, 0.1, 10.0)
    assert (w.dropout_input, w.dropout_features) == (0.1, 0.1)
    assert (large.wav2vec2.final_dim, large.wav2vec2.latent_temp[1], large.wav2vec2.feature_penalty_weight) == \
           (768, 0.1, 0.0)
    # fairseq mask_prob 0.65, spans of 10: 0.065 * T span starts, which cover ~49% of the frames
    assert base.mask.mask_length == 10 and base.mask.mask_prob + base.mask.mask_prob_adjust == pytest.approx(0.65)
    assert base.encoder == get_config("speech", "base").encoder  # layerdrop 0.05, dropout 0.1, as wav2vec 2.0 base


def test_masks_are_spans_of_ten_covering_49_percent():
    cfg = get_config("speech", "base", "wav2vec2")
    T = cfg.num_tokens(250_000)  # wav2vec 2.0 base crops
    masks = make_mask(cfg, 0, 0, range(20), input_length=250_000)
    assert masks.shape == (20, T) and (masks.sum(1) == int(T * 0.49)).all()
    runs = []
    for row in masks.numpy().astype(int):
        edges = np.diff(np.concatenate([[0], row, [0]]))
        runs += list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
    assert np.mean(runs) > 6  # mostly merged spans of 10, a few single frames from the exact-count fix-up


def test_padded_frames_carry_no_loss():
    # (pretraining crops instead of padding; padded batches still work, e.g. for evaluation)
    model = _model()
    audio = batch_for("speech", 2)["audio"]  # 16,000 samples = 49 frames
    padding_mask = torch.zeros_like(audio, dtype=torch.bool)
    padding_mask[1, 8000:] = True  # the second utterance is half padding
    mask = make_mask(model.cfg, 0, 0, [0, 1], input_length=16000)
    frames = model.local_encoder.frame_lengths(torch.tensor([16000, 8000]))  # 49 and 24 real frames
    real = torch.arange(49)[None] < frames[:, None]
    loss, stats = model({"audio": audio, "padding_mask": padding_mask, "mask": mask})
    assert torch.isfinite(loss) and float(stats["sample_size"]) == (mask & real).sum().item() < mask.sum().item()
    loss.backward()
