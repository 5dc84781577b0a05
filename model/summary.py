"""Human-readable summary of a preset: parameter counts, tokens, clone batch and FLOPs of one training step.

The model is built on the `meta` device (no memory, no weights), so base and large presets summarize in about a
second. FLOPs are counted with torch.utils.flop_counter.FlopCounterMode over one real training step on meta
tensors (forward, backward and the teacher's forward, batch of one sample and its M clones): matmuls,
convolutions and attention only; normalizations and elementwise ops are not counted.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from model.config import get_config
from model.data2vec2 import INPUT_KEYS, Data2Vec2
from model.masking import make_mask, num_masked


def _count(module) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


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
    with FlopCounterMode(display=False) as total:
        loss, _ = model(batch)
        loss.backward()
    source = batch[INPUT_KEYS[model.cfg.modality]]
    with torch.no_grad():
        local, padding_mask = model.local_features(source)
    with FlopCounterMode(display=False) as teacher:
        model.make_targets(source, local, padding_mask)
    return total.get_total_flops(), teacher.get_total_flops()


def summarize(modality: str, preset: str, method: str = "data2vec2") -> str:
    cfg = get_config(modality, preset, method)
    with torch.device("meta"):
        model = Data2Vec2(cfg)
    model.train()

    encoder = sum(_count(m) for m in (model.local_encoder, model.context_encoder, model.blocks, model.norm))
    encoder += 0 if model.mask_embedding is None else model.mask_embedding.numel()
    tokens = cfg.num_tokens()
    visible = tokens if not cfg.remove_masked else tokens - num_masked(cfg.mask, tokens)
    step_flops, teacher_flops = training_step_flops(model)
    if not cfg.remove_masked:
        visible_note = f"{visible} (the student sees every token; masked ones replaced by the mask embedding)"
    else:
        visible_note = f"{visible}" + (f" + {cfg.num_extra_tokens} CLS" if cfg.num_extra_tokens else "")
    if modality == "speech":
        unit = f"frames ({cfg.speech.max_sample_size} samples = {cfg.speech.max_sample_size / 16000:g} s at 16 kHz)"
    elif modality == "image":
        unit = f"patches ({cfg.image.grid_size}x{cfg.image.grid_size} grid of {cfg.image.patch_size}px)"
    else:
        unit = "tokens (max_positions)"
    rows = [
        ("method / modality / preset", f"{method} / {modality} / {preset}"),
        ("width / heads / blocks", f"{cfg.embed_dim} / {cfg.encoder.num_heads} / "
                                   f"{cfg.prenet_depth} prenet + {cfg.encoder.depth} main"),
        ("student encoder parameters", f"{encoder:,}"),
        ("decoder parameters", f"{_count(model.decoder):,} ({cfg.decoder.decoder_type})"),
        ("teacher parameters (EMA)", f"{_count(model.teacher):,} (scope: {cfg.ema_scope})"),
        ("tokens per sample", f"{tokens} {unit}"),
        ("visible tokens per clone", visible_note),
        ("clone batch M", f"{cfg.mask.clone_batch}"),
        ("target", f"average of top {cfg.average_top_k_layers} blocks"),
        ("FLOPs / training step / sample",
         f"{step_flops / 1e9:,.2f} GFLOP (student fwd+bwd over M clones + teacher fwd)"),
        ("  of which teacher forward", f"{teacher_flops / 1e9:,.2f} GFLOP"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append("FLOPs: torch.utils.flop_counter.FlopCounterMode on the meta device (matmul, conv, attention only)")
    return "\n".join(lines)
