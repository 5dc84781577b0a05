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


def _tsv(path, header, rows, bom=False):
    text = "\n".join("\t".join(cells) for cells in [header] + rows) + "\n"
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())


def test_glue_single_sentence_folder_as_distributed(tmp_path):
    """SST-2 as GLUE ships it: labeled train/dev, a test.tsv with `index` and no labels, an `original/` folder."""
    src = tmp_path / "SST-2"
    (src / "original").mkdir(parents=True)
    (src / "original" / "datasetSentences.txt").write_text("sentence_index\tsentence\n1\tThe Rock ...\n")
    _tsv(src / "train.tsv", ["sentence", "label"], [["a gorgeous film", "1"], ["tedious", "0"], ["fine work", "1"]])
    _tsv(src / "dev.tsv", ["sentence", "label"], [["it 's a charming journey", "1"], ["dull", "0"]])
    _tsv(src / "test.tsv", ["index", "sentence"], [["0", "uneasy mishmash"], ["1", "a sly comedy"]])
    out = tmp_path / "out"
    index = shard("text", src, out, Shard(), progress=False)
    assert {k: v["num_samples"] for k, v in index["splits"].items()} == {"train": 3, "valid": 2}
    assert index["classes"] == ["0", "1"]
    [test] = index["skipped"]
    assert test["path"] == "test.tsv" and "unlabeled test set" in test["reason"] and "dev.tsv" in test["reason"]
    assert [s["path"] for s in index["ignored"]] == ["original/"]
    from pipeline.finetune.tasks import resolve

    task = resolve("text", "sst2", out)
    assert (task.train, task.valid, task.test, task.eval_role) == ("train", "valid", None, "valid")  # dev.tsv scores


@pytest.mark.parametrize("header,pair_columns,label_column", [
    (["index", "sentence1", "sentence2", "label"], (1, 2), 3),  # RTE, WNLI
    (["index", "question", "sentence", "label"], (1, 2), 3),  # QNLI
    (["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], (3, 4), 0),  # MRPC
    (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], (3, 4), 5),  # QQP
])
def test_glue_sentence_pair_folder_as_distributed(tmp_path, header, pair_columns, label_column):
    from pipeline.config import TextTokenizer
    from pipeline.data.shard_reader import IndexedShards
    from pipeline.data.text_source import text_input
    from pipeline.data.tokenizer import train_text_tokenizer

    def row(a, b, label):
        cells = [str(i) for i in range(len(header))]
        cells[pair_columns[0]], cells[pair_columns[1]], cells[label_column] = a, b, label
        return cells

    src = tmp_path / "task"
    src.mkdir()
    _tsv(src / "train.tsv", header, [row("A man plays.", "Someone plays.", "1"), row("It rains.", "It is dry.", "0")])
    _tsv(src / "dev.tsv", header, [row("Cats sleep.", "Dogs bark.", "0")])
    test_header = [h for i, h in enumerate(header) if i != label_column]
    _tsv(src / "test.tsv", test_header, [[c for i, c in enumerate(row("x", "y", "?")) if i != label_column]])
    out = tmp_path / "out"
    index = shard("text", src, out, Shard(), progress=False)
    assert {k: v["num_samples"] for k, v in index["splits"].items()} == {"train": 2, "valid": 1}
    assert [s["path"] for s in index["skipped"]] == ["test.tsv"]
    sample = IndexedShards(out, "train")[0]
    assert text_input(sample) == ("A man plays.", "Someone plays.") and sample["cls"] == b"1"
    tok = train_text_tokenizer(iter(["A man plays. Someone plays. It rains."] * 20), TextTokenizer(vocab_size=300, min_frequency=2))
    [enc] = tok.encode_batch([text_input(sample)])
    ids = [tok.token_to_id(s) for s in ("<s>", "</s>")]
    assert [i for i in enc.ids if i in ids] == [ids[0], ids[1], ids[1], ids[1]]  # <s> A </s></s> B </s> (RoBERTa)
    assert tok.decode(enc.ids) == "A man plays.Someone plays."


def test_cola_headerless_files_and_split_spellings(tmp_path):
    src = tmp_path / "CoLA"
    src.mkdir()
    _tsv(src / "train.tsv", [], [["gj04", "1", "", "Our friends won't buy this."], ["gj04", "0", "*", "They drank the pub."]])
    (src / "train.tsv").write_text((src / "train.tsv").read_text().lstrip("\n"))
    (src / "validation.tsv").write_text("clc95\t1\t\tThe sailors rode the breeze.\n")
    _tsv(src / "test.tsv", ["index", "sentence"], [["0", "Bill whistled past the house."]])
    index = shard("text", src, tmp_path / "out", Shard(), progress=False)
    assert {k: v["num_samples"] for k, v in index["splits"].items()} == {"train": 2, "valid": 1}
    assert index["classes"] == ["0", "1"] and index["split_sources"]["valid"] == ["validation.tsv"]


def test_mnli_matched_and_mismatched_dev_sets_merge_and_stray_files_are_listed(tmp_path):
    src = tmp_path / "MNLI"
    src.mkdir()
    header = ["index", "genre", "sentence1", "sentence2", "label1", "gold_label"]
    _tsv(src / "train.tsv", header, [["0", "g", "A.", "B.", "neutral", "neutral"], ["1", "g", "C.", "D.", "entailment", "entailment"]])
    _tsv(src / "dev_matched.tsv", header, [["0", "g", "E.", "F.", "contradiction", "contradiction"]])
    _tsv(src / "dev_mismatched.tsv", header, [["0", "g", "G.", "H.", "neutral", "neutral"]])
    _tsv(src / "test_matched.tsv", header[:4], [["0", "g", "I.", "J."]])
    _tsv(src / "dev_ids.tsv", ["1", "2"], [])
    (src / "README.txt").write_text("MultiNLI")
    index = shard("text", src, tmp_path / "out", Shard(), progress=False)
    assert {k: v["num_samples"] for k, v in index["splits"].items()} == {"train": 2, "valid": 2}
    assert index["split_sources"]["valid"] == ["dev_matched.tsv", "dev_mismatched.tsv"]
    assert index["classes"] == ["contradiction", "entailment", "neutral"]
    assert [s["path"] for s in index["skipped"]] == ["test_matched.tsv"]
    assert sorted(s["path"] for s in index["ignored"]) == ["README.txt", "dev_ids.tsv"]


def test_byte_order_marks_are_stripped_from_every_text_input(tmp_path):
    src = tmp_path / "glue"
    src.mkdir()
    _tsv(src / "train.tsv", ["sentence", "label"], [["good", "1"], ["bad", "0"]], bom=True)
    _tsv(src / "dev.tsv", ["sentence", "label"], [["ok", "1"]], bom=True)
    index = shard("text", src, tmp_path / "out", Shard(), progress=False)
    assert {k: v["num_samples"] for k, v in index["splits"].items()} == {"train": 2, "valid": 1}
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes("\ufefffirst document\n\nsecond\n".encode())
    shard("text", corpus, tmp_path / "out2", Shard(), progress=False)
    texts = [t.decode() for (t,) in wds.WebDataset(str(tmp_path / "out2" / "train-000000.tar"), shardshuffle=False).to_tuple("txt")]
    assert texts == ["first document", "second"]


def test_hidden_files_and_split_folder_spellings_in_a_corpus(tmp_path):
    src = tmp_path / "corpus"
    for folder in ("Training", "Validation", "Training/.ipynb_checkpoints"):
        (src / folder).mkdir(parents=True)
    (src / "Training" / "a.txt").write_text("one\n\ntwo\n")
    (src / "Training" / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("one\n\ntwo\n")
    (src / "Training" / "notes.md").write_text("# notes")
    (src / "Validation" / "b.txt").write_text("three\n")
    (src / "LICENSE").write_text("CC-BY")
    index = shard("text", src, tmp_path / "out", Shard(), progress=False)
    assert {k: v["num_samples"] for k, v in index["splits"].items()} == {"train": 2, "valid": 1}
    ignored = {s["path"]: s["reason"] for s in index["ignored"]}
    assert set(ignored) == {"Training/.ipynb_checkpoints/", "Training/notes.md", "LICENSE"}
    assert "not a .txt file" in ignored["Training/notes.md"] and "not a split folder" in ignored["LICENSE"]


def test_unlabeled_train_tsv_is_an_error_naming_the_file(tmp_path):
    src = tmp_path / "task"
    src.mkdir()
    _tsv(src / "train.tsv", ["index", "sentence"], [["0", "x"]])
    with pytest.raises(UserInputError, match=r"train.tsv: no label column .* the train split of a labeled task needs labels"):
        list_source(src)
