"""Text sources: unlabeled documents in `.txt` files, or labeled GLUE-style TSV files.

  * `.txt`: UTF-8 text; documents are separated by one or more blank lines; each document becomes one sample
    (`.txt`). A file that is not valid UTF-8 is skipped as a whole and listed with the byte offset.
  * `.tsv`: a header row with `sentence` and `label` columns (other columns are ignored), one example per
    line; each becomes a sample with `.txt` and `.cls` (the label's index in the sorted label list).
Layouts: a single `.txt`/`.tsv` file (split `train`); a folder with `train.tsv`, `dev.tsv`/`valid.tsv`,
`test.tsv` (GLUE); a folder with `train/`, `valid/`, `test/` subfolders of `.txt` files; any other folder:
all `.txt` files under it, sorted by path, as split `train`.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import UserInputError
from pipeline.data.source import SPLIT_DIRS, Item, Listing, Skip, relative, sorted_labels, split_subdirs


def _text_item(text: str, source: str, label: int | None = None) -> Item:
    def load() -> dict[str, bytes]:
        files = {"txt": text.encode("utf-8"), "json": json.dumps({"source": source}).encode()}
        if label is not None:
            files["cls"] = str(label).encode()
        return files

    return Item(source, load, {} if label is None else {"label": label})


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
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        listing.skipped.append(Skip(relative(path, root), f"not valid UTF-8 (byte {e.start}); re-save it as UTF-8"))
    except OSError as e:
        listing.skipped.append(Skip(relative(path, root), f"unreadable: {e.strerror}"))
    return None


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


def _read_tsv(path: Path, root: Path, listing: Listing) -> list[tuple[str, str, str]]:
    """Rows of (sentence, label, where); bad rows are listed in `skipped`."""
    text = _decode(path, root, listing)
    if text is None:
        return []
    lines = text.splitlines()
    header = lines[0].split("\t") if lines else []
    if "sentence" not in header or "label" not in header:
        raise UserInputError(
            f"{relative(path, root)}: the first row must be a header naming `sentence` and `label` columns "
            f"(tab-separated); found {header!r}"
        )
    s_col, l_col = header.index("sentence"), header.index("label")
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        where = f"{relative(path, root)}:{lineno}"
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(header):
            listing.skipped.append(Skip(where, f"expected {len(header)} tab-separated columns, found {len(cells)}"))
            continue
        sentence, label = cells[s_col].strip(), cells[l_col].strip()
        if not sentence or not label:
            listing.skipped.append(Skip(where, "empty sentence or label"))
            continue
        rows.append((sentence, label, where))
    return rows


def _labeled(tsvs: dict[str, Path], root: Path, listing: Listing) -> Listing:
    rows = {split: _read_tsv(path, root, listing) for split, path in tsvs.items()}
    classes = sorted_labels({label for split_rows in rows.values() for _, label, _ in split_rows})
    index = {label: i for i, label in enumerate(classes)}
    for split, split_rows in rows.items():
        listing.splits[split] = [_text_item(s, where, index[label]) for s, label, where in split_rows]
    listing.classes = classes
    listing.info["layout"] = "glue tsv"
    return listing


def list_source(root: Path) -> Listing:
    if not root.exists():
        raise UserInputError(f"{root}: text source does not exist; pass a .txt file, a folder of .txt files or a GLUE-style .tsv")
    listing = Listing(splits={})
    if root.is_file():
        if root.suffix == ".tsv":
            return _labeled({"train": root}, root.parent, listing)
        listing.splits["train"] = _documents([root], root.parent, listing)
        listing.info["layout"] = "txt"
        return listing
    tsvs = {SPLIT_DIRS[p.stem.lower()]: p for p in sorted(root.glob("*.tsv")) if p.stem.lower() in SPLIT_DIRS}
    if tsvs:
        return _labeled(tsvs, root, listing)
    subdirs = split_subdirs(root)
    if subdirs:
        for split, folder in subdirs.items():
            listing.splits[split] = _documents(sorted(folder.rglob("*.txt")), root, listing)
    else:
        listing.splits["train"] = _documents(sorted(root.rglob("*.txt")), root, listing)
    listing.info["layout"] = "txt"
    if not any(listing.splits.values()) and not listing.skipped:
        raise UserInputError(f"{root}: no .txt or .tsv files found")
    return listing
