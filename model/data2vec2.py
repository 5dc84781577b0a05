"""data2vec 2.0: "Efficient Self-supervised Learning with Contextualized Target Representations for Vision,
Speech and Language" (Baevski et al., 2022, arXiv 2212.07525), following the official fairseq code
(examples/data2vec/models/data2vec2.py). data2vec 1.0 (arXiv 2202.03555) is a configuration of the same parts.

One training step (`forward`), in the paper's terms:
  1. local features: the modality's local encoder runs once per sample             (B, T, D)
  2. clone batch: M masked copies of every sample, each with its own mask           (B*M, T, D)
     (images: an inverse block mask, the blocks chosen are the ones kept)
  3. student: encodes only the visible tokens (+ CLS for images)                    (B*M, [1+] T_keep, D)
  4. conv decoder: visible outputs + N(0, 0.01^2) noise tokens at the masked places (B*M, T, D)
  5. teacher (EMA, eval mode, no grad): the unmasked sample, once; top-K targets     (B, T, D)
  6. loss: L2 at masked positions, repeated targets, times 1/sqrt(D) (text: 1); plus the image CLS term

The encoder and the trainer interface are model/encoder.py's `Encoder`; the EMA teacher's parts, update and
decay schedule are model/ema.py. Using the model from a trainer (single-device code):
  * optimizer over `model.parameters()`: the student only. The teacher is `model.teacher`, deliberately not a
    registered submodule, so it is outside `parameters()`, `state_dict()`, `train()` and DDP; `model.to()`
    moves it along. Checkpoint it separately: `model.teacher.state_dict()`.
  * DDP: wrap the whole model, `DDP(model)`; only the student's parameters are seen and synchronized. Then
    `model.reset_teacher()` (or build with the same seed on every rank). Use `find_unused_parameters=True`
    when `cfg.encoder.layerdrop > 0` (speech base).
  * after every optimizer step: `model.ema_step(update)` (through `ddp.module`), update = updates done so far.
  * masks: pass `batch["mask"]` from `model.masking.make_mask` computed in loader workers; without one the
    model draws masks itself from (cfg.seed, num_updates, position in the batch).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import Data2Vec2Config
from model.decoder import build_decoder
from model.ema import ema_decay_at, ema_update, make_teacher
from model.encoder import Encoder, bert_init
from model.masking import MaskInfo
from model.transformer import forward_blocks


def instance_norm(x: torch.Tensor, padding_mask: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Normalize every channel of every sample over time/patches: x (B, T, C) -> (B, T, C), fp32.

    Without padding this is F.instance_norm on (B, C, T) (biased variance, no affine). Padded positions are
    left out of the statistics (fairseq includes them; its pretraining batches have no padding).
    """
    x = x.float()
    if padding_mask is None:
        return F.instance_norm(x.transpose(1, 2), eps=eps).transpose(1, 2)
    valid = (~padding_mask).unsqueeze(-1).float()  # (B, T, 1)
    count = valid.sum(1, keepdim=True).clamp_min(1)
    mean = (x * valid).sum(1, keepdim=True) / count
    var = ((x - mean) ** 2 * valid).sum(1, keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + eps)


def token_std(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Std over the selected tokens, averaged over channels (fairseq `compute_var`): x (N, T, C), weight (N, T)."""
    x, w = x.detach().float(), weight.float().unsqueeze(-1)
    n = w.sum()
    mean = (x * w).sum((0, 1)) / n
    var = ((x - mean) ** 2 * w).sum((0, 1)) / (n - 1).clamp_min(1)
    return torch.sqrt(var + 1e-6).mean()


class Data2Vec2(Encoder):
    pretraining_modules = ("decoder",)

    def __init__(self, cfg: Data2Vec2Config):
        super().__init__(cfg)  # the student's encoder: local encoder, context encoder, blocks, norm
        grid = (cfg.image.grid_size, cfg.image.grid_size) if cfg.modality == "image" else None
        self.decoder = build_decoder(cfg.decoder, cfg.embed_dim, grid)
        # data2vec 1.0: masked local features are replaced by a learned vector (text uses the <mask> token)
        self.mask_embedding = None
        if not cfg.remove_masked and cfg.modality != "text":
            self.mask_embedding = nn.Parameter(torch.empty(cfg.embed_dim).uniform_())
        self._init_weights()
        # teacher: EMA copy of the parts in cfg.ema_scope, stored outside the registered modules (model/ema.py)
        object.__setattr__(self, "teacher", make_teacher(self, cfg.ema_scope))
        # the decay of the latest ema_step as a tensor, for the stats: forward reads no per-update Python number,
        # which torch.compile would guard on and recompile for at every update
        self.register_buffer("ema_decay_now", torch.tensor(self.ema_decay_at(0)), persistent=False)

    def _init_weights(self) -> None:
        # BERT init (fairseq init_bert_params) for Linear and Embedding; the patch-embed conv keeps its
        # xavier init, the audio CNN its kaiming init, the other convs PyTorch defaults; then the decoder and
        # audio projection Linear layers go back to PyTorch defaults, as in fairseq. The order of these draws
        # from the global RNG fixes the initial weights of a seed: keep it.
        bert_init(self)
        # fairseq's TextEncoder.reset_parameters leaves its decoder alone: the text decoder keeps BERT init
        keep_bert_init = self.cfg.modality == "text" and self.cfg.remove_masked
        for m in self.decoder.modules():
            if isinstance(m, nn.Linear) and not keep_bert_init:
                m.reset_parameters()
        if self.cfg.modality == "speech":
            self.local_encoder.proj.reset_parameters()

    def _apply(self, fn, recurse=True):
        # .to() / .cuda() / .float() reach the unregistered teacher too
        super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn, recurse)
        return self

    # ------------------------------------------------------------------------------------------------
    # student

    def forward_student(
        self, local: torch.Tensor, keep: MaskInfo | None, padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Local features (N, T, D) -> student encoder output (N, extra + T_keep, D) for the visible tokens."""
        return self.encode(local, keep, padding_mask)[0]

    def forward_decoder(self, x: torch.Tensor, keep: MaskInfo) -> torch.Tensor:
        """Student output (N, extra + T_keep, D) -> predictions at every position (N, T, D)."""
        x = F.dropout(x, self.cfg.decoder.input_dropout, self.training)
        x = x[:, self.cfg.num_extra_tokens :]  # the CLS token is not decoded
        N, T = keep.mask.shape
        # mask tokens are fresh Gaussian noise, not a learned embedding; visible outputs go back to their places
        noise = x.new_empty(N, T, x.shape[-1]).normal_(0, self.cfg.mask.mask_noise_std)
        index = keep.ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        return self.decoder(noise.scatter(1, index, x))

    # ------------------------------------------------------------------------------------------------
    # teacher

    @torch.no_grad()
    def make_targets(
        self, source: torch.Tensor, local: torch.Tensor, padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Teacher targets (B, T, D), fp32: normalized top-K block taps of the unmasked sample, averaged."""
        cfg, teacher = self.cfg, self.teacher
        if "local_encoder" in teacher:  # images: the teacher re-embeds the raw input with its own EMA weights
            x, _ = teacher["local_encoder"](source)
        elif cfg.modality == "text" and not cfg.remove_masked:
            # data2vec 1.0 text (fairseq data2vec_text.py): the teacher embeds the unmasked tokens itself, in eval
            # mode, with the shared embeddings: no embedding dropout in its input
            was_training = self.local_encoder.training
            x, _ = self.local_encoder.eval()(source)
            self.local_encoder.train(was_training)
        else:  # speech and data2vec 2.0 text: the student's local features (text: including its embedding dropout)
            x = local.detach()
        context = teacher["context_encoder"] if "context_encoder" in teacher else self.context_encoder
        x, _, attn_mask = context(x, None, padding_mask)
        _, taps = forward_blocks(teacher["blocks"], x, attn_mask, end_of_block_taps=cfg.end_of_block_targets)
        layers = [tap[:, cfg.num_extra_tokens :].float() for tap in taps[-cfg.average_top_k_layers :]]

        if cfg.instance_norm_target_layer:
            layers = [instance_norm(y, padding_mask) for y in layers]
        if cfg.layer_norm_target_layer:
            layers = [F.layer_norm(y, y.shape[-1:]) for y in layers]
        y = torch.stack(layers).mean(0)
        if cfg.layer_norm_targets:
            y = F.layer_norm(y, y.shape[-1:])
        if cfg.instance_norm_targets:
            y = instance_norm(y, padding_mask)
        return y

    def ema_step(self, update: int) -> float:
        """theta_teacher <- tau * theta_teacher + (1 - tau) * theta_student; call after optimizer.step().

        update: optimizer updates done so far (1 after the first step). Returns tau. No update runs once
        tau >= 1 (fairseq `set_num_updates`).
        """
        super().ema_step(update)
        decay = self.ema_decay_at(update)
        self.ema_decay_now.fill_(decay)
        if decay < 1:
            ema_update(self.teacher, self, decay)
        return decay

    def reset_teacher(self) -> None:
        """Make the teacher an exact copy of the student's shared parts again, as at construction.

        Under DDP, call it after wrapping (DDP broadcasts rank 0's student) unless every rank built the model
        from the same seed or a checkpointed teacher is loaded.
        """
        ema_update(self.teacher, self, 0.0)

    def ema_decay_at(self, update: int) -> float:
        """tau after `update` updates: ema_decay -> ema_end_decay over ema_anneal_end_step, then constant."""
        return ema_decay_at(update, self.cfg.ema_decay, self.cfg.ema_end_decay, self.cfg.ema_anneal_end_step)

    # ------------------------------------------------------------------------------------------------
    # loss

    def d2v_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Elementwise L2 (loss_beta = 0) or smooth L1, fp32, times loss_scale (default 1/sqrt(D))."""
        pred = pred.float()
        if self.cfg.loss_beta == 0:
            loss = (pred - target) ** 2
        else:
            loss = F.smooth_l1_loss(pred, target, reduction="none", beta=self.cfg.loss_beta)
        return loss * self.cfg.resolved_loss_scale()

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        cfg = self.cfg
        source = self.source(batch)
        M = cfg.mask.clone_batch

        local, padding_mask = self.local_features(source, batch.get("padding_mask"))  # (B, T, D), (B, T)
        T = local.shape[1]
        keep = self.mask_info(batch, T)  # (B*M, T) masks, sample-major: clone index varies fastest
        clone_padding = None if padding_mask is None else padding_mask.repeat_interleave(M, 0)  # (B*M, T)

        if cfg.remove_masked:  # data2vec 2.0: the clone batch, visible tokens only, conv decoder over noise
            x = self.forward_student(local.repeat_interleave(M, 0), keep, clone_padding)
            pred = self.forward_decoder(x, keep)  # (B*M, T, D)
        else:  # data2vec 1.0: every token, masked ones replaced by the mask embedding, linear head
            x = self.forward_student(self._mask_local_features(source, local, keep.mask), None, padding_mask)
            pred = self.decoder(x[:, cfg.num_extra_tokens :])

        y = self.make_targets(source, local, padding_mask)  # (B, T, D)
        y_clones = y.repeat_interleave(M, 0)  # clone index varies fastest, like the masks
        selected = keep.mask if clone_padding is None else keep.mask & ~clone_padding  # masked, not padding
        sample_size = selected.sum()
        per_token = self.d2v_loss(pred, y_clones).sum(-1)  # (B*M, T)
        regression = (per_token * selected).sum() / sample_size.clamp_min(1)
        loss = regression

        stats: dict[str, torch.Tensor | float] = {"loss_regression": regression.detach()}
        if cfg.cls_loss > 0:
            # global term: the student's CLS output predicts the mean target over all patches. fairseq sums it
            # over the local rows (weight grows with the per-GPU batch); here: per-row mean x a fixed row count,
            # which equals fairseq at 256 rows per GPU and stays the same on any number of devices.
            valid = torch.ones_like(y[..., 0]) if padding_mask is None else (~padding_mask).float()
            cls_target = (y * valid.unsqueeze(-1)).sum(1) / valid.sum(1, keepdim=True)
            per_row = self.d2v_loss(x[:, 0], cls_target.repeat_interleave(M, 0)).sum(-1)  # (B*M,)
            cls = per_row.mean() * cfg.cls_loss * cfg.cls_loss_reference_rows
            loss = loss + cls
            stats["loss_cls"] = cls.detach()

        stats.update(
            target_var=token_std(y_clones, selected),
            pred_var=token_std(pred, selected),
            ema_decay=self.ema_decay_now.detach().clone(),
            masked_frac=1 - keep.num_keep / T,
            sample_size=sample_size.detach(),
        )
        return loss, stats

    def _mask_local_features(self, source: torch.Tensor, local: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.cfg.modality == "text":
            # BERT-style: masked ids become <mask>, which still gets its position embedding (a learned vector in
            # place of the whole embedding would erase the position of every masked token)
            return self.local_encoder(source.masked_fill(mask, self.cfg.text.mask_idx))[0]
        return torch.where(mask.unsqueeze(-1), self.mask_embedding.to(local.dtype), local)
