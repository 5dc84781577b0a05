"""Masked language modelling baseline (RoBERTa: Liu et al., 2019, arXiv 1907.11692), following fairseq
MaskTokensDataset, RobertaLMHead and the masked_lm criterion, on the data2vec 2.0 text encoder.

One training step (`forward`), B sequences of T tokens, N selected tokens per sequence:
  1. selection: 15% of the tokens (`cfg.mask`, from model.masking.make_mask), never padding
  2. corruption: of the selected tokens 80% become <mask>, 10% a random token, 10% stay          (B, T)
  3. encoder on the whole corrupted sequence                                                     (B, T, D)
  4. LM head at the selected tokens: dense, GELU, LayerNorm, output layer tied to the token embedding (B, N, V)
  5. loss: cross-entropy against the original tokens, mean over the selected tokens

The encoder is data2vec 2.0's text encoder, which is RoBERTa's architecture. Differences from fairseq:
  * the selection count is exactly T - int(0.85 * T) per sequence (fairseq: int(0.15 * T + rand)).
  * the 80/10/10 split is drawn in the model from its RNG stream (fairseq draws it in the dataset), so the
    data loader only passes the selection mask.
  * random replacements are drawn from the ids >= num_special_tokens; fairseq excludes its first 4 specials
    but can draw <mask>, which is the last entry of its dictionary.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import Data2Vec2Config
from model.encoder import Encoder, bert_init
from model.masking import gather_tokens, masked_positions


def corrupt_tokens(
    tokens: torch.Tensor,
    selected: torch.Tensor,
    mask_idx: int,
    vocab_size: int,
    num_special: int,
    leave_unmasked_prob: float = 0.1,
    random_token_prob: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """BERT corruption of the selected tokens (B, T): <mask>, or with these probabilities a random id in
    [num_special, vocab_size) or the token itself (fairseq MaskTokensDataset's two coins)."""
    rand_or_keep_prob = leave_unmasked_prob + random_token_prob
    coin = torch.rand(tokens.shape, device=tokens.device, generator=generator)
    rand_or_keep = selected & (coin < rand_or_keep_prob)
    decision = torch.rand(tokens.shape, device=tokens.device, generator=generator)
    keep = rand_or_keep & (decision < leave_unmasked_prob / max(rand_or_keep_prob, 1e-12))
    random = rand_or_keep & ~keep
    random_ids = torch.randint(num_special, vocab_size, tokens.shape, device=tokens.device, generator=generator)
    out = torch.where(selected & ~rand_or_keep, torch.full_like(tokens, mask_idx), tokens)
    return torch.where(random, random_ids, out)


class LMHead(nn.Module):
    """RobertaLMHead: dense D -> D, GELU, LayerNorm, then the (tied) token embedding as output layer + bias."""

    def __init__(self, embed_dim: int, vocab_size: int, norm_eps: float):
        super().__init__()
        self.dense = nn.Linear(embed_dim, embed_dim)
        self.layer_norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor, embed_weight: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(F.gelu(self.dense(x)))
        return F.linear(x, embed_weight) + self.bias  # (..., V)


class MaskedLM(Encoder):
    pretraining_modules = ("lm_head",)

    def __init__(self, cfg: Data2Vec2Config):
        super().__init__(cfg)
        text = cfg.text
        if max(text.pad_idx, text.mask_idx) >= cfg.mlm.num_special_tokens:
            raise ValueError("pad and <mask> ids must be below mlm.num_special_tokens (random replacements skip them)")
        self.lm_head = LMHead(cfg.embed_dim, text.vocab_size, cfg.encoder.norm_eps)
        self.init_encoder_weights()
        bert_init(self.lm_head)  # fairseq init_bert_params on the whole RoBERTa model

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        cfg, tokens = self.cfg, batch["tokens"]  # (B, T)
        T = tokens.shape[1]
        keep = self.mask_info(batch, T)
        selected = keep.mask & tokens.ne(cfg.text.pad_idx)  # (B, T)
        corrupted = corrupt_tokens(tokens, selected, cfg.text.mask_idx, cfg.text.vocab_size,
                                   cfg.mlm.num_special_tokens, cfg.mlm.leave_unmasked_prob, cfg.mlm.random_token_prob)
        local, padding = self.local_features(corrupted)
        x, _ = self.encode(local, None, padding)  # (B, T, D): every token

        positions = masked_positions(selected, T - keep.num_keep)  # (B, N)
        weight = gather_tokens(selected, positions).float()  # (B, N): 0 for padding
        logits = self.lm_head(gather_tokens(x, positions), self.local_encoder.embed_tokens.weight)  # (B, N, V)
        target = gather_tokens(tokens, positions)  # the original tokens
        ce = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none")
        count = weight.sum().clamp_min(1)
        loss = (ce * weight.flatten()).sum() / count
        with torch.no_grad():
            accuracy = ((logits.argmax(-1) == target).float() * weight).sum() / count
        stats = {
            "loss_mlm": loss.detach(),
            "mlm_accuracy": accuracy,
            "masked_frac": 1 - keep.num_keep / T,
            "sample_size": weight.sum().detach(),
        }
        return loss, stats
