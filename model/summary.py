"""Human-readable summary of a preset: parameter counts, tokens, clone batch and FLOPs of one training step.

The model is built on the `meta` device (no memory, no weights), so base and large presets summarize in about a
second. FLOPs are counted with torch.utils.flop_counter.FlopCounterMode over one real training step on meta
tensors (forward, backward and the teacher's forward, batch of one sample and its M clones), with the corrections
of model/flops.py: matmuls, convolutions and attention only; normalizations and elementwise ops are not counted.

The baselines (mae, wav2vec2, mlm) report the same encoder count, their head (MAE decoder, wav2vec 2.0
quantizer and projections, LM head) and the FLOPs of one training step (forward and backward, one sample).
"""
from __future__ import annotations

import torch

from model import flops
from model.build import build_model
from model.config import BASELINE_MODALITY, Data2Vec2Config
from model.presets import get_config
from model.data2vec2 import Data2Vec2
from model.encoder import INPUT_KEYS
from model.masking import make_mask, num_masked


def _count(module) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _token_unit(cfg: Data2Vec2Config) -> str:
    """What one token of cfg.modality is, at the preset's input size."""
    if cfg.modality == "speech":
        return f"frames ({cfg.speech.max_sample_size} samples = {cfg.speech.max_sample_size / 16000:g} s at 16 kHz)"
    if cfg.modality == "image":
        return f"patches ({cfg.image.grid_size}x{cfg.image.grid_size} grid of {cfg.image.patch_size}px)"
    return "tokens (max_positions)"


def _render(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append("FLOPs: torch.utils.flop_counter.FlopCounterMode on the meta device (matmul, conv, attention only; "
                 "grouped-conv weight gradients and CPU attention corrected as in model/flops.py)")
    return "\n".join(lines)


def _example_batch(model: Data2Vec2) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    if cfg.modality == "image":
        source = torch.zeros(1, cfg.image.in_chans, cfg.image.input_size, cfg.image.input_size, device="meta")
        input_length = None
    elif cfg.modality == "speech":
        input_length = cfg.speech.max_sample_size
        source = torch.zeros(1, input_length, device="meta")
    else:
        input_length = cfg.text.max_positions
        source = torch.zeros(1, input_length, dtype=torch.long, device="meta")
    mask = make_mask(cfg, seed=0, step=0, ids=[0], input_length=input_length)
    return {INPUT_KEYS[cfg.modality]: source, "mask": mask.to("meta")}


def training_step_flops(model: Data2Vec2) -> tuple[int, int]:
    """(FLOPs of one training step, of which the teacher's forward) for one sample, on a meta model."""
    batch = _example_batch(model)
    with flops.counter() as total:
        loss, _ = model(batch)
        loss.backward()
    source = batch[INPUT_KEYS[model.cfg.modality]]
    with torch.no_grad():
        local, padding_mask = model.local_features(source)
    with flops.counter() as teacher:
        model.make_targets(source, local, padding_mask)
    return total.get_total_flops(), teacher.get_total_flops()


def summarize(modality: str, preset: str, method: str = "data2vec2") -> str:
    cfg = get_config(modality, preset, method)
    if method in BASELINE_MODALITY:
        return summarize_baseline(cfg)
    with torch.device("meta"):
        model = Data2Vec2(cfg)
    model.train()

    encoder = sum(_count(m) for m in model.encoder_parts())
    encoder += 0 if model.mask_embedding is None else model.mask_embedding.numel()
    tokens = cfg.num_tokens()
    visible = tokens if not cfg.remove_masked else tokens - num_masked(cfg.mask, tokens)
    step_flops, teacher_flops = training_step_flops(model)
    if not cfg.remove_masked:
        visible_note = f"{visible} (the student sees every token; masked ones replaced by the mask embedding)"
    else:
        visible_note = f"{visible}" + (f" + {cfg.num_extra_tokens} CLS" if cfg.num_extra_tokens else "")
    rows = [
        ("method / modality / preset", f"{method} / {modality} / {preset}"),
        ("width / heads / blocks", f"{cfg.embed_dim} / {cfg.encoder.num_heads} / "
                                   f"{cfg.prenet_depth} prenet + {cfg.encoder.depth} main"),
        ("student encoder parameters", f"{encoder:,}"),
        ("decoder parameters", f"{_count(model.decoder):,} ({cfg.decoder.decoder_type})"),
        ("teacher parameters (EMA)", f"{_count(model.teacher):,} (scope: {cfg.ema_scope})"),
        ("tokens per sample", f"{tokens} {_token_unit(cfg)}"),
        ("visible tokens per clone", visible_note),
        ("clone batch M", f"{cfg.mask.clone_batch}"),
        ("target", f"average of top {cfg.average_top_k_layers} blocks"),
        ("FLOPs / training step / sample",
         f"{step_flops / 1e9:,.2f} GFLOP (student fwd+bwd over M clones + teacher fwd)"),
        ("  of which teacher forward", f"{teacher_flops / 1e9:,.2f} GFLOP"),
    ]
    return _render(rows)


def summarize_baseline(cfg: Data2Vec2Config) -> str:
    """Summary of a baseline (mae, wav2vec2, mlm) on the meta device: encoder, head, FLOPs of one step."""
    with torch.device("meta"):
        model = build_model(cfg)
    model.train()
    encoder = sum(_count(m) for m in model.encoder_parts())
    tokens = cfg.num_tokens()
    masked = num_masked(cfg.mask, tokens)
    if cfg.method == "mae":
        mae = cfg.mae
        head = [("decoder parameters", f"{_count(model.decoder):,} ({mae.decoder_depth} pre-LN blocks x "
                                       f"{mae.decoder_embed_dim}, {mae.decoder_num_heads} heads, learned mask token)")]
        encoder_input = f"{tokens - masked} visible patches + {cfg.num_extra_tokens} CLS ({masked} masked at random)"
        task = "normalized pixels of the masked patches (MSE)" if mae.norm_pix_loss else "pixels of the masked patches"
    elif cfg.method == "wav2vec2":
        w = cfg.wav2vec2
        encoder += model.mask_embedding.numel()  # kept for fine-tuning, as fairseq's mask_emb
        vq_dim = w.latent_dim or w.final_dim
        head = [
            ("quantizer parameters", f"{_count(model.quantizer):,} (G={w.latent_groups} x V={w.latent_vars} "
                                     f"codebook, {vq_dim}-d codevectors)"),
            ("projections (final_proj, project_q)", f"{_count(model.final_proj) + _count(model.project_q):,} "
                                                    f"(to final_dim {w.final_dim})"),
        ]
        encoder_input = f"all {tokens} frames; {masked} masked ones replaced by the mask embedding"
        task = f"contrastive over the masked frames, {w.num_negatives} distractors each + diversity + feature penalty"
    else:
        head = [("LM head parameters", f"{_count(model.lm_head):,} (dense + LayerNorm + output bias; "
                                       f"output weight tied to the token embedding)")]
        encoder_input = f"all {tokens} tokens; {masked} selected (80% <mask>, 10% random, 10% unchanged)"
        task = "cross-entropy on the selected tokens"
    batch = _example_batch(model)
    with flops.counter() as counter:
        loss, _ = model(batch)
        loss.backward()
    rows = [
        ("method / modality / preset", f"{cfg.method} / {cfg.modality} / {cfg.preset}"),
        ("width / heads / blocks", f"{cfg.embed_dim} / {cfg.encoder.num_heads} / "
                                   f"{cfg.prenet_depth} prenet + {cfg.encoder.depth} main"),
        ("encoder parameters", f"{encoder:,} (the data2vec 2.0 encoder)"),
        *head,
        ("tokens per sample", f"{tokens} {_token_unit(cfg)}"),
        ("encoder input", encoder_input),
        ("masks per sample", "1 (no clone batch, no teacher)"),
        ("task", task),
        ("FLOPs / training step / sample", f"{counter.get_total_flops() / 1e9:,.2f} GFLOP (forward + backward)"),
    ]
    return _render(rows)
