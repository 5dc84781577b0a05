"""Text pretraining blocks: the corpus is tokenized once per (shards, tokenizer) and read back from the cache."""
import torch

from pipeline.data.prepare import prepare
from pipeline.data.shard import shard
from pipeline.data.tokenizer import train_tokenizer
from pipeline.config import Shard
from pipeline.pretrain import data


def test_text_blocks_are_tokenized_once_and_cached(tmp_path, tiny_params, monkeypatch):
    prepare("text", tiny_params, tmp_path / "raw")
    shard("text", tmp_path / "raw", tmp_path / "shards", Shard(max_samples_per_shard=150), progress=False)
    train_tokenizer("text", tiny_params, tmp_path / "shards", tmp_path / "tok.json")
    cache = tmp_path / "cache"
    blocks = data.pack_text_blocks(tmp_path / "shards", "train", tmp_path / "tok.json", 32, cache)
    assert blocks.shape[1] == 32 and (blocks[:, 0] == 0).all()  # <s> first
    assert len(list(cache.glob("*.npz"))) == 1

    data._pack_text_blocks.cache_clear()  # a new process: only the file cache is left

    def no_tokenizing(*args):
        raise AssertionError("tokenized again")

    monkeypatch.setattr("pipeline.data.tokenizer.load", no_tokenizing)
    assert torch.equal(data.pack_text_blocks(tmp_path / "shards", "train", tmp_path / "tok.json", 32, cache), blocks)
    other = data.pack_text_blocks(tmp_path / "shards", "train", tmp_path / "tok.json", 16, cache)  # same stream
    assert torch.equal(other[:, 1:].flatten()[: 31 * 4], blocks[:, 1:].flatten()[: 31 * 4])
    # another tokenizer file is another corpus digest: tokenized anew
    (tmp_path / "tok2.json").write_bytes((tmp_path / "tok.json").read_bytes() + b" ")
    monkeypatch.undo()
    data.pack_text_blocks(tmp_path / "shards", "train", tmp_path / "tok2.json", 32, cache)
    assert len(list(cache.glob("*.npz"))) == 2
