"""Fine-tuning models: a task head on a data2vec 2.0 encoder (pretrained or freshly initialized). Pure PyTorch,
single device, no I/O; like the pretraining models, `forward(batch)` returns `(loss, stats)` and DDP, AMP and
the optimizer are applied from outside (pipeline/finetune/stage.py). Recipes follow fairseq's data2vec 2.0
fine-tuning code:

  ImageClassifier  patch tokens (B, L, D) -> mean over patches (CLS dropped) -> fc_norm LayerNorm -> Linear
                   (fairseq examples/data2vec/models/mae_image_classification.py)
                   linear_probe=True: frozen encoder in eval mode, BatchNorm1d (no affine) -> Linear (MAE linprobe)
  SpeechCTC        frames (B, T, D) -> dropout -> Linear(D -> letters), CTC loss with blank 0 (fairseq
                   models/wav2vec/wav2vec2_asr.py `Wav2VecCtc`); the conv feature extractor is frozen; time
                   masks (noise) and channel masks (zeros) on the local features while training;
                   `freeze_encoder` trains the head alone (freeze_finetune_updates)
  TextClassifier   the <s> token (B, D) -> dropout -> dense -> tanh -> dropout -> out_proj (fairseq
                   examples/data2vec/models/data2vec_text_classification.py, RoBERTa's classification head)

Encoder interface used (model/encoder.py `Encoder`): `extract_features(inputs, padding_mask=None)`,
`local_features`, `encode`, `context_encoder.blocks`, `blocks`, and `remove_pretraining_modules()` already called.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.transformer import DropPath


def encoder_blocks(encoder: nn.Module) -> list[nn.Module]:
    """Every transformer block bottom-up: the modality prenet (context encoder) blocks, then the main blocks."""
    return list(getattr(encoder.context_encoder, "blocks", None) or []) + list(encoder.blocks)


def set_drop_path(encoder: nn.Module, rate: float) -> None:
    """Stochastic depth rising linearly from 0 at the first block to `rate` at the last, over prenet + main
    blocks (BEiT/MAE fine-tuning, timm `drop_path_rate`). Not a parameter: the checkpoint loads unchanged."""
    blocks = encoder_blocks(encoder)
    for i, block in enumerate(blocks):
        block.drop_path = DropPath(rate * i / max(1, len(blocks) - 1))


def _trunc_normal_head(linear: nn.Linear, std: float = 0.02) -> nn.Linear:
    nn.init.trunc_normal_(linear.weight, std=std)
    nn.init.zeros_(linear.bias)
    return linear


def _classification_stats(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"accuracy": (logits.argmax(-1) == labels).float().mean().detach()}


class ImageClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int, linear_probe: bool = False, label_smoothing: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.linear_probe = linear_probe
        self.label_smoothing = label_smoothing
        if getattr(encoder, "mask_embedding", None) is not None:
            encoder.mask_embedding = None  # data2vec 1.0's learned mask vector: nothing is masked here (DDP needs every parameter used)
        dim = encoder.cfg.embed_dim
        if linear_probe:
            encoder.requires_grad_(False)
            # MAE linear probing: BatchNorm without affine in front of the linear layer (features are not normalized)
            self.fc_norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        else:
            self.fc_norm = nn.LayerNorm(dim, eps=1e-6)  # post-LN encoders have no final norm to pool after
        self.head = _trunc_normal_head(nn.Linear(dim, num_classes))

    def train(self, mode: bool = True) -> "ImageClassifier":
        super().train(mode)
        if self.linear_probe:
            self.encoder.eval()  # frozen features: no drop path or dropout either
        return self

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> class scores (B, C)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.linear_probe):
            x = self.encoder.extract_features(images)["x"]  # (B, L, D), CLS removed
        return self.head(self.fc_norm(x.mean(1)))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.logits(batch["image"])
        target = batch["target"]  # (B,) class ids, or (B, C) mixed soft targets (label smoothing folded in)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing if target.ndim == 1 else 0.0)
        stats = _classification_stats(logits, target if target.ndim == 1 else target.argmax(-1))
        return loss, stats


class TextClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int, pooler_dropout: float = 0.0):
        super().__init__()
        self.encoder = encoder
        dim = encoder.cfg.embed_dim
        # fairseq RobertaClassificationHead: dropout -> dense -> tanh -> dropout -> out_proj
        self.dropout = nn.Dropout(pooler_dropout)
        self.dense = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, num_classes)
        for linear in (self.dense, self.out_proj):  # BERT init, as the rest of the encoder
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) starting with <s>, padded with pad_idx -> class scores (B, C)."""
        x = self.encoder.extract_features(tokens)["x"][:, 0]  # the <s> token
        x = self.dropout(torch.tanh(self.dense(self.dropout(x))))
        return self.out_proj(x)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.logits(batch["tokens"])
        loss = F.cross_entropy(logits.float(), batch["target"])
        return loss, _classification_stats(logits, batch["target"])


# ----------------------------------------------------------------------------------------------------
# speech: CTC


def span_mask(rng: np.random.Generator, length: int, prob: float, span: int, min_spans: int = 0) -> np.ndarray:
    """wav2vec 2.0 `compute_mask_indices` for one row: int(prob * length / span + U[0,1)) spans (at least
    `min_spans`) of `span` cells with uniform starts in [0, length - span]; spans may overlap. (length,) bool."""
    mask = np.zeros(length, dtype=bool)
    if prob <= 0 or length <= 0:
        return mask
    span = min(span, length)
    count = max(min_spans, int(prob * length / span + rng.random()))
    for start in rng.integers(0, length - span + 1, size=count):
        mask[start : start + span] = True
    return mask


def finetune_masks(rng: np.random.Generator, frames: int, valid_frames: int, channels: int, mask_prob: float,
                   mask_length: int, channel_prob: float, channel_length: int) -> tuple[np.ndarray, np.ndarray]:
    """One utterance's fine-tuning masks: time (frames,) over its real frames only, channel (channels,).
    fairseq draws 2 time spans at least (`mask_min_masks`); the channel mask has no minimum."""
    time = np.zeros(frames, dtype=bool)
    time[:valid_frames] = span_mask(rng, valid_frames, mask_prob, mask_length, min_spans=2 if mask_prob > 0 else 0)
    return time, span_mask(rng, channels, channel_prob, channel_length)


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor | None = None, blank: int = 0) -> list[list[int]]:
    """CTC best path: argmax per frame, merge repeats, drop blanks. log_probs (B, T, V), lengths (B,) frames."""
    best = log_probs.argmax(-1).cpu()
    out = []
    for row, path in enumerate(best):
        if lengths is not None:
            path = path[: int(lengths[row])]
        merged = torch.unique_consecutive(path)
        out.append([int(t) for t in merged if t != blank])
    return out


class SpeechCTC(nn.Module):
    def __init__(self, encoder: nn.Module, vocab_size: int, blank: int = 0, final_dropout: float = 0.0,
                 mask_noise_std: float = 0.01):
        super().__init__()
        self.encoder = encoder
        self.blank = blank
        self.mask_noise_std = mask_noise_std
        self.freeze_encoder = False  # set by the trainer for the first freeze_finetune_updates
        # feature_grad_mult 0: the conv feature extractor never trains (its LayerNorm + projection do)
        encoder.local_encoder.feature_extractor.requires_grad_(False)
        self.dropout = nn.Dropout(final_dropout)
        self.proj = nn.Linear(encoder.cfg.embed_dim, vocab_size)
        nn.init.xavier_uniform_(self.proj.weight)  # fairseq Wav2VecCtc: Linear(...) helper
        nn.init.zeros_(self.proj.bias)

    def features(self, audio: torch.Tensor, padding_mask: torch.Tensor | None = None,
                 time_mask: torch.Tensor | None = None, channel_mask: torch.Tensor | None = None):
        """audio (B, S), padding_mask (B, S) -> frames (B, T, D) and frame padding (B, T) or None.

        With masks (training): masked frames of the local features become the encoder's learned mask vector where
        it has one (data2vec 1.0, wav2vec 2.0: fairseq fine-tunes with its mask_emb), else N(0, mask_noise_std^2)
        noise (data2vec 2.0 has none); masked channels become zero, before the context encoder, so the positional conv sees the masked sequence; otherwise
        this is the encoder's `extract_features`.
        """
        enc = self.encoder
        if time_mask is None and channel_mask is None:
            out = enc.extract_features(audio, padding_mask)
            return out["x"], out["padding_mask"]
        x, frame_padding = enc.local_features(audio, padding_mask)  # (B, T, D)
        if time_mask is not None:
            mask_vector = getattr(enc, "mask_embedding", None)
            fill = torch.randn_like(x) * self.mask_noise_std if mask_vector is None else mask_vector.to(x.dtype)
            x = torch.where(time_mask[:, : x.shape[1], None], fill, x)
        if channel_mask is not None:
            x = x.masked_fill(channel_mask[:, None, :], 0.0)
        return enc.encode(x, None, frame_padding)

    def log_probs(self, batch: dict[str, torch.Tensor], masks: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame log-probabilities (B, T, V) in fp32 and the number of real frames per row (B,)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            x, frame_padding = self.features(batch["audio"], batch.get("padding_mask"),
                                             batch.get("time_mask") if masks else None,
                                             batch.get("channel_mask") if masks else None)
        logits = self.proj(self.dropout(x)).float()
        lengths = (torch.full(x.shape[:1], x.shape[1], device=x.device) if frame_padding is None
                   else (~frame_padding).sum(-1))
        return F.log_softmax(logits, dim=-1), lengths

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        log_probs, lengths = self.log_probs(batch, masks=self.training)
        # zero_infinity: an utterance with more letters than frames contributes 0 instead of inf;
        # sentence_avg: the summed loss is divided by the number of utterances. Every target id must be below
        # the output size (an out-of-range id makes the CPU kernel read garbage and return NaN gradients).
        loss = F.ctc_loss(log_probs.transpose(0, 1), batch["targets"], lengths, batch["target_lengths"],
                          blank=self.blank, reduction="sum", zero_infinity=True) / log_probs.shape[0]
        return loss, {"frames": lengths.float().mean().detach()}
