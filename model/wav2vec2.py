"""wav2vec 2.0 baseline: "wav2vec 2.0: A Framework for Self-Supervised Learning of Speech Representations"
(Baevski et al., 2020, arXiv 2006.11477), following fairseq models/wav2vec/wav2vec2.py and
criterions/wav2vec_criterion.py, on the data2vec 2.0 speech encoder.

One training step (`forward`), B utterances, T frames, N masked frames per utterance:
  1. CNN features (B, C, T), gradient scaled by feature_grad_mult; feature penalty = mean of their squares
  2. LayerNorm -> unmasked features (B, T, C), the quantizer's input (after dropout_features)
  3. projection to D, dropout_input; masked frames (spans) replaced by a learned mask embedding     (B, T, D)
  4. context encoder (positional conv, ALiBi, LayerNorm) and blocks on every frame            (B, T, D)
  5. predictions: final_proj of the outputs at the masked frames                           (B, N, F)
     targets: quantized unmasked features at the masked frames, project_q                  (B, N, F)
     distractors: K targets of other masked frames of the same utterance                   (B, N, K, F)
  6. loss = cross-entropy of cos(pred, [target; distractors]) / 0.1 with the target first, mean over masked
     frames; + 0.1 x (G*V - perplexity) / (G*V); + 10 x feature penalty

The Gumbel temperature anneals in `ema_step(update)`, which the trainer calls after every optimizer step.

Differences from wav2vec 2.0, and why:
  * the encoder is data2vec 2.0's (layer-norm CNN, 5-layer grouped positional conv + ALiBi, post-LN blocks)
    so that the benchmark compares equal encoders; wav2vec 2.0 base uses a group-norm CNN and one
    128-wide weight-normed positional conv.
  * masks come from `model.masking.make_mask`: the same number of span starts as fairseq (0.065 * T, spans of
    10) with the masked count then made exactly int(0.49 * T), the fraction fairseq's overlapping spans
    cover; fairseq's compute_mask_indices trims every row to the batch's smallest count instead.
  * distractors are drawn with the same rule (uniform with replacement over the utterance's other masked
    frames) but from the model's RNG stream in one call; padded frames are never drawn and carry no loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import Data2Vec2Config
from model.encoder import Encoder
from model.masking import gather_tokens, masked_positions
from model.quantizer import GumbelVectorQuantizer, diversity_loss


class GradMultiply(torch.autograd.Function):
    """Identity forward; the backward gradient times `scale` (fairseq GradMultiply)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def sample_negatives(num_valid: torch.Tensor, num_slots: int, num_negatives: int) -> torch.Tensor:
    """Distractor slots (B, N, K): for slot i of row b, K slots drawn uniformly from {0..n_b-1} minus {i}.

    num_valid (B,): n_b, the masked frames of utterance b (slots 0..n_b-1). fairseq's rule: draw from
    [0, n - 1) and shift draws >= i up by one, so a frame is never its own distractor.
    """
    B = num_valid.shape[0]
    high = (num_valid - 1).clamp_min(1)[:, None, None]  # (B, 1, 1): draws in [0, high)
    draws = (torch.rand(B, num_slots, num_negatives, device=num_valid.device) * high).long()
    draws = torch.minimum(draws, high - 1)  # float rounding must not reach high
    slot = torch.arange(num_slots, device=num_valid.device)[None, :, None]
    return draws + (draws >= slot).long()


def contrastive_logits(
    pred: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor, logit_temp: float
) -> torch.Tensor:
    """Cosine similarities / logit_temp, fp32, target first: pred, targets (B, N, F), negatives (B, N, K, F)
    -> (B, N, 1 + K). A distractor identical to the target (same codevector) gets -inf (fairseq neg_is_pos)."""
    candidates = torch.cat([targets.unsqueeze(2), negatives], dim=2).float()  # (B, N, 1 + K, F)
    logits = F.cosine_similarity(pred.float().unsqueeze(2), candidates, dim=-1) / logit_temp
    neg_is_pos = (targets.unsqueeze(2) == negatives).all(-1)  # (B, N, K)
    return torch.cat([logits[..., :1], logits[..., 1:].masked_fill(neg_is_pos, float("-inf"))], dim=-1)


def contrastive_loss(logits: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy with class 0, accuracy) over the slots with weight 1: logits (B, N, 1 + K), weight (B, N).

    Accuracy as fairseq: the target has the largest logit and not also the smallest (all equal).
    """
    flat = logits.reshape(-1, logits.shape[-1])
    w = weight.reshape(-1).to(flat.dtype)
    ce = F.cross_entropy(flat, torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device), reduction="none")
    count = w.sum().clamp_min(1)
    with torch.no_grad():
        correct = (flat.argmax(-1) == 0) & (flat.argmin(-1) != 0)
        accuracy = (correct.to(w.dtype) * w).sum() / count
    return (ce * w).sum() / count, accuracy


class Wav2Vec2(Encoder):
    pretraining_modules = ("quantizer", "project_q", "final_proj")

    def __init__(self, cfg: Data2Vec2Config):
        super().__init__(cfg)
        w = cfg.wav2vec2
        channels = cfg.speech.conv_feature_layers[-1][0]  # C, the CNN width
        vq_dim = w.latent_dim or w.final_dim
        self.mask_embedding = nn.Parameter(torch.empty(cfg.embed_dim).uniform_())  # fairseq mask_emb
        self.dropout_input = nn.Dropout(w.dropout_input)
        self.dropout_features = nn.Dropout(w.dropout_features)
        self.init_encoder_weights()  # the encoder as data2vec 2.0 (BERT init); the parts below keep their own
        self.quantizer = GumbelVectorQuantizer(channels, w.latent_vars, w.latent_groups, vq_dim, w.latent_temp)
        self.project_q = nn.Linear(vq_dim, w.final_dim)  # PyTorch default init, as fairseq
        self.final_proj = nn.Linear(cfg.embed_dim, w.final_dim)

    def ema_step(self, update: int) -> float:
        """After every optimizer step: anneal the Gumbel temperature. No teacher: returns 1.0."""
        if self.quantizer is not None:
            self.quantizer.set_num_updates(update)
        return super().ema_step(update)

    def features(
        self, audio: torch.Tensor, padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """audio (B, S) -> projected features (B, T, D), unmasked features (B, T, C), frame padding, penalty."""
        enc = self.local_encoder
        cnn = enc.feature_extractor(audio)  # (B, C, T)
        if self.cfg.wav2vec2.feature_grad_mult != 1.0:
            cnn = GradMultiply.apply(cnn, self.cfg.wav2vec2.feature_grad_mult)
        penalty = cnn.float().pow(2).mean()
        unmasked = enc.layer_norm(cnn.transpose(1, 2))  # (B, T, C)
        x = self.dropout_input(enc.proj(unmasked))  # (B, T, D)
        frame_padding = None
        if padding_mask is not None:
            lengths = enc.frame_lengths((~padding_mask).sum(-1))
            frame_padding = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        return x, self.dropout_features(unmasked), frame_padding, penalty

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        w = self.cfg.wav2vec2
        x, unmasked, padding, penalty = self.features(batch["audio"], batch.get("padding_mask"))
        B, T, _ = x.shape
        keep = self.mask_info(batch, T)
        mask = keep.mask  # (B, T)
        N = T - keep.num_keep  # masked frames per utterance

        x = torch.where(mask.unsqueeze(-1), self.mask_embedding.to(x.dtype), x)
        x, _ = self.encode(x, None, padding)  # every frame: (B, T, D)

        # the masked, non-padded frames of each utterance first (slots 0..n_b-1), in time order
        selected = mask if padding is None else mask & ~padding
        positions = masked_positions(selected, N)  # (B, N)
        valid = gather_tokens(selected, positions)  # (B, N)
        valid = valid & (valid.sum(1, keepdim=True) > 1)  # an utterance needs two masked frames for a distractor
        pred = self.final_proj(gather_tokens(x, positions))  # (B, N, F)
        q = self.quantizer(gather_tokens(unmasked, positions), valid)
        targets = self.project_q(q["x"])  # (B, N, F)
        neg_slots = sample_negatives(valid.sum(1), N, w.num_negatives)  # (B, N, K)
        negatives = gather_tokens(targets, neg_slots.reshape(B, -1)).reshape(B, N, w.num_negatives, -1)

        logits = contrastive_logits(pred, targets, negatives, w.logit_temp)  # (B, N, 1 + K)
        contrastive, accuracy = contrastive_loss(logits, valid)
        num_vars = w.latent_vars * w.latent_groups
        diversity = w.diversity_weight * diversity_loss(q["prob_perplexity"], num_vars)
        feature_penalty = w.feature_penalty_weight * penalty
        loss = contrastive + diversity + feature_penalty
        stats = {
            "loss_contrastive": contrastive.detach(),
            "loss_diversity": diversity.detach(),
            "loss_features": feature_penalty.detach(),
            "accuracy": accuracy,
            "code_perplexity": q["code_perplexity"],
            "prob_perplexity": q["prob_perplexity"].detach(),
            "temp": self.quantizer.temp.detach().clone(),
            "masked_frac": N / T,
            "sample_size": valid.sum().detach(),
        }
        return loss, stats
