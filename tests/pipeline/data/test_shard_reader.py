"""Shard integrity before training: changed, truncated or missing shards are refused with the fix; a sample that
fails to decode during training is named by its shard and key."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.config import Shard
from pipeline.data.shard import shard
from pipeline.data.shard_reader import IndexedShards
from pipeline.data.shard_writer import Sample, sha256_file, write_split
from pipeline.errors import UserInputError


def _text_shards(tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("\n\n".join(f"document number {i}" for i in range(6)))
    out = tmp_path / "shards"
    shard("text", src, out, Shard(max_samples_per_shard=3), progress=False)
    return out


def test_a_shard_changed_after_sharding_is_refused_before_use(tmp_path):
    out = _text_shards(tmp_path)
    path = out / "train-000001.tar"
    data = bytearray(path.read_bytes())
    data[600] ^= 0x20  # one flipped bit in a sample's text: same size, other bytes
    path.write_bytes(bytes(data))
    with pytest.raises(UserInputError, match=r"train-000001.tar: sha256 differs from index.json .* re-run `python -m pipeline shard --modality text --source .*src.txt"):
        IndexedShards(out, "train")
    assert len(IndexedShards(out, "train", verify=False)) == 6  # the check is the reader's default, not its only mode


def test_a_truncated_or_missing_shard_is_refused_before_use(tmp_path):
    out = _text_shards(tmp_path)
    path = out / "train-000000.tar"
    path.write_bytes(path.read_bytes()[:1024])
    with pytest.raises(UserInputError, match=r"train-000000.tar: 1024 bytes, index.json says \d+ \(truncated"):
        IndexedShards(out, "train")
    path.unlink()
    with pytest.raises(UserInputError, match=r"train-000000.tar: listed in index.json but missing; .*re-run"):
        IndexedShards(out, "train")


def test_unchanged_shards_are_hashed_once_per_process(tmp_path, monkeypatch):
    from pipeline.data import shard_writer

    out = _text_shards(tmp_path)
    calls = []
    monkeypatch.setattr(shard_writer, "sha256_file", lambda p: calls.append(p) or sha256_file(p))
    IndexedShards(out, "train")
    IndexedShards(out, "train")
    assert len(calls) == 2  # two shards, each hashed once


def test_a_sample_that_fails_to_decode_names_its_shard_and_key(tmp_path):
    """Shards written by other code (or damaged in a way that kept the recorded sha256) reach the decoder."""
    from model.presets import get_config
    from pipeline.pretrain import config as train_config
    from pipeline.pretrain.data import PretrainBatches

    out = tmp_path / "shards"
    good = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    samples = []
    for i in range(4):
        buf = io.BytesIO()
        good.save(buf, format="PNG")
        samples.append(Sample(f"train_{i:07d}", {"png": buf.getvalue() if i != 2 else b"\x89PNG\r\n not really", "cls": b"0"}))
    shards = write_split(out, "train", samples, max_samples=10)
    index = {"modality": "image", "source": "elsewhere", "splits": {"train": {"num_samples": 4, "shards": [vars(s) for s in shards]}}}
    (out / "index.json").write_text(json.dumps(index))
    cfg = train_config.build("image", "data2vec2", {"pretrain": {"image": {"preset": "tiny", "batch_size": 4}}})
    batches = PretrainBatches(cfg, get_config("image", "tiny", "data2vec2"), out)
    with pytest.raises(UserInputError, match=r"train-000000.tar, sample train_0000002: cannot decode \(UnidentifiedImageError"):
        batches[(0, [0, 1, 2, 3])]
