"""AdamW parameter groups (weight decay, layer decay), the learning-rate schedules, and the autocast dtype."""
from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.errors import UserInputError


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (oneDNN's check: AVX-512 BF16 or AMX), as PyTorch's own
    tests ask it. Without them oneDNN emulates bf16 and autocast is slower than fp32."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and check is not None and check())


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """params.yaml `precision` -> (bf16 | fp16 | fp32, why). auto: bf16 on a GPU; on a CPU bf16 when it has native
    bf16 instructions (bf16/fp32 measured 1.3-1.9x the samples per CPU-second for every tiny and mid-size preset on
    an AVX-512 BF16 CPU, docs/performance.md), fp32 otherwise. A rule on the hardware, not a timing at start-up, so
    a run's numerics do not depend on the machine's load. Raises UserInputError for fp16 on CPU."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16", "auto: bf16 on a GPU"
        if cpu_has_native_bf16():
            return "bf16", "auto: bf16, this CPU has native bf16 instructions (AVX-512 BF16 or AMX)"
        return "fp32", "auto: fp32, this CPU has no native bf16 instructions"
    if precision == "fp16" and device.type != "cuda":
        raise UserInputError("precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    if precision not in ("bf16", "fp16", "fp32"):
        raise UserInputError(f"precision must be auto, bf16, fp16 or fp32, got {precision!r}")
    return precision, "as configured"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype of `torch.autocast` for params.yaml `precision` (see resolve_precision); None = fp32, no
    autocast. fp16 also needs a grad scaler (the trainer enables one). Raises UserInputError for fp16 on CPU."""
    return AUTOCAST_DTYPES[resolve_precision(precision, device)[0]]


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}  # a resolved precision's autocast dtype


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """fairseq's rule: no decay on biases, norms and every 1-D parameter (this includes the ALiBi scales)."""
    return param.ndim <= 1 or name.endswith(".bias") or "alibi_scale" in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if no_weight_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(update: int, warmup: int, total: int, min_ratio: float = 0.0, time_fraction: float = 0.0) -> float:
    """Linear warmup from 0 over `warmup` updates, then cosine from 1 down to `min_ratio` at `total` updates,
    or earlier when `time_fraction` (elapsed / wall-clock budget) is further along: a run under a time budget
    completes its schedule when the budget ends, whatever its speed."""
    if update < warmup:
        return (update + 1) / warmup
    progress = min(1.0, max((update - warmup) / max(1, total - warmup), time_fraction))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def layer_decay_param_groups(model: nn.Module, blocks: list[nn.Module], lr: float, weight_decay: float,
                             layer_decay: float = 1.0) -> list[dict]:
    """Fine-tuning groups: (learning-rate scale, weight decay) per parameter.

    `blocks` are the encoder's transformer blocks bottom-up (prenet, then main). With N of them, block i
    (0-based) gets lr x layer_decay^(N - i): the top block x layer_decay, the bottom one x layer_decay^N.
    Everything else (patch embedding / CNN / token embeddings, CLS, positional conv, the head) keeps scale 1
    (fairseq mae_image_classification: unlike BEiT/MAE, the embeddings are not decayed). No weight decay on
    1-D parameters and biases. Each group carries `lr` (already scaled) and `lr_scale`.
    """
    scale_of: dict[int, float] = {}
    if layer_decay < 1.0:
        for i, block in enumerate(blocks):
            for p in block.parameters():
                scale_of[id(p)] = layer_decay ** (len(blocks) - i)
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (scale_of.get(id(param), 1.0), 0.0 if no_weight_decay(name, param) else weight_decay)
        groups.setdefault(key, []).append(param)
    return [{"params": params, "lr": lr * scale, "lr_scale": scale, "weight_decay": wd}
            for (scale, wd), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], -kv[0][1]))]


def tri_stage_factor(update: int, total: int, warmup_fraction: float = 0.1, hold_fraction: float = 0.4,
                     init_scale: float = 0.01, final_scale: float = 0.05) -> float:
    """fairseq `tri_stage` (wav2vec 2.0 fine-tuning): linear warmup from init_scale to 1, hold at 1, then
    exponential decay to final_scale over the rest of the updates."""
    warmup = int(total * warmup_fraction)
    hold = int(total * hold_fraction)
    decay = max(1, total - warmup - hold)
    if update < warmup:
        return init_scale + (1 - init_scale) * update / warmup
    if update < warmup + hold:
        return 1.0
    progress = min(1.0, (update - warmup - hold) / decay)
    return math.exp(math.log(final_scale) * progress)


def polynomial_factor(update: int, warmup: int, total: int, end_scale: float = 0.0, power: float = 1.0) -> float:
    """fairseq `polynomial_decay` (RoBERTa/GLUE): linear warmup from 0, then (1 - progress)^power down to end_scale."""
    if update < warmup:
        return (update + 1) / warmup
    progress = min(1.0, (update - warmup) / max(1, total - warmup))
    return end_scale + (1 - end_scale) * (1 - progress) ** power
