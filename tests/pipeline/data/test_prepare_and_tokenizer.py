"""The embedded defaults (tiny sizes) through prepare -> shard -> tokenizer, read back as a user would."""
import csv
import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from pipeline import config as P
from pipeline.config import Shard, SpeechTokenizer, TextTokenizer
from pipeline.data.prepare import prepare
from pipeline.data.shard import shard
from pipeline.data.synthesis import normalize_transcript, plan
from pipeline.data.tokenizer import load, roundtrip_failures, train_speech_tokenizer, train_text_tokenizer, train_tokenizer


def test_image_default(tmp_path, tiny_params):
    summary = prepare("image", tiny_params, tmp_path / "raw")
    assert summary["counts"] == {"train": 64, "test": 16}
    index = shard("image", tmp_path / "raw", tmp_path / "shards", Shard(max_samples_per_shard=40), progress=False)
    assert index["classes"][0] == "T-shirt/top" and len(index["classes"]) == 10
    assert {k: v["num_samples"] for k, v in index["splits"].items()} == {"train": 64, "test": 16}
    with tarfile.open(tmp_path / "shards" / "train-000000.tar") as tar:
        img = Image.open(io.BytesIO(tar.extractfile("train_0000000.png").read()))
        label = int(tar.extractfile("train_0000000.cls").read())
    assert img.mode == "RGB" and img.size == (28, 28) and 0 <= label < 10
    # prepare is deterministic too: a second run gives the same bytes
    first = (tmp_path / "raw" / "train-images-idx3-ubyte.gz").read_bytes()
    prepare("image", tiny_params, tmp_path / "raw")
    assert (tmp_path / "raw" / "train-images-idx3-ubyte.gz").read_bytes() == first


def test_speech_plan_holds_out_voices_and_sentences():
    utterances = plan(200, 20, 20, seed=0)
    by_split = {s: [u for u in utterances if u.split == s] for s in ("train", "valid", "test")}
    train_voices = {u.voice for u in by_split["train"]}
    assert {u.engine for u in by_split["train"]} == {"espeak-ng"}
    assert len(train_voices) > 50  # many accent x variant combinations
    for held_out in ("valid", "test"):
        assert {u.engine for u in by_split[held_out]} == {"flite"}
        assert not ({u.voice for u in by_split[held_out]} & train_voices)
        assert not ({u.text for u in by_split[held_out]} & {u.text for u in by_split["train"]})
    assert not ({u.voice for u in by_split["valid"]} & {u.voice for u in by_split["test"]})
    assert plan(200, 20, 20, seed=0) == utterances and plan(200, 20, 20, seed=1) != utterances


def test_normalize_transcript():
    assert normalize_transcript("He said: `Don't!'  OK?") == "he said 'don't ' ok"


def test_speech_default(tmp_path, tiny_params):
    summary = prepare("speech", tiny_params, tmp_path / "raw", progress=False)
    assert summary["counts"] == {"train": 6, "valid": 2, "test": 2}
    with open(tmp_path / "raw" / "voices.tsv") as f:
        voices = list(csv.DictReader(f, delimiter="\t"))
    assert len(voices) == 10 and {v["engine"] for v in voices} == {"espeak-ng", "flite"}
    index = shard("speech", tmp_path / "raw", tmp_path / "shards", Shard(max_samples_per_shard=4), progress=False)
    assert index["skipped"] == [] and index["num_samples"] == 10
    with tarfile.open(tmp_path / "shards" / "test-000000.tar") as tar:
        audio, rate = sf.read(io.BytesIO(tar.extractfile("test_0000000.flac").read()))
        meta = json.loads(tar.extractfile("test_0000000.json").read())
    assert rate == 16000 and audio.ndim == 1 and 0.5 < len(audio) / 16000 < 15
    assert abs(meta["duration"] - len(audio) / 16000) < 1e-3
    assert np.abs(audio).max() > 0.01  # not silence
    info = train_tokenizer("speech", tiny_params, tmp_path / "shards", tmp_path / "tok.json")
    assert info["specials"] == {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}


def test_text_default(tmp_path, tiny_params):
    summary = prepare("text", tiny_params, tmp_path / "raw")
    assert summary["lexname"] == {"test": 20, "valid": 20, "train": 90}
    assert summary["corpus_documents"] == {"train": 380, "valid": 20}
    assert len(summary["fortune_categories"]) >= 2
    # no valid/test input of a task appears in the unlabeled corpus
    corpus = (tmp_path / "raw" / "corpus" / "train" / "wordnet_fortunes.txt").read_text()
    for task in ("lexname", "fortune"):
        with open(tmp_path / "raw" / "tasks" / task / "test.tsv") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                assert row["sentence"] not in corpus.split("\n\n")
    index = shard("text", tmp_path / "raw", tmp_path / "shards", Shard(max_samples_per_shard=150), progress=False)
    assert len(index["tasks"]["lexname"]["classes"]) > 10
    assert index["splits"]["lexname_train"]["num_samples"] == 90
    info = train_tokenizer("text", tiny_params, tmp_path / "shards", tmp_path / "tok.json")
    assert info["specials"] == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    tok = load(tmp_path / "tok.json")
    assert tok.encode("a dog").tokens[0] == "<s>" and tok.encode("a dog").tokens[-1] == "</s>"


def test_text_tokenizer_round_trips_any_text():
    corpus = ["the quick brown fox jumps over the lazy dog"] * 50 + ["numbers 12345 and symbols #$%"] * 10
    tok = train_text_tokenizer(iter(corpus), TextTokenizer(vocab_size=300, min_frequency=2))
    unseen = ["Émile's café — naïve ✓ 日本語", "tabs\tand\nnewlines", "  leading spaces"]
    assert roundtrip_failures(tok, corpus[:1] + unseen) == []
    assert tok.token_to_id("<unk>") not in tok.encode(unseen[0]).ids  # byte-level: nothing is unknown


def test_speech_tokenizer_is_a_character_vocabulary():
    tok = train_speech_tokenizer(iter(["hello world", "it's a test"]), SpeechTokenizer())
    vocab = tok.get_vocab()
    assert vocab["<pad>"] == 0 and vocab["|"] == 4
    assert set(vocab) == {"<pad>", "<s>", "</s>", "<unk>", "|", *"helowrdit'sa"}
    enc = tok.encode("Hello  World")
    assert enc.tokens == list("hello|world")
    assert tok.decode(enc.ids) == "hello world"
    assert tok.encode("xyz").tokens == ["<unk>"] * 3


def test_params_reject_unknown_keys(tiny_params):
    tiny_params["image"]["prepare"]["train_limt"] = 5
    with pytest.raises(Exception, match="unknown key.*train_limt"):
        P.section(tiny_params, P.ImagePrepare, "image", "prepare")


def test_special_token_strings_in_user_text_stay_plain_text(tmp_path):
    """Only the pipeline adds <s> </s> <mask> <pad> <unk>; the same strings written in a document are text."""
    import copy
    import pickle

    corpus_path = tmp_path / "corpus.txt"
    documents = ["score <s>20</s> in html", "fill the <mask> here", "a <pad> and an <unk> too"] * 30
    corpus_path.write_text("\n\n".join(documents) + "\n")
    shard("text", corpus_path, tmp_path / "shards", Shard(), progress=False)
    params = {"text": {"tokenizer": {"vocab_size": 300, "min_frequency": 2}}}
    train_tokenizer("text", params, tmp_path / "shards", tmp_path / "tok.json")
    tok = load(tmp_path / "tok.json")
    specials = {tok.token_to_id(s) for s in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")}
    for text in documents[:3] + ["<s></s><mask><pad><unk>", " <mask> "]:
        for t in (tok, pickle.loads(pickle.dumps(tok)), copy.deepcopy(tok)):  # DataLoader workers get copies
            enc = t.encode(text)
            assert [i for i in enc.ids if i in specials] == [tok.token_to_id("<s>"), tok.token_to_id("</s>")], text
            assert enc.ids[0] == tok.token_to_id("<s>") and enc.ids[-1] == tok.token_to_id("</s>")
            assert t.decode(enc.ids) == text
            assert not specials & set(t.encode(text, add_special_tokens=False).ids)
    assert roundtrip_failures(tok, documents[:3]) == []
