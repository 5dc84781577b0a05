"""Text pretraining blocks: the `tokenize` stage writes the corpus as token ids once per (shards, tokenizer) and
pretraining reads them; other shards are tokenized on the spot; a stale artifact is refused."""
import json
import shutil

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.config import Shard
from pipeline.data.prepare import prepare
from pipeline.data.shard import shard
from pipeline.data.tokenizer import train_tokenizer
from pipeline.errors import UserInputError
from pipeline.pretrain import data


def test_tokenize_stage_writes_the_token_ids_pretraining_reads(tmp_path, tiny_params, monkeypatch, capsys):
    shards, tok, tokens = tmp_path / "shards", tmp_path / "tok.json", tmp_path / "tokens"
    prepare("text", tiny_params, tmp_path / "raw")
    shard("text", tmp_path / "raw", shards, Shard(max_samples_per_shard=150), progress=False)
    train_tokenizer("text", tiny_params, shards, tok)
    assert main(["tokenize", "--modality", "text", "--shards", str(shards), "--tokenizer", str(tok), "--out", str(tokens)]) == 0
    index = json.loads((tokens / "index.json").read_text())
    assert sorted(index["splits"]) == ["train", "valid"] and index["tokenizer"] == str(tok)

    def no_tokenizing(*args):
        raise AssertionError("tokenized again")

    with monkeypatch.context() as patched:
        patched.setattr(data, "encode_split", no_tokenizing)
        blocks = data.pack_text_blocks(shards, "train", tok, 32, tokens)
    assert blocks.shape[1] == 32 and (blocks[:, 0] == 0).all()  # <s> first, then the stored stream
    stream = np.load(tokens / "train.npy")
    assert torch.equal(blocks[:, 1:].flatten(), torch.from_numpy(stream[: blocks.shape[0] * 31]).long())

    other = tmp_path / "other"  # a user's own --shards: no artifact of them, tokenized here to the same ids
    shutil.copytree(shards, other)
    assert torch.equal(data.pack_text_blocks(other, "train", tok, 32, tokens), blocks)
    assert "tokenizing split 'train'" in capsys.readouterr().err

    tok.write_bytes(tok.read_bytes() + b" ")  # the tokenizer the artifact names changed since: refused, not read
    with pytest.raises(UserInputError, match="run `python -m pipeline tokenize --modality text`"):
        data.pack_text_blocks(shards, "train", tok, 32, tokens)
