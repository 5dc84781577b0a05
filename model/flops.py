"""FLOPs of one training step, counted two independent ways (model FLOPs: a multiply-add is 2 FLOPs; bias adds,
normalisations, activations and elementwise ops are left out, as in PaLM's MFU, Chowdhery et al. 2022, app. B).

counted   torch.utils.flop_counter.FlopCounterMode over the step's aten ops, with three corrections to its table:
          * the weight gradient of a grouped convolution costs 1/groups of a dense one (the table counts it
            dense: the speech positional conv has 16 groups, the image decoder's conv as many as channels);
          * PyTorch's CPU attention kernel (`_scaled_dot_product_flash_attention_for_cpu` and its backward) is
            counted (the table has no entry, so it counted 0);
          * an attention backward is 4 matmuls (dQ, dK, dV, dP), not 5: recomputing the scores is the kernel's
            choice, not the model's (the explicit kernel of model/transformer.py does not recompute).
analytic  per module, from the shapes each one sees in the step (forward hooks): Linear 2*rows*in*out, Conv
          2*N*out_positions*C_out*(C_in/groups)*k, attention 4*B*H*T_q*T_k*d (q k^T and attn v); the backward adds
          the same again for the input gradient when the input needs one and for the weight gradient when the
          weight is trained (attention: 2x its forward), nothing under no_grad (the EMA teacher). Grouped by
          component: the student's local encoder, context encoder, blocks, decoder, and the teacher's parts.

The analytic count covers the modules of the encoder (model/encoder.py), the data2vec 2.0 decoders and MAE's
decoder; heads that multiply outside a module (wav2vec 2.0's logits, a tied LM head) are only in `counted`.
tests/model/test_model_flops.py checks that both agree within 1% on every modality's data2vec 2.0 step.

Layerdrop (speech base: 0.05) skips each main block of the student with its probability in a training step, so a
step's count would depend on the coins of the step counted. Counts are taken with layerdrop off
(`without_layerdrop`, which the trainer's count uses): every block runs, and the count is a function of the
config and the batch shapes alone. It is the cost of the full model, the one fairseq's configs describe; the
expected cost of a step is lower by the layerdrop rate times the student blocks' share (forward and backward).
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from math import prod

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_flop_count

aten = torch.ops.aten


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, groups, output_mask, out_shape=None) -> int:
    """aten.convolution_backward: the input gradient as PyTorch counts it, the weight gradient / groups."""
    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(list(grad_out_shape), list(w_shape), list(out_shape[0]), not transposed)
    if output_mask[1]:
        # one multiply-add per (output position, weight element): the same as the forward, for any groups
        positions = prod((x_shape if transposed else grad_out_shape)[2:])
        flops += 2 * x_shape[0] * positions * prod(w_shape)
    return flops


def sdpa_forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * sdpa_flop_count(query_shape, key_shape, value_shape)  # dP = dO v^T, dV, dQ, dK: 4 matmuls


CORRECTIONS = {
    aten.convolution_backward: conv_backward_flops,
    aten._scaled_dot_product_flash_attention_for_cpu: sdpa_forward_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: sdpa_backward_flops,
    aten._scaled_dot_product_efficient_attention_backward: sdpa_backward_flops,
    aten._scaled_dot_product_flash_attention_backward: sdpa_backward_flops,
    aten._scaled_dot_product_cudnn_attention_backward: sdpa_backward_flops,
}


@contextlib.contextmanager
def without_layerdrop(model: nn.Module) -> Iterator[None]:
    """Inside the block, every module of `model` with a `layerdrop` rate (model/encoder.py Encoder) drops no block."""
    rates = [(m, m.layerdrop) for m in model.modules() if isinstance(getattr(m, "layerdrop", None), (int, float))]
    for module, _ in rates:
        module.layerdrop = 0.0
    try:
        yield
    finally:
        for module, rate in rates:
            module.layerdrop = rate


def counter() -> FlopCounterMode:
    """A FlopCounterMode with the corrections above."""
    return FlopCounterMode(display=False, custom_mapping=CORRECTIONS)


# ----------------------------------------------------------------------------------------------------------------
# analytic


def _module_flops(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> tuple[int, int]:
    """(forward FLOPs, backward FLOPs) of one call of a Linear, a Conv or an Attention on input `x`."""
    if isinstance(module, nn.Linear):
        forward = 2 * (x.numel() // module.in_features) * module.in_features * module.out_features
    elif isinstance(module, nn.modules.conv._ConvNd):
        forward = 2 * out.shape[0] * prod(out.shape[2:]) * module.weight.numel()
    else:  # Attention on x (B, T, C): scores (B, H, T, T) from q k^T, then attn v
        B, T, C = x.shape
        forward = 4 * B * T * T * C
        return forward, 2 * forward if out.requires_grad else 0
    if not out.requires_grad:
        return forward, 0
    weight_grad = forward if module.weight.requires_grad else 0
    input_grad = forward if x.requires_grad else 0
    return forward, weight_grad + input_grad


@dataclass
class AnalyticCount:
    """FLOPs per component, filled by `analytic` while a step runs."""

    components: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def total(self) -> int:
        return sum(self.components.values())


def _parts(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(component name, module): the model's top-level children, then the EMA teacher's parts."""
    for name, child in model.named_children():
        yield f"student.{name}" if name in ("local_encoder", "context_encoder", "blocks", "norm") else name, child
    teacher = getattr(model, "teacher", None)
    if teacher is not None:
        for name, child in teacher.named_children():
            yield f"teacher.{name}", child


@contextlib.contextmanager
def analytic(model: nn.Module) -> Iterator[AnalyticCount]:
    """Count the analytic FLOPs of what `model` (and its teacher) run inside the block."""
    from model.transformer import Attention

    count = AnalyticCount()
    handles = []

    def hook(component: str) -> Callable:
        def record(module, args, out):
            forward, backward = _module_flops(module, args[0], out)
            count.components[component] += forward + backward
        return record

    for component, part in _parts(model):
        count.components[component] += 0  # every component listed, in the same order on every rank
        for module in part.modules():
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, Attention)):
                handles.append(module.register_forward_hook(hook(component)))
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()
