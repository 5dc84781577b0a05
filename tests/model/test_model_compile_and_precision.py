"""The pretraining model under bf16 autocast keeps fairseq's fp32 parts (residual stream, targets, loss, norm
statistics), and compiles with torch.compile into one graph per modality that survives EMA updates."""
import pytest
import torch

from model.data2vec2 import Data2Vec2
from model.masking import make_mask
from model.presets import get_config
from model_synthetic import batch_for

MODALITIES = ["image", "speech", "text"]


def _model_and_batch(modality, batch_size=2, seed=0):
    torch.manual_seed(0)
    model = Data2Vec2(get_config(modality, "tiny"))
    batch = batch_for(modality, batch_size, seed=seed)
    source = next(iter(batch.values()))
    batch["mask"] = make_mask(model.cfg, 0, 0, list(range(batch_size)), input_length=source.shape[-1])
    return model, batch


@pytest.mark.parametrize("modality", MODALITIES)
def test_bf16_autocast_keeps_residual_stream_targets_and_loss_in_fp32(modality):
    model, batch = _model_and_batch(modality)
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen.setdefault(name, set()).add(args[0].dtype)
        return hook

    for i, block in enumerate(model.blocks):
        block.register_forward_hook(record("block input"))  # the residual stream entering each block
    model.decoder.register_forward_hook(record("decoder input"))  # visible outputs + the noise tokens
    make_targets = model.make_targets
    targets = []
    model.make_targets = lambda *a: targets.append(make_targets(*a)) or targets[-1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = model(batch)
        matmul = model.blocks[0].attn.qkv(torch.randn(1, 3, model.cfg.embed_dim))
    assert matmul.dtype == torch.bfloat16  # autocast is on: the matmuls do run in bf16
    assert seen == {"block input": {torch.float32}, "decoder input": {torch.float32}}
    assert targets[0].dtype == torch.float32 and loss.dtype == torch.float32
    assert stats["target_var"].dtype == stats["pred_var"].dtype == torch.float32


@pytest.mark.parametrize("modality", MODALITIES)
def test_the_pretraining_step_compiles_without_graph_breaks_or_recompiles(modality):
    # backend "eager": Dynamo traces the whole step (what breaks a graph is decided there) without Inductor's
    # code generation, so the test takes seconds; fullgraph=True raises on any break
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, batch = _model_and_batch(modality)
    model.train()
    compiled = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)
    for update in range(3):
        loss, stats = compiled(batch)
        loss.backward()
        model.ema_step(update + 1)  # the EMA decay and num_updates change between steps
    assert not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] == 1  # no recompilation per update
    assert float(stats["ema_decay"]) == pytest.approx(model.ema_decay_at(2), abs=1e-7)
    torch.manual_seed(1)  # the same noise tokens: the compiled step computes what the eager one does
    compiled_loss, _ = compiled(batch)
    torch.manual_seed(1)
    eager_loss, _ = model(batch)
    torch.testing.assert_close(compiled_loss, eager_loss)
