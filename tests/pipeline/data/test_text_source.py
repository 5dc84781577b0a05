"""Text sources: documents from .txt files, GLUE-style TSVs, the corpus+tasks layout; bad inputs reported."""
import json

import pytest
import webdataset as wds

from pipeline.errors import UserInputError
from pipeline.config import Shard
from pipeline.data.shard import shard
from pipeline.data.text_source import list_source, split_documents


def test_documents_are_separated_by_blank_lines():
    assert split_documents("a b\nc\n\n\n d e \n\nf\n") == ["a b\nc", "d e", "f"]
    assert split_documents("\n \n") == []


def test_txt_folder_with_non_utf8_file(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("first doc\n\nsecond doc\n", encoding="utf-8")
    (src / "sub" / "b.txt").write_text("third doc — with unicode ✓\n", encoding="utf-8")
    (src / "latin.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (src / "blank.txt").write_text("\n\n")
    out = tmp_path / "out"
    index = shard("text", src, out, Shard(), progress=False)
    assert index["splits"]["train"]["num_samples"] == 3
    reasons = {s["path"]: s["reason"] for s in index["skipped"]}
    assert reasons["latin.txt"].startswith("not valid UTF-8 (byte 3)")
    assert "no text" in reasons["blank.txt"]
    texts = [t.decode() for (t,) in wds.WebDataset(str(out / "train-000000.tar"), shardshuffle=False).to_tuple("txt")]
    assert texts == ["first doc", "second doc", "third doc — with unicode ✓"]


def test_glue_tsv_folder(tmp_path):
    src = tmp_path / "glue"
    src.mkdir()
    (src / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\t0\n\t1\ntoo\tmany\tcells\nfine\t10\n")
    (src / "dev.tsv").write_text("sentence\tlabel\nok film\t1\n")
    out = tmp_path / "out"
    index = shard("text", src, out, Shard(), progress=False)
    assert index["classes"] == ["0", "1", "10"]  # numeric labels sort numerically
    assert {k: v["num_samples"] for k, v in index["splits"].items()} == {"train": 3, "valid": 1}
    reasons = {s["path"]: s["reason"] for s in index["skipped"]}
    assert reasons["train.tsv:4"] == "empty sentence or label"
    assert "expected 2 tab-separated columns" in reasons["train.tsv:5"]
    rows = list(wds.WebDataset(str(out / "train-000000.tar"), shardshuffle=False).to_tuple("txt", "cls"))
    assert [(t.decode(), int(c)) for t, c in rows] == [("good film", 1), ("bad film", 0), ("fine", 2)]


def test_tsv_without_header_is_rejected(tmp_path):
    (tmp_path / "x.tsv").write_text("good film\t1\n")
    with pytest.raises(UserInputError, match="header naming `sentence` and `label`"):
        list_source(tmp_path / "x.tsv")


def test_corpus_and_tasks_layout(tmp_path):
    src = tmp_path / "src"
    (src / "corpus" / "train").mkdir(parents=True)
    (src / "corpus" / "valid").mkdir(parents=True)
    (src / "corpus" / "train" / "c.txt").write_text("one\n\ntwo\n")
    (src / "corpus" / "valid" / "c.txt").write_text("three\n")
    (src / "tasks" / "topic").mkdir(parents=True)
    (src / "tasks" / "topic" / "train.tsv").write_text("sentence\tlabel\nx\tb\ny\ta\n")
    (src / "tasks" / "topic" / "test.tsv").write_text("sentence\tlabel\nz\ta\n")
    index = shard("text", src, tmp_path / "out", Shard(), progress=False)
    assert {k: v["num_samples"] for k, v in index["splits"].items()} == {"train": 2, "valid": 1, "topic_train": 2, "topic_test": 1}
    assert index["tasks"] == {"topic": {"classes": ["a", "b"], "splits": ["test", "train"]}}
    assert json.loads((tmp_path / "out" / "index.json").read_text())["num_samples"] == 6


def test_missing_source_is_rejected(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        list_source(tmp_path / "nope")
