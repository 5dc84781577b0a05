"""Every method's encoder inside its fine-tuning head: each trainable parameter gets a gradient (DDP refuses a
parameter that takes no part in the loss), and speech masks use the learned mask vector where the encoder has one."""
import pytest
import torch

from model.build import build_model
from model.heads import ImageClassifier, SpeechCTC, TextClassifier
from model.presets import get_config
from model_synthetic import batch_for

METHODS = [("image", m) for m in ("data2vec2", "data2vec1", "mae")] + [("speech", m) for m in ("data2vec2", "data2vec1", "wav2vec2")] + [
    ("text", m) for m in ("data2vec2", "data2vec1", "mlm")]


def _task_model(modality, method):
    torch.manual_seed(0)
    encoder = build_model(get_config(modality, "tiny", method))
    encoder.remove_pretraining_modules()
    if modality == "image":
        return ImageClassifier(encoder, 10), {"target": torch.tensor([1, 3])}
    if modality == "text":
        return TextClassifier(encoder, 5), {"target": torch.tensor([0, 4])}
    return SpeechCTC(encoder, 8), {"targets": torch.tensor([[1, 2, 3], [4, 5, 6]]), "target_lengths": torch.tensor([3, 2])}


@pytest.mark.parametrize("modality,method", METHODS)
def test_every_trainable_parameter_gets_a_gradient(modality, method):
    model, labels = _task_model(modality, method)
    batch = {**batch_for(modality, 2), **labels}
    if modality == "speech":  # fine-tuning masks (time spans, channels) over the frames the encoder produces
        frames = model.encoder.local_features(batch["audio"])[0].shape[1]
        batch["time_mask"] = torch.zeros(2, frames, dtype=torch.bool)
        batch["time_mask"][:, 2:6] = True
        batch["channel_mask"] = torch.zeros(2, model.encoder.cfg.embed_dim, dtype=torch.bool)
    model.train()
    loss, _ = model(batch)
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    if modality == "image":
        assert getattr(model.encoder, "mask_embedding", None) is None  # data2vec 1.0's mask vector is dropped
    if modality == "speech" and method != "data2vec2":
        assert model.encoder.mask_embedding.grad.abs().sum() > 0  # masked frames are the learned vector (fairseq mask_emb)
