"""Conv building blocks shared by the speech encoder and the conv decoders (fairseq SamePad, Fp32LayerNorm)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over dim 1 of (N, C, ...) conv activations, computed in fp32 (fairseq Fp32LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.movedim(1, -1).float()
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        y = F.layer_norm(y, self.normalized_shape, weight, bias, self.eps)
        return y.to(x.dtype).movedim(-1, 1)


class SamePad(nn.Module):
    """Trim the extra step an even kernel with padding k//2 adds, on the last `dims` (1 or 2) axes."""

    def __init__(self, kernel_size: int, dims: int = 1):
        super().__init__()
        self.trim = kernel_size % 2 == 0
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.trim:
            return x
        return x[..., :-1] if self.dims == 1 else x[..., :-1, :-1]
