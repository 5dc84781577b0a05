"""AdamW with the released parameter groups, and the warmup + cosine learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """fairseq's rule: no decay on biases, norms and every 1-D parameter (this includes the ALiBi scales)."""
    return param.ndim <= 1 or name.endswith(".bias") or "alibi_scale" in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if no_weight_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(update: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Linear warmup from 0 over `warmup` updates, then cosine from 1 down to `min_ratio` at `total`."""
    if update < warmup:
        return (update + 1) / warmup
    progress = min(1.0, (update - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
