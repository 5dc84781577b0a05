"""Text front-end of data2vec 2.0 (fairseq `modalities/text.py`, RoBERTa embeddings).

local encoder:   token embedding (padding row zero) + learned positions (fairseq LearnedPositionalEmbedding:
                 offset by pad_idx + 1, padding gets position pad_idx) -> LayerNorm -> dropout; no sqrt(D) scaling
context encoder: keep the visible tokens; no LayerNorm, no prenet (identity otherwise)
"""
from __future__ import annotations

import torch
from torch import nn

from model.config import TextEncoderConfig, TransformerConfig
from model.masking import MaskInfo, gather_tokens
from model.transformer import attention_mask


class TextEmbedding(nn.Module):
    def __init__(self, cfg: TextEncoderConfig, encoder_cfg: TransformerConfig):
        super().__init__()
        dim = encoder_cfg.embed_dim
        self.pad_idx = cfg.pad_idx
        self.max_positions = cfg.max_positions
        self.embed_tokens = nn.Embedding(cfg.vocab_size, dim, padding_idx=cfg.pad_idx)
        self.embed_positions = nn.Embedding(cfg.max_positions + cfg.pad_idx + 1, dim, padding_idx=cfg.pad_idx)
        self.layernorm_embedding = nn.LayerNorm(dim, eps=encoder_cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.embed_dropout)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T) -> embeddings (B, T, D) and padding mask (B, T), True = pad."""
        if tokens.shape[1] > self.max_positions:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds max_positions={self.max_positions}")
        padding_mask = tokens.eq(self.pad_idx)
        not_pad = (~padding_mask).long()
        # real tokens count up from pad_idx + 1 (left or right padding alike); pads sit at position pad_idx
        positions = torch.cumsum(not_pad, dim=1) * not_pad + self.pad_idx
        x = self.embed_tokens(tokens) + self.embed_positions(positions)
        return self.dropout(self.layernorm_embedding(x)), padding_mask


class TextContextEncoder(nn.Module):
    """Identity apart from keeping the visible tokens; text has no extra tokens, prenet or attention bias."""

    def __init__(self, cfg: TextEncoderConfig, encoder_cfg: TransformerConfig):
        super().__init__()

    def forward(
        self, x: torch.Tensor, keep: MaskInfo | None, padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if keep is not None:
            x = gather_tokens(x, keep.ids_keep)
            padding_mask = None if padding_mask is None else gather_tokens(padding_mask, keep.ids_keep)
        return x, padding_mask, attention_mask(padding_mask, None)
