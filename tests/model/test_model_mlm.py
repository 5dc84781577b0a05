"""Masked LM baseline: 80/10/10 corruption, 15% selection from make_mask, the loss on selected tokens only,
and the LM head tied to the token embedding."""
import pytest
import torch
import torch.nn.functional as F

from model.build import build_model
from model.masking import make_mask
from model.mlm import corrupt_tokens
from model.presets import get_config
from model_synthetic import batch_for


def _model():
    torch.manual_seed(0)
    return build_model(get_config("text", "tiny", "mlm"))


def test_corruption_is_80_10_10_on_selected_tokens_only():
    g = torch.Generator().manual_seed(0)
    vocab, mask_idx, specials = 50_000, 4, 5
    tokens = torch.randint(specials, vocab, (400, 500), generator=g)
    selected = torch.rand(tokens.shape, generator=g) < 0.5
    out = corrupt_tokens(tokens, selected, mask_idx, vocab, specials, 0.1, 0.1, generator=g)
    assert torch.equal(out[~selected], tokens[~selected])  # unselected tokens never change
    picked, original = out[selected], tokens[selected]
    n = picked.numel()  # ~100k selected tokens: the shares are within ~0.5% of 80/10/10
    masked = (picked == mask_idx).float().mean().item()
    kept = (picked == original).float().mean().item()
    replaced = picked[(picked != mask_idx) & (picked != original)]
    assert masked == pytest.approx(0.8, abs=0.006) and kept == pytest.approx(0.1, abs=0.005)
    assert replaced.numel() / n == pytest.approx(0.1, abs=0.005)
    assert replaced.min() >= specials and replaced.max() < vocab  # random ids are never specials
    assert replaced.float().std() > vocab / 4  # and spread over the vocabulary


def test_selection_is_15_percent_of_the_tokens():
    cfg = get_config("text", "base", "mlm")
    masks = make_mask(cfg, 0, 0, range(8), input_length=512)
    assert masks.shape == (8, 512) and (masks.sum(1) == 512 - int(512 * 0.85)).all()  # 77 tokens, 15.04%
    assert (cfg.mlm.leave_unmasked_prob, cfg.mlm.random_token_prob, cfg.mask.clone_batch) == (0.1, 0.1, 1)


def test_loss_is_cross_entropy_on_the_selected_tokens_only():
    model = _model().eval()
    tokens = batch_for("text", 2)["tokens"]  # (2, 64)
    tokens[1, 50:] = model.cfg.text.pad_idx
    mask = make_mask(model.cfg, 0, 0, [0, 1], input_length=64)  # 64 - int(64 * 0.85) = 10 per row
    mask[1] = False
    mask[1, [3, 7, 20, 21, 33, 49, 50, 55, 60, 63]] = True  # 4 of them on padding, which is never a target
    captured = {}
    model.lm_head.register_forward_hook(lambda m, inputs, output: captured.update(logits=output))
    loss, stats = model({"tokens": tokens, "mask": mask})
    selected = mask & tokens.ne(model.cfg.text.pad_idx)
    logits = captured["logits"]  # (B, N = 10, V): the head runs at the selected positions only
    assert logits.shape == (2, 10, 4096) and float(stats["sample_size"]) == selected.sum().item() == 16
    # the selected tokens are the first rows of each sequence's logits, in order
    rows = [logits[b, : int(selected[b].sum())] for b in range(2)]
    expected = F.cross_entropy(torch.cat(rows), tokens[selected])
    torch.testing.assert_close(loss, expected)
    accuracy = (torch.cat(rows).argmax(-1) == tokens[selected]).float().mean()
    torch.testing.assert_close(stats["mlm_accuracy"], accuracy)


def test_selected_tokens_are_corrupted_before_the_encoder():
    model = _model().eval()
    tokens = batch_for("text", 2)["tokens"]
    mask = make_mask(model.cfg, 0, 0, [0, 1], input_length=64)
    seen = []
    model.local_encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    torch.manual_seed(1)
    model({"tokens": tokens, "mask": mask})
    corrupted = seen[0]
    assert torch.equal(corrupted[~mask], tokens[~mask])
    assert (corrupted[mask] == model.cfg.text.mask_idx).float().mean() > 0.5


def test_lm_head_is_tied_to_the_token_embedding():
    model = _model()
    names = {n for n, _ in model.named_parameters() if n.startswith("lm_head.")}
    assert names == {"lm_head.dense.weight", "lm_head.dense.bias", "lm_head.layer_norm.weight",
                     "lm_head.layer_norm.bias", "lm_head.bias"}
    tokens = batch_for("text", 2)["tokens"]
    loss, _ = model({"tokens": tokens, "mask": make_mask(model.cfg, 0, 0, [0, 1], input_length=64)})
    loss.backward()
    grad = model.local_encoder.embed_tokens.weight.grad
    unused = torch.ones(4096, dtype=torch.bool)
    unused[tokens.unique()] = False
    unused[model.cfg.text.mask_idx] = False
    assert grad[unused].abs().sum() > 0  # rows of tokens not in the input still learn, as output weights
    with torch.device("meta"):
        base = build_model(get_config("text", "base", "mlm"))
    assert sum(p.numel() for p in base.lm_head.parameters()) == 768 * 768 + 768 + 2 * 768 + 50_265  # RoBERTa


def test_special_ids_must_stay_out_of_the_random_replacements():
    cfg = get_config("text", "tiny", "mlm")
    cfg.text.mask_idx = 7
    with pytest.raises(ValueError, match="num_special_tokens"):
        build_model(cfg)
