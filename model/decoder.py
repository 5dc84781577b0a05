"""Student-only decoders (fairseq `modalities/modules.py` Decoder1d / Decoder2d) and the data2vec 1.0 head.

One conv layer: Conv(in -> dim, kernel k, padding k//2, groups g) -> trim one frame for even k -> LayerNorm
over channels without affine -> GELU; a residual around it when `decoder_residual` and the channel counts
match (so with D != dim the first layer has none). Then a projection back to D: one Linear, or
Linear(dim -> ratio*dim) -> GELU -> Linear(-> D) for `projection_layers=2`.
The decoder sees the full grid/sequence: visible tokens from the student plus noise at the masked positions;
position reaches it only through the conv neighbourhood (no positional embedding is added).
"""
from __future__ import annotations

import torch
from torch import nn

from model.config import DecoderConfig
from model.conv_layers import ChannelLayerNorm, SamePad


def projection(cfg: DecoderConfig, in_dim: int, out_dim: int) -> nn.Module:
    layers: list[nn.Module] = []
    dim = in_dim
    for i in range(cfg.projection_layers - 1):
        next_dim = int(dim * cfg.projection_ratio) if i == 0 else dim
        layers += [nn.Linear(dim, next_dim), nn.GELU()]
        dim = next_dim
    layers.append(nn.Linear(dim, out_dim))
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


class ConvDecoder(nn.Module):
    """1-D (speech, text) or 2-D (images, on the patch grid) conv decoder: (N, T, D) -> (N, T, D)."""

    def __init__(self, cfg: DecoderConfig, embed_dim: int, grid: tuple[int, int] | None = None):
        super().__init__()
        if (cfg.decoder_type == "conv2d") != (grid is not None):
            raise ValueError("a 2-D decoder needs the patch grid, a 1-D decoder none")
        self.grid = grid
        self.residual = cfg.decoder_residual
        conv = nn.Conv2d if grid is not None else nn.Conv1d
        self.blocks = nn.ModuleList()
        for i in range(cfg.decoder_layers):
            in_dim = embed_dim if i == 0 else cfg.decoder_dim
            self.blocks.append(nn.Sequential(
                conv(in_dim, cfg.decoder_dim, cfg.decoder_kernel, padding=cfg.decoder_kernel // 2,
                     groups=cfg.decoder_groups),
                SamePad(cfg.decoder_kernel, dims=2 if grid is not None else 1),
                ChannelLayerNorm(cfg.decoder_dim, elementwise_affine=False),
                nn.GELU(),
            ))
        self.proj = projection(cfg, cfg.decoder_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, T, D = x.shape
        x = x.transpose(1, 2)  # (N, D, T)
        if self.grid is not None:
            x = x.reshape(N, D, *self.grid)  # raster order back to (N, D, h, w)
        for layer in self.blocks:
            y = layer(x)
            x = x + y if self.residual and y.shape[1] == x.shape[1] else y
        x = x.reshape(N, x.shape[1], T).transpose(1, 2)
        return self.proj(x)


class LinearHead(nn.Module):
    """data2vec 1.0 regression head (`final_proj`): applied to the student output at every position."""

    def __init__(self, cfg: DecoderConfig, embed_dim: int):
        super().__init__()
        self.proj = projection(cfg, embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def build_decoder(cfg: DecoderConfig, embed_dim: int, grid: tuple[int, int] | None) -> nn.Module:
    if cfg.decoder_type == "linear":
        return LinearHead(cfg, embed_dim)
    if cfg.decoder_type not in ("conv1d", "conv2d"):
        raise ValueError(f"unknown decoder_type {cfg.decoder_type!r}")
    return ConvDecoder(cfg, embed_dim, grid if cfg.decoder_type == "conv2d" else None)
