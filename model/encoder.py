"""The encoder every pretraining method shares, and the interface a trainer and a fine-tuning run use.

data2vec 2.0 (fairseq examples/data2vec/models/data2vec2.py `Data2VecMultiModel`) splits the encoder into
  local encoder     the modality's feature extractor, run once per sample   raw input -> (B, T, D)
                    (fairseq modalities/{images,audio,text}.py `local_encoder`)
  context encoder   positions, CLS, padding, the visible-token gather, a LayerNorm and the prenet blocks
                    (fairseq `ModalitySpecificEncoder.contextualized_features`)
  blocks            the main transformer blocks                              (B, [1+] T', D)
  norm              a final LayerNorm for pre-LN stacks (None for post-LN, every released config)

`Encoder` builds these parts under the same parameter names (`local_encoder.*`, `context_encoder.*`, `blocks.*`,
`norm.*`) for every method, so a fine-tuning run loads any method's checkpoint the same way:

    model = build_model(config_from_dict(ckpt["config"]["model"]))
    model.load_state_dict(ckpt["student"]); model.remove_pretraining_modules()
    model.extract_features(inputs, padding_mask=None, layer=None)  # {"x", "cls", "padding_mask"}

A method subclasses it (`Data2Vec2`, `MAE`, `Wav2Vec2`, `MaskedLM`), adds its head and writes `forward(batch) ->
(loss, stats)`. The rest of the interface has defaults for methods without a teacher: `teacher` (None),
`ema_step(update) -> 1.0` after every optimizer step, `reset_teacher()`, `remove_pretraining_modules()` (drops
the modules named in `pretraining_modules` and the teacher). Masks come as `batch["mask"]` (B*clone_batch, T) from
`model.masking.make_mask`; without one the model draws them from (cfg.seed, num_updates, position in the batch).
"""
from __future__ import annotations

import torch
from torch import nn

from model.config import Data2Vec2Config
from model.image_encoder import ImageContextEncoder, PatchEmbed
from model.masking import MaskInfo, make_mask, num_masked
from model.speech_encoder import SpeechContextEncoder, SpeechLocalEncoder
from model.text_encoder import TextContextEncoder, TextEmbedding
from model.transformer import forward_blocks, make_blocks

INPUT_KEYS = {"image": "image", "speech": "audio", "text": "tokens"}  # the batch key of each modality's input


def build_modality_encoders(cfg: Data2Vec2Config) -> tuple[nn.Module, nn.Module]:
    """(local encoder, context encoder) for cfg.modality."""
    if cfg.modality == "image":
        return PatchEmbed(cfg.image, cfg.embed_dim), ImageContextEncoder(cfg.image, cfg.encoder)
    if cfg.modality == "speech":
        return SpeechLocalEncoder(cfg.speech, cfg.embed_dim), SpeechContextEncoder(cfg.speech, cfg.encoder)
    return TextEmbedding(cfg.text, cfg.encoder), TextContextEncoder(cfg.text, cfg.encoder)


def bert_init(module: nn.Module) -> None:
    """fairseq init_bert_params on Linear and Embedding: N(0, 0.02), zero bias, zero padding row."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                nn.init.zeros_(m.weight[m.padding_idx])


class Encoder(nn.Module):
    """The shared encoder of cfg.modality; subclasses add a head and `forward(batch) -> (loss, stats)`."""

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
        self.teacher: nn.Module | None = None  # an EMA teacher is never a registered submodule (see Data2Vec2)
        self.num_updates = 0
        self._batches_since_update = 0  # for masks drawn without a precomputed batch["mask"]

    def encoder_parts(self) -> list[nn.Module]:
        """The encoder's modules, bottom-up (what every method shares and fine-tuning keeps)."""
        return [m for m in (self.local_encoder, self.context_encoder, self.blocks, self.norm) if m is not None]

    def init_encoder_weights(self) -> None:
        """data2vec 2.0's encoder init: BERT init; the patch-embed conv keeps its xavier init, the audio CNN its
        kaiming init, and the audio projection goes back to the PyTorch default (fairseq)."""
        for part in self.encoder_parts():
            bert_init(part)
        if self.cfg.modality == "speech":
            self.local_encoder.proj.reset_parameters()

    # ------------------------------------------------------------------------------------------------
    # the forward path

    def source(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The modality's raw input: images (B, 3, H, W), audio (B, S) or tokens (B, T)."""
        return batch[INPUT_KEYS[self.cfg.modality]]

    def local_features(
        self, source: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw input -> local features (B, T, D) and padding mask (B, T) (True = pad) or None.

        Only speech takes a sample padding_mask (B, S); text derives its padding from the pad token.
        """
        if self.cfg.modality == "speech":
            return self.local_encoder(source, padding_mask)
        if padding_mask is not None:
            raise ValueError(f"{self.cfg.modality} takes no padding_mask (text derives it from pad tokens)")
        return self.local_encoder(source)

    def encode(
        self,
        local: torch.Tensor,
        keep: MaskInfo | None = None,
        padding_mask: torch.Tensor | None = None,
        num_blocks: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Local features (N, T, D) -> encoder output (N, extra + T_keep, D) and its padding mask.

        keep: the visible tokens to encode (None = all); extra: the CLS token of images.
        num_blocks: run only the first main blocks (None = all); the final norm follows the last block only.
        """
        x, padding_mask, attn_mask = self.context_encoder(local, keep, padding_mask)
        depth = len(self.blocks)
        num_blocks = depth if num_blocks is None else num_blocks
        x, _ = forward_blocks(self.blocks, x, attn_mask, layerdrop=self.layerdrop, num_blocks=num_blocks)
        if self.norm is not None and num_blocks == depth:
            x = self.norm(x)
        return x, padding_mask

    def extract_features(
        self, inputs: torch.Tensor, padding_mask: torch.Tensor | None = None, layer: int | None = None
    ) -> dict[str, torch.Tensor | None]:
        """Unmasked encoder features, for fine-tuning and probes.

        inputs: images (B, 3, H, W), audio (B, S) with optional padding_mask (B, S), or tokens (B, T).
        layer: index of the main block whose output to return (negative counts from the end); None = last.
        Returns x (B, T, D) per patch/frame/token (CLS removed), cls (B, D) or None, padding_mask (B, T) or None.
        """
        local, padding_mask = self.local_features(inputs, padding_mask)
        num_blocks = None if layer is None else layer % len(self.blocks) + 1
        x, padding_mask = self.encode(local, None, padding_mask, num_blocks)
        extra = self.cfg.num_extra_tokens
        return {"x": x[:, extra:], "cls": x[:, 0] if extra else None, "padding_mask": padding_mask}

    # ------------------------------------------------------------------------------------------------
    # masks

    def draw_masks(self, batch_size: int, input_length: int) -> torch.Tensor:
        """Masks for a batch that came without them (standalone use), (batch_size * clone_batch, T).

        ids count through the batches seen since the last optimizer step, so accumulation micro-batches get
        different masks and a resumed run (same num_updates) the same ones.
        """
        ids = torch.arange(batch_size) + batch_size * self._batches_since_update
        self._batches_since_update += 1
        return make_mask(self.cfg, self.cfg.seed, self.num_updates, ids, input_length)

    def mask_info(self, batch: dict[str, torch.Tensor], num_tokens: int) -> MaskInfo:
        """batch["mask"] (B*clone_batch, T), True = masked, or masks drawn here; checked for shape and count."""
        source = self.source(batch)
        rows = source.shape[0] * self.cfg.mask.clone_batch
        mask = batch.get("mask")
        if mask is None:
            mask = self.draw_masks(source.shape[0], source.shape[-1])
        if tuple(mask.shape) != (rows, num_tokens):
            raise ValueError(f"mask must be (B*clone_batch, T) = {(rows, num_tokens)}, got {tuple(mask.shape)}")
        return MaskInfo.from_mask(mask.to(source.device), num_masked(self.cfg.mask, num_tokens))

    # ------------------------------------------------------------------------------------------------
    # trainer interface (methods with a teacher override the first two)

    def ema_step(self, update: int) -> float:
        """Called after every optimizer step; update = updates done so far. No teacher: returns 1.0."""
        self.num_updates = update
        self._batches_since_update = 0
        return 1.0

    def reset_teacher(self) -> None:
        """No teacher to reset (kept for the same interface as Data2Vec2)."""

    def remove_pretraining_modules(self) -> None:
        """Drop the teacher and the head (fine-tuning keeps the encoder only)."""
        for name in self.pretraining_modules:
            setattr(self, name, None)
        object.__setattr__(self, "teacher", None)
