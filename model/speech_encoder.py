"""Speech front-end of data2vec 2.0 (fairseq `modalities/audio.py`, wav2vec 2.0 feature extractor).

local encoder:   7-layer conv feature extractor (layer-norm mode, 50 Hz), LayerNorm, Linear(C -> D)
                 (B, S) 16 kHz samples -> (B, T, D) frames
context encoder: zero the masked frames, add a 5-layer grouped relative positional conv computed over the
                 full zero-masked sequence, keep the visible frames, LayerNorm, dropout, prenet blocks;
                 ALiBi with a learned per-head scale (shared by all blocks) for every block.
"""
from __future__ import annotations

import torch
from torch import nn

from model.config import SpeechEncoderConfig, TransformerConfig
from model.conv_layers import ChannelLayerNorm, SamePad
from model.masking import MaskInfo, gather_tokens
from model.transformer import alibi_bias, alibi_slopes, attention_mask, forward_blocks, make_blocks


class ConvFeatureExtractor(nn.Module):
    """wav2vec 2.0 CNN, `extractor_mode=layer_norm`: conv (no bias) -> dropout(0) -> LN over channels -> GELU."""

    def __init__(self, conv_layers: list[tuple[int, int, int]]):
        super().__init__()
        self.conv_layers = nn.ModuleList()
        in_channels = 1
        for channels, kernel, stride in conv_layers:
            conv = nn.Conv1d(in_channels, channels, kernel, stride=stride, bias=False)
            nn.init.kaiming_normal_(conv.weight)
            self.conv_layers.append(nn.Sequential(conv, nn.Dropout(0.0), ChannelLayerNorm(channels), nn.GELU()))
            in_channels = channels

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = audio.unsqueeze(1)  # (B, 1, S)
        for layer in self.conv_layers:
            x = layer(x)
        return x  # (B, C, T)


class SpeechLocalEncoder(nn.Module):
    def __init__(self, cfg: SpeechEncoderConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        channels = cfg.conv_feature_layers[-1][0]
        self.feature_extractor = ConvFeatureExtractor(cfg.conv_feature_layers)
        self.layer_norm = nn.LayerNorm(channels)
        self.proj = nn.Linear(channels, embed_dim)

    def frame_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        length = num_samples
        for _, kernel, stride in self.cfg.conv_feature_layers:
            length = torch.div(length - kernel, stride, rounding_mode="floor") + 1
        return length

    def forward(
        self, audio: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """audio (B, S), padding_mask (B, S) True = pad -> frames (B, T, D), frame padding (B, T) or None."""
        x = self.feature_extractor(audio).transpose(1, 2)  # (B, T, C)
        x = self.proj(self.layer_norm(x))
        if padding_mask is None:
            return x, None
        # a frame is padding when it starts beyond the conv output length of the real samples
        lengths = self.frame_lengths((~padding_mask).sum(-1))
        frame_padding = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        return x, frame_padding


class RelativePositionalConv(nn.Sequential):
    """`depth` x [Conv1d(D, D, k, groups) -> SamePad -> LN over channels (no affine) -> GELU], no inner residual."""

    def __init__(self, dim: int, width: int, depth: int, groups: int):
        kernel = max(3, width // depth)
        layers = []
        for _ in range(depth):
            layers += [
                nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups),
                SamePad(kernel),
                ChannelLayerNorm(dim, elementwise_affine=False),
                nn.GELU(),
            ]
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)  # (N, T, D) -> (N, T, D)


class SpeechContextEncoder(nn.Module):
    def __init__(self, cfg: SpeechEncoderConfig, encoder_cfg: TransformerConfig):
        super().__init__()
        dim, heads = encoder_cfg.embed_dim, encoder_cfg.num_heads
        self.relative_positional_encoder = RelativePositionalConv(
            dim, cfg.conv_pos_width, cfg.conv_pos_depth, cfg.conv_pos_groups
        )
        self.register_buffer("alibi_slopes", alibi_slopes(heads), persistent=False)
        # learned per-head scale, shared by all blocks, clamped >= 0 when used (no weight decay: it is 1-D)
        self.alibi_scale = nn.Parameter(torch.full((heads,), cfg.alibi_scale))
        self.norm = None if encoder_cfg.layer_norm_first else nn.LayerNorm(dim, eps=encoder_cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.prenet_dropout)
        self.zero_padding = cfg.zero_padding_before_pos_conv
        self.blocks = make_blocks(encoder_cfg, cfg.prenet_depth)

    def forward(
        self, x: torch.Tensor, keep: MaskInfo | None, padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """x (N, T, D) -> (N, T_keep, D), padding of the kept frames, attention mask (N, H, T_keep, T_keep)."""
        T = x.shape[1]
        # the residual stream in the parameters' dtype (fp32 under autocast, whose projection hands over bf16):
        # only the matmuls and convs run in low precision, as for images and text
        x = x.to(self.alibi_scale.dtype)
        if padding_mask is not None and self.zero_padding:
            # padded frames are zeroed before the positional conv (fairseq wav2vec 2.0 `x[padding_mask] = 0`),
            # so the padding's content cannot reach the real frames through the conv
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        if keep is not None:
            # encoder_zero_mask: the positional conv runs over the whole sequence, so masked frames are zeroed
            # first; otherwise their content would reach the visible frames through the conv.
            x = x * (~keep.mask).unsqueeze(-1).to(x.dtype)
        x = x + self.relative_positional_encoder(x)
        if keep is not None:
            positions = keep.ids_keep
            x = gather_tokens(x, positions)
            padding_mask = None if padding_mask is None else gather_tokens(padding_mask, positions)
        else:
            positions = torch.arange(T, device=x.device)[None]  # (1, T): one bias broadcast over the batch
        slopes = self.alibi_slopes * self.alibi_scale.clamp_min(0)
        attn_mask = attention_mask(padding_mask, alibi_bias(positions, slopes))
        if self.norm is not None:
            x = self.norm(x)
        x, _ = forward_blocks(self.blocks, self.dropout(x), attn_mask)
        return x, padding_mask, attn_mask
