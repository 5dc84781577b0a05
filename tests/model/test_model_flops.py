"""FLOPs of a training step (model/flops.py): the per-module analytic count and the corrected
FlopCounterMode agree, and each correction is needed."""
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from model.data2vec2 import Data2Vec2
from model.masking import make_mask
from model.presets import get_config
from model.transformer import Attention
from model import flops
from model_synthetic import batch_for


def _both(model, step):
    with flops.counter() as counter, flops.analytic(model) as analytic:
        step()
    return counter.get_total_flops(), analytic


@pytest.mark.parametrize("modality,precision", [("image", "fp32"), ("speech", "fp32"), ("text", "fp32"), ("image", "bf16")])
def test_analytic_count_matches_the_corrected_counter_within_1_percent(modality, precision):
    torch.manual_seed(0)
    model = Data2Vec2(get_config(modality, "tiny")).train()
    batch = batch_for(modality, 2)
    source = next(iter(batch.values()))
    batch["mask"] = make_mask(model.cfg, 0, 0, [0, 1], input_length=source.shape[-1])

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, _ = model(batch)
        loss.backward()

    counted, analytic = _both(model, step)
    assert analytic.total == pytest.approx(counted, rel=0.01)
    parts = analytic.components
    assert parts["student.blocks"] > 0 and parts["decoder"] > 0 and parts["teacher.blocks"] > 0
    # the teacher only runs forward: a third of the student's blocks per row it sees
    assert parts["teacher.blocks"] < parts["student.blocks"]


def test_grouped_conv_weight_gradient_costs_one_over_groups():
    conv = nn.Conv1d(16, 16, kernel_size=4, groups=8)
    x = torch.randn(2, 16, 10, requires_grad=True)
    forward = 2 * 2 * 7 * 16 * (16 // 8) * 4  # N * out positions * C_out * C_in/groups * k
    counted, analytic = _both(nn.ModuleDict({"conv": conv}), lambda: conv(x).sum().backward())
    assert counted == analytic.total == 3 * forward  # forward, input gradient, weight gradient
    with FlopCounterMode(display=False) as stock:
        conv(x).sum().backward()
    assert stock.get_total_flops() == 2 * forward + 8 * forward  # PyTorch's table counts the weight gradient dense


def test_cpu_attention_kernel_is_counted():
    attn = Attention(32, 4)
    x = torch.randn(3, 5, 32, requires_grad=True)
    linears = 2 * 3 * 5 * 32 * (3 * 32 + 32)  # qkv and proj forward
    scores = 4 * 3 * 5 * 5 * 32  # q k^T and attn v
    counted, analytic = _both(nn.ModuleDict({"attn": attn}), lambda: attn(x).sum().backward())
    assert counted == analytic.total == 3 * linears + 3 * scores
    with FlopCounterMode(display=False) as stock:
        attn(x).sum().backward()
    assert stock.get_total_flops() < counted  # the CPU kernel is missing from PyTorch's table
