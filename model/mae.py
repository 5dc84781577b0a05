"""MAE baseline: "Masked Autoencoders Are Scalable Vision Learners" (He et al., 2021, arXiv 2111.06377), following
facebookresearch/mae models_mae.py, on the data2vec 2.0 image encoder.

One training step (`forward`):
  1. patch embedding + fixed 2-D sin-cos positions; 75% of the patches masked at random, one mask per image
  2. encoder on the visible patches + CLS                                             (B, 1 + L_keep, D)
  3. decoder: Linear(D -> d), a learned mask token at every masked patch, unshuffle, + fixed sin-cos positions,
     a few narrow pre-LN blocks, LayerNorm, Linear(d -> p*p*C)                        (B, L, p*p*C)
  4. loss: MSE against each patch's normalized pixels (norm_pix_loss), masked patches only

Differences from MAE, and why:
  * the encoder is data2vec 2.0's ViT (post-LN, CLS N(0, 0.02) as MAE, no final encoder norm) so that the
    benchmark compares equal encoders; MAE's own encoder is pre-LN with a final LayerNorm.
  * masks come from `model.masking.make_mask` (one seeded uniform random subset of exactly int(L * 0.25)
    visible patches per image, the same distribution as MAE's per-batch `random_masking`).
"""
from __future__ import annotations

import torch
from torch import nn

from model.config import Data2Vec2Config, MAEConfig, TransformerConfig
from model.encoder import Encoder
from model.image_encoder import sincos_2d_positions
from model.masking import MaskInfo
from model.transformer import forward_blocks, make_blocks


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), patches in raster order, pixels (row, column, channel) as MAE."""
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)


def pixel_targets(images: torch.Tensor, patch_size: int, norm_pix_loss: bool, eps: float = 1e-6) -> torch.Tensor:
    """(B, L, p*p*C) targets: each patch's pixels, normalized by the patch's own mean and variance (unbiased)."""
    target = patchify(images, patch_size).float()
    if norm_pix_loss:
        mean = target.mean(-1, keepdim=True)
        var = target.var(-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    return target


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked patches of the per-patch MSE: pred, target (B, L, P), mask (B, L) True = masked."""
    per_patch = ((pred.float() - target) ** 2).mean(-1)  # (B, L)
    weight = mask.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp_min(1)


class MAEDecoder(nn.Module):
    """MAE's decoder: (B, 1 + L_keep, D) visible encoder outputs -> (B, L, p*p*C) pixels of every patch."""

    def __init__(self, cfg: MAEConfig, embed_dim: int, grid: int, patch_pixels: int):
        super().__init__()
        dim = cfg.decoder_embed_dim
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        # fixed sin-cos table; the CLS row is zero (MAE get_2d_sincos_pos_embed(cls_token=True))
        table = torch.cat([torch.zeros(1, dim), sincos_2d_positions(dim, grid, grid)])
        self.register_buffer("positions", table[None], persistent=False)  # (1, 1 + L, d)
        block_cfg = TransformerConfig(
            embed_dim=dim, depth=cfg.decoder_depth, num_heads=cfg.decoder_num_heads, mlp_ratio=cfg.decoder_mlp_ratio,
            layer_norm_first=True, norm_eps=cfg.decoder_norm_eps, dropout=0.0, attention_dropout=0.0,
            post_mlp_drop=0.0,
        )
        self.blocks = make_blocks(block_cfg, cfg.decoder_depth)  # pre-LN like timm's Block
        self.norm = nn.LayerNorm(dim, eps=cfg.decoder_norm_eps)
        self.pred = nn.Linear(dim, patch_pixels)

    def forward(self, x: torch.Tensor, keep: MaskInfo) -> torch.Tensor:
        x = self.embed(x)  # (B, 1 + L_keep, d)
        B, L = keep.mask.shape
        # every patch starts as the mask token; the visible ones are replaced by their encoder outputs
        tokens = self.mask_token.to(x.dtype).expand(B, L, -1)
        index = keep.ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        tokens = tokens.scatter(1, index, x[:, 1:])  # (B, L, d), raster order
        x = torch.cat([x[:, :1], tokens], dim=1) + self.positions.to(x.dtype)  # (B, 1 + L, d)
        x, _ = forward_blocks(self.blocks, x)
        return self.pred(self.norm(x))[:, 1:]  # CLS dropped: (B, L, p*p*C)


class MAE(Encoder):
    pretraining_modules = ("decoder",)

    def __init__(self, cfg: Data2Vec2Config):
        super().__init__(cfg)
        image = cfg.image
        self.decoder = MAEDecoder(cfg.mae, cfg.embed_dim, image.grid_size, image.patch_size**2 * image.in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        # MAE initialize_weights: xavier-uniform Linear with zero bias everywhere, CLS and mask token N(0, 0.02),
        # LayerNorm (1, 0); the patch-embed conv is xavier-uniform already (PatchEmbed).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.context_encoder.extra_tokens, std=0.02)
        nn.init.normal_(self.decoder.mask_token, std=0.02)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        images = batch["image"]  # (B, C, H, W)
        local, _ = self.local_features(images)  # (B, L, D)
        L = local.shape[1]
        keep = self.mask_info(batch, L)
        x, _ = self.encode(local, keep, None)  # (B, 1 + L_keep, D): visible patches only
        pred = self.decoder(x, keep)  # (B, L, p*p*C)
        target = pixel_targets(images, self.cfg.image.patch_size, self.cfg.mae.norm_pix_loss, self.cfg.mae.norm_pix_eps)
        loss = mae_loss(pred, target, keep.mask)
        stats = {
            "loss_reconstruction": loss.detach(),
            "masked_frac": 1 - keep.num_keep / L,
            "sample_size": keep.mask.sum().detach(),
        }
        return loss, stats
