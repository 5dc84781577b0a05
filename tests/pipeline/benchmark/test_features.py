"""Frozen features: subsamples, pooling, floors, checkpoint and random-init sources, the cache."""
from types import SimpleNamespace

import pytest
import torch

from model import build_model, config_from_dict, get_config
from pipeline.benchmark import features as F
from pipeline.config import Shard
from pipeline.data.prepare import prepare
from pipeline.data.shard import shard
from pipeline.finetune import tasks
from pipeline.train import checkpoint

SIZES = {"train": 24, "valid": 8, "test": 8}


@pytest.fixture(scope="module")
def image_task(tmp_path_factory):
    """Tiny Fashion-MNIST shards (64 train, 16 test; no valid split) as a fine-tuning task."""
    root = tmp_path_factory.mktemp("features")
    params = {"seed": 0, "image": {"prepare": {"train_limit": 64, "test_limit": 16}}}
    prepare("image", params, root / "raw")
    shard("image", root / "raw", root / "shards", Shard(max_samples_per_shard=40), progress=False)
    return tasks.resolve("image", "fashion_mnist", root / "shards")


@pytest.fixture(scope="module")
def image_config():
    return get_config("image", "tiny", "data2vec2").to_dict()


def test_probe_positions_carve_a_disjoint_validation_set_deterministically(image_task):
    chosen = F.probe_positions(image_task, SIZES, seed=0)
    assert {role: split for role, (split, _) in chosen.items()} == {"train": "train", "valid": "train", "test": "test"}
    assert [len(ids) for _, ids in chosen.values()] == [24, 8, 8]
    assert not set(chosen["train"][1]) & set(chosen["valid"][1])
    assert chosen == F.probe_positions(image_task, SIZES, seed=0)
    assert chosen != F.probe_positions(image_task, SIZES, seed=1)
    bigger = F.probe_positions(image_task, {**SIZES, "test": 12}, seed=0)
    assert set(chosen["test"][1]) < set(bigger["test"][1])  # nested: a larger subsample extends a smaller one
    assert len(F.probe_positions(image_task, {**SIZES, "test": 1000})["test"][1]) == 16  # capped at the split


def test_pooling_excludes_padding_and_takes_cls_or_frames():
    x = torch.arange(12.0).view(1, 4, 3).repeat(2, 1, 1)
    padding = torch.tensor([[False, False, True, True], [False, False, False, False]])
    out = {"x": x, "cls": None, "padding_mask": padding}
    mean = F.pool(out, "mean", "speech")
    assert torch.equal(mean[0], x[0, :2].mean(0)) and torch.equal(mean[1], x[1].mean(0))
    assert [f.shape[0] for f in F.pool(out, "frames", "speech")] == [2, 4]
    assert torch.equal(F.pool(out, "cls", "text"), x[:, 0])  # text: the <s> token
    assert torch.equal(F.pool({**out, "cls": x[:, 3]}, "cls", "image"), x[:, 3])
    with pytest.raises(F.UserInputError):
        F.pool(out, "cls", "speech")


def test_raw_input_floors_pixels_fbank_and_bag_of_tokens():
    images = torch.rand(2, 3, 28, 28)
    assert F.raw_features({"image": images}, "mean", "image", 0, 0).shape == (2, 3 * 28 * 28)
    tokens = torch.tensor([[0, 5, 5, 2], [0, 7, 2, 1]])  # pad = 1
    counts = F.raw_features({"tokens": tokens}, "mean", "text", 10, 1)
    assert counts[0, 5] == 2 and counts[1, 7] == 1 and counts[:, 1].sum() == 0 and counts.sum() == 7
    audio = torch.randn(2, 16000)
    padding = torch.zeros(2, 16000, dtype=torch.bool)
    padding[1, 8000:] = True
    frames = F.raw_features({"audio": audio, "padding_mask": padding}, "frames", "speech", 0, 0)
    assert [f.shape for f in frames] == [(98, 80), (48, 80)]  # 25 ms windows every 10 ms, padding left out


def test_random_init_is_update_zero_of_the_pretraining_run(image_config):
    torch.manual_seed(3)  # what pipeline/pretrain/stage.py does before build_model
    expected = build_model(config_from_dict(image_config))
    expected.remove_pretraining_modules()
    state = F.build_encoder(F.random_init(image_config, seed=3)).state_dict()
    assert state.keys() == expected.state_dict().keys()
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in state.items())
    other = F.build_encoder(F.random_init(image_config, seed=4)).state_dict()
    assert not all(torch.equal(v, other[k]) for k, v in state.items())


def test_features_are_cached_and_recomputed_for_another_key(image_task, image_config, tmp_path, monkeypatch):
    chosen = F.probe_positions(image_task, SIZES)
    source = F.random_init(image_config, seed=0)
    spec = F.FeatureSpec(pooling="mean", batch_size=16)
    first = F.probe_features(source, image_task, chosen, spec, tmp_path)
    assert first["train"].features.shape == (24, 128) and first["train"].labels.shape == (24,)
    assert first["test"].ids.tolist() == chosen["test"][1]
    assert first["train"].meta["pooling"] == "mean" and first["train"].meta["layer"] is None
    assert first["train"].meta["kind"] == "random_init"
    assert len(list(tmp_path.glob("*.pt"))) == len(list(tmp_path.glob("*.json"))) == 3

    def no_extraction(*args, **kwargs):
        raise AssertionError("extracted again instead of reading the cache")

    monkeypatch.setattr(F, "extract", no_extraction)
    again = F.probe_features(source, image_task, chosen, spec, tmp_path)
    assert all(torch.equal(again[r].features, first[r].features) for r in F.ROLES)
    monkeypatch.undo()

    layer0 = F.probe_features(source, image_task, chosen, F.FeatureSpec(layer=0, pooling="cls", batch_size=16), tmp_path)
    assert layer0["train"].meta["layer"] == 0 and layer0["train"].meta["pooling"] == "cls"
    assert not torch.equal(layer0["train"].features, first["train"].features)
    # another seed: the same file names, another key -> recomputed and replaced
    reseeded = F.probe_features(F.random_init(image_config, seed=1), image_task, chosen, spec, tmp_path)
    assert not torch.equal(reseeded["train"].features, first["train"].features)
    assert F.load_features(tmp_path / "train-train-mean-layerlast-n24.pt", first["train"].meta["key"]) is None


def test_checkpoint_source_matches_its_weights_and_extraction_is_deterministic(image_task, image_config, tmp_path):
    chosen = F.probe_positions(image_task, SIZES)
    spec = F.FeatureSpec(batch_size=16)
    model = F.build_encoder(F.random_init(image_config, seed=5))
    path = tmp_path / "checkpoint.pt"
    full = build_model(config_from_dict(image_config))  # a pretraining model: the student carries a decoder
    full.load_state_dict(model.state_dict(), strict=False)
    checkpoint.save(path, {"student": full.state_dict(), "config": {"model": image_config, "pretrain": {"method": "data2vec2"}},
                           "update": 7})
    source = F.from_checkpoint(path)
    assert source.identity["method"] == "data2vec2" and source.identity["update"] == 7
    from_ckpt = F.probe_features(source, image_task, chosen, spec, tmp_path / "ckpt")
    from_init = F.probe_features(F.random_init(image_config, seed=5), image_task, chosen, spec, tmp_path / "init")
    assert torch.equal(from_ckpt["train"].features, from_init["train"].features)
    dataset = F.eval_dataset(image_config, image_task.shard_dir, *chosen["test"])
    assert torch.equal(F.extract(source, dataset, spec).features, from_ckpt["test"].features)


def test_raw_input_source_gives_flattened_pixels(image_task, image_config, tmp_path):
    chosen = F.probe_positions(image_task, SIZES)
    raw = F.probe_features(F.raw_input(image_config), image_task, chosen, F.FeatureSpec(batch_size=16), tmp_path)
    assert raw["train"].features.shape == (24, 3 * 28 * 28) and raw["train"].meta["kind"] == "raw_input"


class SpeechBatches:
    """A stand-in for fine-tuning's speech evaluation batches: sine-wave utterances of 0.5-1 s, 2 letters each."""

    modality = "speech"

    def __init__(self, model_cfg, count: int = 3):
        self.model_cfg, self.num_samples = model_cfg, count
        self.tokenizer = SimpleNamespace(normalizer=SimpleNamespace(normalize_str=str.lower))

    def __getitem__(self, item):
        _, ids = item
        lengths = [8000 + 4000 * i for i in ids]
        audio = torch.zeros(len(ids), max(lengths))
        padding = torch.ones(len(ids), max(lengths), dtype=torch.bool)
        for row, n in enumerate(lengths):
            audio[row, :n] = torch.sin(torch.arange(n) * 0.01 * (row + 1))
            padding[row, :n] = False
        return {"audio": audio, "padding_mask": padding, "ids": torch.tensor(ids),
                "targets": torch.tensor([3, 4] * len(ids)), "target_lengths": torch.tensor([2] * len(ids))}

    def transcript(self, i: int) -> str:
        return f"Utterance {i}"


def test_speech_frames_keep_every_unpadded_frame_with_transcripts():
    config = get_config("speech", "tiny", "data2vec2").to_dict()
    dataset = SpeechBatches(config_from_dict(config))
    frames = F.extract(F.random_init(config, 0), dataset, F.FeatureSpec(pooling="frames", batch_size=2))
    expected = [dataset.model_cfg.speech.num_frames(8000 + 4000 * i) for i in range(3)]
    assert frames.lengths.tolist() == expected and frames.features.shape == (sum(expected), 128)
    assert frames.meta["references"] == ["utterance 0", "utterance 1", "utterance 2"]
    assert frames.target_lengths.tolist() == [2, 2, 2]
    fbank = F.extract(F.raw_input(config), dataset, F.FeatureSpec(pooling="frames", batch_size=2))
    assert fbank.features.shape[1] == 80 and len(fbank.lengths) == 3
