"""Transformer block of data2vec 2.0 (fairseq `AltBlock` / `AltAttention`), ALiBi, and the block loop.

A block returns `(x, ffn_out)`: `ffn_out` is the MLP output before dropout, residual and LayerNorm, which is
the teacher's target tap (fairseq `ffn_targets=True`).

Attention runs one of two equivalent kernels, chosen per device and dtype (`attention_kernel`):
  * "explicit": fairseq's own `q @ k^T + bias -> softmax(fp32) -> @ v`, the bias and the softmax in fp32 (as
    fairseq `AltAttention`). Used for bf16/fp16 on CPU: there PyTorch's SDPA CPU kernel runs 3-7x slower than
    this at data2vec 2.0's short sequences (measured by `python -m pipeline throughput --compare`, see
    docs/performance.md).
  * "sdpa": `F.scaled_dot_product_attention` (fused or flash kernels, softmax in fp32 inside), everywhere else:
    fp32 on CPU, and any dtype on GPU. The padding mask and ALiBi are folded into one additive mask in the
    query dtype.
  Both give the same outputs and gradients (tests/model/test_model_blocks.py).

Changes from the official code:
  * the pre-LN branch of fairseq's AltBlock uses the MLP output as its own residual (`r = x = mlp(norm2(x))`);
    here pre-LN is the standard `x + mlp(norm2(x))`. No released data2vec 2.0 config is pre-LN.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth per sample (timm)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


class Mlp(nn.Module):
    """timm Mlp: fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


def attention_kernel(device: torch.device, dtype: torch.dtype) -> str:
    """"explicit" for reduced precision on CPU, "sdpa" otherwise (see the module docstring for why)."""
    return "explicit" if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16) else "sdpa"


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                       dropout_p: float = 0.0) -> torch.Tensor:
    """fairseq `AltAttention`: softmax(q k^T / sqrt(d) + bias) v with the bias and softmax in fp32.

    q, k, v (B, H, T, d); attn_mask None, bool (B, 1|H, 1|T, T) True = attend, or additive float (B, H|1, T, T).
    Returns (B, H, T, d) in q's dtype. Same semantics as `F.scaled_dot_product_attention`.
    """
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, T, T)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn = attn.masked_fill(~attn_mask, float("-inf"))
        else:
            attn = attn.float() + attn_mask.float()
    attn = attn.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    attn = F.dropout(attn, dropout_p) if dropout_p > 0 else attn
    return attn @ v


class Attention(nn.Module):
    """Multi-head self-attention with qkv bias; scale head_dim^-0.5."""

    def __init__(self, dim: int, num_heads: int, attention_dropout: float = 0.0, proj_dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.attention_dropout = attention_dropout
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, T, C); attn_mask: None, bool (B, 1, 1, T) with True = attend, or additive float (B, H|1, T, T)
        B, T, C = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, T, C/H)
        dropout_p = self.attention_dropout if self.training else 0.0
        if attention_kernel(q.device, q.dtype) == "explicit":
            x = explicit_attention(q, k, v, attn_mask, dropout_p)
        else:
            if attn_mask is not None and attn_mask.is_floating_point():
                attn_mask = attn_mask.to(q.dtype)
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        x = x.transpose(1, 2).reshape(B, T, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Post-LN (default) or pre-LN transformer block returning (output, FFN output before the residual)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        post_mlp_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_norm_first: bool = False,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, attention_dropout, dropout)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), activation_dropout)
        self.post_mlp_dropout = nn.Dropout(post_mlp_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.layer_norm_first:
            x = x + self.drop_path(self.attn(self.norm1(x), attn_mask))
            ffn = self.mlp(self.norm2(x))
            x = x + self.drop_path(self.post_mlp_dropout(ffn))
        else:
            x = self.norm1(x + self.drop_path(self.attn(x, attn_mask)))
            ffn = self.mlp(x)
            x = self.norm2(x + self.drop_path(self.post_mlp_dropout(ffn)))
        return x, ffn


def make_blocks(cfg, depth: int, drop_path_rates: list[float] | None = None) -> nn.ModuleList:
    """`depth` blocks from a TransformerConfig (drop path per block, default 0)."""
    rates = drop_path_rates or [0.0] * depth
    return nn.ModuleList(
        Block(
            cfg.embed_dim,
            cfg.num_heads,
            cfg.mlp_ratio,
            dropout=cfg.dropout,
            attention_dropout=cfg.attention_dropout,
            activation_dropout=cfg.activation_dropout,
            post_mlp_drop=cfg.post_mlp_drop,
            drop_path=rates[i],
            layer_norm_first=cfg.layer_norm_first,
            norm_eps=cfg.norm_eps,
        )
        for i in range(depth)
    )


def forward_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    layerdrop: float = 0.0,
    end_of_block_taps: bool = False,
    num_blocks: int | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the first `num_blocks` (default all) blocks; return the output and one tap per block that ran.

    Tap: the FFN output before residual/LN (data2vec 2.0 targets) or, with `end_of_block_taps`, the block output.
    Layerdrop skips a whole block with probability `layerdrop` in training mode only, so the teacher (eval) and
    fine-tuning evaluation never drop. The coin comes from the CPU generator so no device sync is needed.
    """
    taps = []
    for blk in blocks[:num_blocks]:
        if blk.training and layerdrop > 0 and float(torch.rand(())) < layerdrop:
            continue
        x, ffn = blk(x, attn_mask)
        taps.append(x if end_of_block_taps else ffn)
    return x, taps


def attention_mask(
    padding_mask: torch.Tensor | None, attn_bias: torch.Tensor | None
) -> torch.Tensor | None:
    """SDPA mask from a key padding mask (B, T), True = pad, and/or an additive bias (B, H, T, T)."""
    if attn_bias is None:
        if padding_mask is None:
            return None
        return ~padding_mask[:, None, None, :]  # (B, 1, 1, T), True = attend
    if padding_mask is not None:
        attn_bias = attn_bias.masked_fill(padding_mask[:, None, None, :], float("-inf"))
    return attn_bias


# ----------------------------------------------------------------------------------------------------
# ALiBi (Press et al.), symmetric as in data2vec 2.0 audio: bias(h, i, j) = -slope_h * |i - j| * scale_h


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Geometric slopes; for a non-power-of-2 head count, interleave slopes of the next power of 2."""

    def power_of_2_slopes(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    def slopes(n: int) -> list[float]:
        if math.log2(n).is_integer():
            return power_of_2_slopes(n)
        closest = 2 ** math.floor(math.log2(n))
        return power_of_2_slopes(closest) + slopes(2 * closest)[0::2][: n - closest]

    return torch.tensor(slopes(num_heads), dtype=torch.float32)


def alibi_bias(positions: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """Additive attention bias (B, H, T, T) in fp32 for tokens at `positions` (B, T) of the full sequence.

    Computing the bias from the kept tokens' original positions equals gathering rows and columns of the full
    (T x T) bias (fairseq `masked_alibi`), so the student sees the true distances between visible frames.
    """
    distance = (positions[:, None, :, None] - positions[:, None, None, :]).abs().float()  # (B, 1, T, T)
    return -slopes.float()[None, :, None, None] * distance
