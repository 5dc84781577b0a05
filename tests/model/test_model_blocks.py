"""The transformer block, ALiBi and the block loop (model/transformer.py)."""
import math

import pytest
import torch
import torch.nn.functional as F

from model.config import TransformerConfig
from model.transformer import (Block, alibi_bias, alibi_slopes, attention_kernel, attention_mask, explicit_attention,
                               forward_blocks, make_blocks)


def _explicit_attention(attn, x, padding_mask=None, bias=None):
    """Reference attention: explicit scores, fp32 softmax, -inf on padded keys."""
    B, T, C = x.shape
    H = attn.num_heads
    q, k, v = attn.qkv(x).reshape(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
    scores = (q * (C // H) ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    if padding_mask is not None:
        scores = scores.masked_fill(padding_mask[:, None, None, :], float("-inf"))
    out = scores.softmax(-1, dtype=torch.float32) @ v
    return attn.proj(out.transpose(1, 2).reshape(B, T, C))


@pytest.fixture
def inputs():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 16)
    padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    bias = alibi_bias(torch.arange(6)[None], alibi_slopes(4))
    return x, padding, bias


def test_post_ln_block_output_and_ffn_tap(inputs):
    x, padding, bias = inputs
    block = Block(16, 4).eval()
    out, ffn = block(x, attention_mask(padding, bias))
    h = block.norm1(x + _explicit_attention(block.attn, x, padding, bias))
    expected_ffn = block.mlp(h)
    torch.testing.assert_close(ffn, expected_ffn)  # the tap: FFN output before residual and LN
    torch.testing.assert_close(out, block.norm2(h + expected_ffn))


def test_pre_ln_block(inputs):
    x, padding, _ = inputs
    block = Block(16, 4, layer_norm_first=True).eval()
    out, ffn = block(x, attention_mask(padding, None))
    h = x + _explicit_attention(block.attn, block.norm1(x), padding)
    torch.testing.assert_close(ffn, block.mlp(block.norm2(h)))
    torch.testing.assert_close(out, h + ffn)


def test_padding_keys_do_not_influence_real_tokens(inputs):
    x, padding, _ = inputs
    block = Block(16, 4).eval()
    out, _ = block(x, attention_mask(padding, None))
    changed = x.clone()
    changed[1, 4:] = 100.0
    out2, _ = block(changed, attention_mask(padding, None))
    torch.testing.assert_close(out[1, :4], out2[1, :4])
    # without the mask the same change does reach the real tokens
    assert not torch.allclose(block(x, None)[0][1, :4], block(changed, None)[0][1, :4])


def test_alibi_slopes_for_12_heads_match_fairseq():
    expected = [0.5**i for i in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected))
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([0.25, 0.0625, 0.015625, 0.00390625]))


def test_alibi_bias_of_kept_positions_equals_gathered_full_bias():
    slopes = alibi_slopes(4)
    full = alibi_bias(torch.arange(10)[None], slopes)[0]  # (H, 10, 10)
    assert full[0, 2, 5] == pytest.approx(-0.25 * 3) and full[0, 5, 2] == full[0, 2, 5]
    kept = torch.tensor([[0, 3, 4, 9]])
    torch.testing.assert_close(alibi_bias(kept, slopes)[0], full[:, kept[0]][:, :, kept[0]])


def test_layerdrop_only_in_training_and_taps():
    cfg = TransformerConfig(embed_dim=16, depth=3, num_heads=2)
    blocks = make_blocks(cfg, 3)
    x = torch.randn(2, 5, 16)
    blocks.train()
    out, taps = forward_blocks(blocks, x, layerdrop=1.0)
    assert taps == [] and torch.equal(out, x)
    blocks.eval()
    out, taps = forward_blocks(blocks, x, layerdrop=1.0)
    assert len(taps) == 3
    _, ends = forward_blocks(blocks, x, end_of_block_taps=True, num_blocks=2)
    first, _ = blocks[0](x)
    torch.testing.assert_close(ends[0], first)
    assert len(ends) == 2


def test_attention_mask_forms():
    padding = torch.tensor([[False, True]])
    assert attention_mask(None, None) is None
    assert torch.equal(attention_mask(padding, None), torch.tensor([[[[True, False]]]]))
    bias = torch.zeros(1, 2, 2, 2)
    folded = attention_mask(padding, bias)
    assert folded.shape == (1, 2, 2, 2) and math.isinf(folded[0, 0, 0, 1]) and folded[0, 0, 0, 0] == 0


def test_sdpa_half_precision_matches_fp32_reference(inputs):
    # the fused SDPA path keeps the softmax accurate in low precision (bf16 on CPU)
    x, padding, bias = inputs
    block = Block(16, 4).eval()
    ref = _explicit_attention(block.attn, x, padding, bias)
    low = block.attn.to(torch.bfloat16)(x.bfloat16(), attention_mask(padding, bias)).float()
    assert F.mse_loss(low, ref) < 1e-3


@pytest.mark.parametrize("mask_form", ["none", "padding", "alibi_and_padding"])
def test_explicit_and_sdpa_kernels_give_the_same_outputs_and_gradients(inputs, mask_form):
    x, padding, bias = inputs
    mask = {"none": None, "padding": attention_mask(padding, None), "alibi_and_padding": attention_mask(padding, bias)}[mask_form]
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4, 6, 8, requires_grad=True) for _ in range(3))
    results = []
    for kernel in (explicit_attention, F.scaled_dot_product_attention):
        out = kernel(q, k, v, mask)
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, 8)).sum(), (q, k, v))
        results.append((out, *grads))
    for explicit, sdpa in zip(*results):
        torch.testing.assert_close(explicit, sdpa, rtol=1e-5, atol=1e-6)


def test_attention_kernel_per_device_and_dtype(inputs, monkeypatch):
    cpu = torch.device("cpu")
    assert attention_kernel(cpu, torch.float32) == "sdpa" and attention_kernel(cpu, torch.bfloat16) == "explicit"
    assert attention_kernel(torch.device("cuda"), torch.bfloat16) == "sdpa"
    # under bf16 autocast on CPU the block does not call SDPA, and its output and input gradient stay close to fp32
    x, padding, bias = inputs
    block = Block(16, 4).eval()
    x = x.clone().requires_grad_(True)
    ref = block(x, attention_mask(padding, bias))[0]
    (ref_grad,) = torch.autograd.grad(ref.sum(), x)

    def no_sdpa(*args, **kwargs):
        raise AssertionError("SDPA called under bf16 on CPU")

    monkeypatch.setattr(F, "scaled_dot_product_attention", no_sdpa)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = block(x, attention_mask(padding, bias))[0]
    (low_grad,) = torch.autograd.grad(low.float().sum(), x)
    torch.testing.assert_close(low.float(), ref, rtol=0.05, atol=0.05)
    torch.testing.assert_close(low_grad, ref_grad, rtol=0.05, atol=0.05)
