"""Text sources: unlabeled documents in `.txt` files, or labeled TSV files as GLUE distributes them.

  * `.txt`: UTF-8 text; documents are separated by one or more blank lines; each document becomes one sample
    (`.txt`). A file that is not valid UTF-8 is skipped as a whole and listed with the byte offset.
  * `.tsv`: a header row naming a text column and a label column (other columns, such as GLUE's `index`, are
    ignored), one example per line; each becomes a sample with `.txt` and `.cls` (the label's index in the
    sorted label list). Text columns: `sentence`, or a sentence pair `sentence1`+`sentence2` (RTE, WNLI, MNLI),
    `question`+`sentence` (QNLI), `question1`+`question2` (QQP), `#1 String`+`#2 String` (MRPC); the second
    sentence of a pair is stored as `.pair.txt` and the tokenizer joins the two as RoBERTa does. Label columns:
    `label`, `gold_label` (MNLI), `is_duplicate` (QQP), `Quality` (MRPC); header names match in any case.
    CoLA's headerless train/dev files (source, label, original mark, sentence) are recognised too.
    A test file without a label column (GLUE's own test.tsv: `index` + text) is skipped with a note, and the
    final metrics come from the valid split (dev.tsv); a train or valid file without labels is an error.
Every text file is read as UTF-8 with a leading byte-order mark removed.
Layouts: a single `.txt`/`.tsv` file (split `train`); a folder of split-named TSVs (`train.tsv`, `dev.tsv`,
`validation.tsv`, `dev_matched.tsv`, `test.tsv`, ...; source.py `split_name`); a folder with split-named
subfolders of `.txt` files; a folder with `corpus/` (any of the above, unlabeled) and `tasks/<name>/` (TSV
folders); any other folder: every `.txt` file under it, sorted by path, as split `train`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pipeline.errors import UserInputError
from pipeline.data.source import (Item, Listing, Skip, decode_text, group_splits, ignore_unused, relative, sorted_labels,
                                  visible_children, walk_files)

PAIR_MEMBER = "pair.txt"  # the second sentence of a sentence-pair example
TEXT_COLUMNS = (("sentence1", "sentence2"), ("question1", "question2"), ("question", "sentence"), ("#1 string", "#2 string"),
                ("sentence", None))
LABEL_COLUMNS = ("label", "gold_label", "is_duplicate", "quality")
COLA_WIDTH = 4  # CoLA train/dev: source, label, original acceptability mark, sentence; no header
NOT_TEXT = "not a .txt file (a text corpus is .txt files of documents separated by blank lines)"


def _text_item(text: str, source: str, label: int | None = None, pair: str | None = None) -> Item:
    def load(conversions: list[str]) -> dict[str, bytes]:
        files = {"txt": text.encode("utf-8"), "json": json.dumps({"source": source}).encode()}
        if pair is not None:
            files[PAIR_MEMBER] = pair.encode("utf-8")
        if label is not None:
            files["cls"] = str(label).encode()
        return files

    return Item(source, load, {} if label is None else {"label": label})


def text_input(sample: dict) -> str | tuple[str, str]:
    """What the tokenizer encodes for a sample read from the shards: its text, or (text, pair) for a sentence
    pair, which the tokenizer's post-processor wraps as `<s> A </s></s> B </s>` (RoBERTa)."""
    text = sample["txt"].decode("utf-8")
    return (text, sample[PAIR_MEMBER].decode("utf-8")) if PAIR_MEMBER in sample else text


def split_documents(text: str) -> list[str]:
    """Documents are runs of non-blank lines; inner line breaks are kept, surrounding whitespace stripped."""
    docs, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line.rstrip())
        elif current:
            docs.append("\n".join(current).strip())
            current = []
    if current:
        docs.append("\n".join(current).strip())
    return docs


def _decode(path: Path, root: Path, listing: Listing) -> str | None:
    try:
        return decode_text(path.read_bytes())
    except UnicodeDecodeError as e:
        listing.skipped.append(Skip(relative(path, root), f"not valid UTF-8 (byte {e.start}); {e.reason}; re-save it as UTF-8"))
    except OSError as e:
        listing.skipped.append(Skip(relative(path, root), f"unreadable: {e.strerror}"))
    return None


def _txt_files(files: list[Path], root: Path, listing: Listing) -> list[Path]:
    """The `.txt` files of a folder walk; the others are listed as ignored."""
    for path in files:
        if path.suffix.lower() != ".txt":
            listing.ignored.append(Skip(relative(path, root), NOT_TEXT))
    return [path for path in files if path.suffix.lower() == ".txt"]


def _documents(files: list[Path], root: Path, listing: Listing) -> list[Item]:
    items = []
    for path in files:
        text = _decode(path, root, listing)
        if text is None:
            continue
        docs = split_documents(text)
        if not docs:
            listing.skipped.append(Skip(relative(path, root), "no text (empty or only whitespace)"))
        items += [_text_item(doc, f"{relative(path, root)}#{i}") for i, doc in enumerate(docs)]
    return items


@dataclasses.dataclass
class _Table:
    """Where a TSV keeps its fields: column indices, the row width, and the first data line (0 without header)."""

    text: int
    pair: int | None
    label: int | None
    width: int
    first: int


def _columns(cells: list[str], where: str) -> _Table:
    names = [c.strip().lower() for c in cells]
    label = next((names.index(n) for n in LABEL_COLUMNS if n in names), None)
    for first, second in TEXT_COLUMNS:
        if first in names and (second is None or second in names):
            return _Table(names.index(first), None if second is None else names.index(second), label, len(cells), 1)
    if len(cells) == COLA_WIDTH and cells[1].strip().lstrip("-").isdigit():
        return _Table(3, None, 1, COLA_WIDTH, 0)
    raise UserInputError(
        f"{where}: the first row must be a header naming `sentence` and `label` columns (tab-separated; or a sentence "
        "pair: sentence1+sentence2, question+sentence, question1+question2, #1 String+#2 String; labels may be "
        f"label, gold_label, is_duplicate, Quality); found {cells!r}"
    )


def _read_tsv(path: Path, root: Path, listing: Listing) -> tuple[_Table, list[tuple[str, str | None, str, str]]] | None:
    """The table's layout and its rows (text, pair or None, label, where); bad rows are listed in `skipped`;
    None when the file cannot be decoded (listed too)."""
    text = _decode(path, root, listing)
    if text is None:
        return None
    lines = text.splitlines()
    table = _columns(lines[0].split("\t") if lines else [], relative(path, root))
    rows = []
    for lineno, line in enumerate(lines[table.first :], start=table.first + 1):
        where = f"{relative(path, root)}:{lineno}"
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != table.width:
            listing.skipped.append(Skip(where, f"expected {table.width} tab-separated columns, found {len(cells)}"))
            continue
        sentence = cells[table.text].strip()
        pair = None if table.pair is None else cells[table.pair].strip()
        label = "" if table.label is None else cells[table.label].strip()
        if not sentence or pair == "" or (table.label is not None and not label):
            listing.skipped.append(Skip(where, "empty sentence or label"))
            continue
        rows.append((sentence, pair, label, where))
    return table, rows


def _labeled(tsvs: dict[str, list[Path]], root: Path, listing: Listing) -> Listing:
    rows: dict[str, list[tuple[str, str | None, str, str]]] = {}
    for split, paths in sorted(tsvs.items()):
        for path in paths:
            read = _read_tsv(path, root, listing)
            if read is None:
                continue
            table, split_rows = read
            if table.label is None and split == "test":
                listing.skipped.append(Skip(relative(path, root), "no label column: an unlabeled test set (GLUE ships "
                                            "test.tsv so); not sharded, the final metrics come from the valid split (dev.tsv)"))
                continue
            if table.label is None:
                raise UserInputError(f"{relative(path, root)}: no label column (one of {', '.join(LABEL_COLUMNS)}); "
                                     f"the {split} split of a labeled task needs labels")
            rows.setdefault(split, []).extend(split_rows)
    classes = sorted_labels({label for split_rows in rows.values() for _, _, label, _ in split_rows})
    index = {label: i for i, label in enumerate(classes)}
    for split, split_rows in rows.items():
        listing.splits[split] = [_text_item(s, where, index[label], pair) for s, pair, label, where in split_rows]
    listing.classes = classes
    listing.info["layout"] = "glue tsv"
    return listing


def _folder(root: Path, listing: Listing) -> Listing:
    children = visible_children(root, root, listing)
    tsvs = group_splits([c for c in children if c.is_file() and c.suffix.lower() == ".tsv"], root, listing,
                        name=lambda p: p.stem)
    if tsvs:
        ignore_unused(children, {p for paths in tsvs.values() for p in paths}, root, listing,
                      "not a split file (train.tsv, dev.tsv or valid.tsv or validation.tsv, test.tsv, ...)")
        return _labeled(tsvs, root, listing)
    subdirs = group_splits([c for c in children if c.is_dir()], root, listing)
    if subdirs:
        ignore_unused(children, {p for paths in subdirs.values() for p in paths}, root, listing,
                      "not a split folder (train, valid, test, ...)")
        for split, folders in subdirs.items():
            files = [f for folder in folders for f in walk_files(folder, root, listing)]
            listing.splits[split] = _documents(_txt_files(files, root, listing), root, listing)
    else:
        files = [c for c in children if c.is_file()] + [f for c in children if c.is_dir() for f in walk_files(c, root, listing)]
        listing.splits["train"] = _documents(_txt_files(sorted(files), root, listing), root, listing)
    listing.info["layout"] = "txt"
    return listing


def _corpus_and_tasks(root: Path) -> Listing:
    """`corpus/` (unlabeled .txt) and `tasks/<name>/` (TSV folders): splits `train`, `valid` from the corpus and
    `<name>_train`, `<name>_valid`, `<name>_test` per task."""
    listing = Listing(splits={}, info={"layout": "corpus + tasks", "tasks": {}})
    children = visible_children(root, root, listing)
    if (root / "corpus").exists():
        corpus = list_source(root / "corpus")
        listing.splits.update(corpus.splits)
        listing.absorb(corpus, "corpus/")
    task_dirs = [p for p in visible_children(root / "tasks", root, listing) if p.is_dir()]
    for task_dir in task_dirs:
        task = list_source(task_dir)
        for split, items in task.splits.items():
            listing.splits[f"{task_dir.name}_{split}"] = items
        listing.absorb(task, f"tasks/{task_dir.name}/")
        listing.info["tasks"][task_dir.name] = {"classes": task.classes, "splits": sorted(task.splits)}
    ignore_unused(children, {root / "corpus", root / "tasks"}, root, listing, "neither corpus/ nor tasks/")
    ignore_unused(visible_children(root / "tasks", root, Listing(splits={})), set(task_dirs), root, listing,
                  "not a task folder (tasks/<name>/ holding split TSVs)")
    return listing


def list_source(root: Path) -> Listing:
    if not root.exists():
        raise UserInputError(f"{root}: text source does not exist; pass a .txt file, a folder of .txt files or a GLUE-style .tsv")
    if root.is_dir() and (root / "tasks").is_dir():
        return _corpus_and_tasks(root)
    listing = Listing(splits={})
    if root.is_file():
        if root.suffix.lower() == ".tsv":
            return _labeled({"train": [root]}, root.parent, listing)
        listing.splits["train"] = _documents([root], root.parent, listing)
        listing.info["layout"] = "txt"
        return listing
    _folder(root, listing)
    if not any(listing.splits.values()) and not listing.skipped:
        raise UserInputError(f"{root}: no .txt or .tsv files found")
    return listing
