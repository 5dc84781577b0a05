"""What the baselines (MAE, wav2vec 2.0, masked LM) share with data2vec 2.0: the same student encoder under the
same parameter names, and the trainer's interface without a teacher.

The encoder is built by the same function as `Data2Vec2`'s, so `local_encoder.*`, `context_encoder.*`,
`blocks.*` (and `norm.*` for pre-LN models) have identical names and shapes for a (modality, preset), and a
fine-tuning run loads any method's checkpoint the same way:

    model = build_model(config_from_dict(ckpt["config"]["model"]))
    model.load_state_dict(ckpt["student"]); model.remove_pretraining_modules()
    model.extract_features(inputs, padding_mask=None, layer=None)  # {"x", "cls", "padding_mask"}

Interface (as `Data2Vec2`): `forward(batch) -> (loss, stats)`, `teacher` (None), `ema_step(update) -> 1.0`
after every optimizer step (wav2vec 2.0 anneals its Gumbel temperature there), `extract_features`,
`remove_pretraining_modules`. Masks come as `batch["mask"]` (B, T) from `model.masking.make_mask` (clone
batch 1); without one the model draws them from (cfg.seed, num_updates, position in the batch).
"""
from __future__ import annotations

import torch
from torch import nn

from model.config import Data2Vec2Config
from model.data2vec2 import INPUT_KEYS, bert_init, build_modality_encoders, draw_masks, encoder_features, local_features
from model.masking import MaskInfo, num_masked
from model.transformer import forward_blocks, make_blocks


def masked_positions(selected: torch.Tensor, count: int) -> torch.Tensor:
    """(B, count) positions of the selected tokens of each row, ascending, selected (B, T) bool.

    Rows with fewer than `count` selected tokens are filled with unselected positions (give them weight 0).
    A static `count` keeps the shapes independent of the data (torch.compile, the meta device).
    """
    return torch.argsort((~selected).to(torch.int8), dim=1, stable=True)[:, :count]


class BaselineModel(nn.Module):
    """The data2vec 2.0 student encoder for cfg.modality; subclasses add a head and `forward`."""

    pretraining_modules: tuple[str, ...] = ()  # dropped by remove_pretraining_modules

    def __init__(self, cfg: Data2Vec2Config):
        super().__init__()
        self.cfg = cfg
        depth = cfg.encoder.depth
        self.local_encoder, self.context_encoder = build_modality_encoders(cfg)
        start, end = cfg.encoder.start_drop_path_rate, cfg.encoder.end_drop_path_rate
        drop_path = [start + (end - start) * i / max(depth - 1, 1) for i in range(depth)]  # linear ramp
        self.blocks = make_blocks(cfg.encoder, depth, drop_path)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.encoder.norm_eps) if cfg.encoder.layer_norm_first else None
        self.layerdrop = cfg.encoder.layerdrop
        self.teacher = None
        self.num_updates = 0
        self._batches_since_update = 0

    def init_encoder_weights(self) -> None:
        """data2vec 2.0's encoder init: BERT init; the patch-embed conv keeps its xavier init, the audio CNN its
        kaiming init, and the audio projection goes back to the PyTorch default (fairseq)."""
        for part in (self.local_encoder, self.context_encoder, self.blocks, self.norm):
            if part is not None:
                bert_init(part)
        if self.cfg.modality == "speech":
            self.local_encoder.proj.reset_parameters()

    # ------------------------------------------------------------------------------------------------
    # trainer interface

    def ema_step(self, update: int) -> float:
        """Called after every optimizer step; update = updates done so far. No teacher: returns 1.0."""
        self.num_updates = update
        self._batches_since_update = 0
        return 1.0

    def reset_teacher(self) -> None:
        """No teacher to reset (kept for the same interface as Data2Vec2)."""

    def remove_pretraining_modules(self) -> None:
        """Drop the head (fine-tuning keeps the encoder only)."""
        for name in self.pretraining_modules:
            setattr(self, name, None)

    # ------------------------------------------------------------------------------------------------
    # encoder

    def source(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch[INPUT_KEYS[self.cfg.modality]]

    def local_features(
        self, source: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw input -> local features (B, T, D) and padding mask (B, T) (True = pad) or None."""
        return local_features(self, source, padding_mask)

    def encode(
        self, local: torch.Tensor, keep: MaskInfo | None, padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Local features (B, T, D) -> encoder output (B, extra + T_keep, D) and its padding mask."""
        x, padding_mask, attn_mask = self.context_encoder(local, keep, padding_mask)
        x, _ = forward_blocks(self.blocks, x, attn_mask, layerdrop=self.layerdrop)
        return (x if self.norm is None else self.norm(x)), padding_mask

    def mask_info(self, batch: dict[str, torch.Tensor], num_tokens: int) -> MaskInfo:
        """batch["mask"] (B, T), True = masked, or masks drawn here; checked for shape and per-row count."""
        source = self.source(batch)
        mask = batch.get("mask")
        if mask is None:
            mask = self._draw_masks(source.shape[0], source.shape[-1])
        if tuple(mask.shape) != (source.shape[0], num_tokens):
            raise ValueError(f"mask must be (B, T) = {(source.shape[0], num_tokens)}, got {tuple(mask.shape)}")
        return MaskInfo.from_mask(mask.to(source.device), num_masked(self.cfg.mask, num_tokens))

    def _draw_masks(self, batch_size: int, input_length: int) -> torch.Tensor:
        return draw_masks(self, batch_size, input_length)

    def extract_features(
        self, inputs: torch.Tensor, padding_mask: torch.Tensor | None = None, layer: int | None = None
    ) -> dict[str, torch.Tensor | None]:
        """Unmasked encoder features for fine-tuning, exactly as Data2Vec2.extract_features."""
        return encoder_features(self, inputs, padding_mask, layer)
