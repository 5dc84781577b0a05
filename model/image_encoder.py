"""Image front-end of data2vec 2.0 (fairseq `modalities/images.py`).

local encoder:   PatchEmbed, a Conv2d(3 -> D, kernel = stride = patch), no norm      (B, 3, H, W) -> (B, L, D)
context encoder: + fixed 2-D sin-cos positions (before masking), keep the visible patches, prepend the CLS
                 token (after masking, no position), LayerNorm (post-LN models), dropout, prenet blocks.
"""
from __future__ import annotations

import torch
from torch import nn

from model.config import ImageEncoderConfig, TransformerConfig
from model.masking import MaskInfo, gather_tokens
from model.transformer import forward_blocks, make_blocks


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ImageEncoderConfig, embed_dim: int):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_chans, embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        # MAE / fairseq: xavier-uniform on the kernel viewed as a (D, C*p*p) Linear weight
        nn.init.xavier_uniform_(self.proj.weight.data.view(embed_dim, -1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        # (B, C, H, W) -> (B, D, H/p, W/p) -> (B, L, D), patches in raster order
        return self.proj(images).flatten(2).transpose(1, 2), None


def sincos_2d_positions(embed_dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """(grid_h * grid_w, D) fixed 2-D sin-cos table of MAE (`get_2d_sincos_pos_embed`).

    MAE builds the grid with np.meshgrid(grid_w, grid_h), so the first D/2 channels encode the *column* index
    and the last D/2 the row index (its variable names say the reverse); kept as is so that weights transfer.
    Each half is [sin(pos * omega), cos(pos * omega)] with omega_i = 1 / 10000^(i / (D/4)).
    """
    if embed_dim % 4:
        raise ValueError("2-D sin-cos positions need embed_dim divisible by 4")

    def one_axis(pos: torch.Tensor, dim: int) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
        angles = pos.reshape(-1, 1).double() * omega  # (L, dim/2)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    table = torch.cat([one_axis(cols, embed_dim // 2), one_axis(rows, embed_dim // 2)], dim=1)
    return table.float()


class ImageContextEncoder(nn.Module):
    def __init__(self, cfg: ImageEncoderConfig, encoder_cfg: TransformerConfig):
        super().__init__()
        dim = encoder_cfg.embed_dim
        grid = cfg.grid_size
        # not learned and identical in student and teacher, so a non-persistent buffer
        self.register_buffer("positions", sincos_2d_positions(dim, grid, grid)[None], persistent=False)
        self.extra_tokens = nn.Parameter(torch.randn(1, cfg.num_extra_tokens, dim))  # CLS, N(0, 1)
        self.norm = None if encoder_cfg.layer_norm_first else nn.LayerNorm(dim, eps=encoder_cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.prenet_dropout)
        self.blocks = make_blocks(encoder_cfg, cfg.prenet_depth)

    def forward(
        self, x: torch.Tensor, keep: MaskInfo | None, padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, None, None]:
        """x (N, L, D) local features -> (N, 1 + L_keep, D); images have no padding and no attention bias."""
        if padding_mask is not None:
            raise ValueError("images have no padding")
        # fp32 positions and CLS make the residual stream fp32 under autocast, as in fairseq (whose stream stays
        # fp32 and only the matmuls run in bf16); a bf16 stream would also make the decoder's noise bf16
        x = x + self.positions
        if keep is not None:
            x = gather_tokens(x, keep.ids_keep)  # (N, L_keep, D): the student sees visible patches only
        x = torch.cat([self.extra_tokens.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        if self.norm is not None:
            x = self.norm(x)
        x, _ = forward_blocks(self.blocks, self.dropout(x))
        return x, None, None
