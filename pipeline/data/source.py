"""What a source reader hands to the shard stage: items per split, files it could not use, class names; and the
rules every reader shares: which names are splits, which names are never data, how text files are decoded.

Readers list inputs cheaply; decoding happens in `Item.load`, which raises (BadSample or anything else) for a
file that turns out to be unusable, so the shard stage can record it in `skipped` instead of dropping it.

Two lists say what was not used, each entry {path, reason}:
  skipped  inputs the layout selected that could not be used (undecodable, too short, malformed rows, ...);
  ignored  entries the layout does not select: hidden and OS/tool files and folders (`.DS_Store`, `__MACOSX/`,
           `.ipynb_checkpoints/`, `Thumbs.db`, ...) anywhere, and top-level files or folders that are not a
           split, a class folder or a manifest. Nothing under the source root is left out of both.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import UserInputError

# Spellings of the three splits (compared case-insensitively); the shards always say train / valid / test.
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "valid": "valid", "val": "valid", "validation": "valid", "dev": "valid", "development": "valid",
    "test": "test", "testing": "test",
}
# A split name with a subset qualifier: LibriSpeech's dev-clean / test-other / train-clean-100, MNLI's
# dev_matched / dev_mismatched, COCO-style val2017. Only these qualifiers, so a class folder such as
# `test-tube/` stays a class.
_QUALIFIED = re.compile(r"^(?P<base>[a-z]+)(?:[-_](?:(?:clean|other)(?:[-_]\d+)?|matched|mismatched)|\d+)$")
# Names that are never data: created by operating systems, archivers, notebooks, editors and version control.
SYSTEM_NAMES = {"__macosx", "thumbs.db", "ehthumbs.db", "desktop.ini", "$recycle.bin", "system volume information",
                "__pycache__", "lost+found", "icon\r"}


@dataclasses.dataclass
class Item:
    source: str  # path (relative to the source root) or "file:line", for provenance and skip reports
    # extension -> bytes; appends what it changed lossily (resampling, clipping, ...) to the list it is given;
    # raises BadSample (or anything else) for an unusable input
    load: Callable[[list[str]], dict[str, bytes]]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Skip:
    path: str
    reason: str


@dataclasses.dataclass
class Listing:
    splits: dict[str, list[Item]]
    skipped: list[Skip] = dataclasses.field(default_factory=list)
    ignored: list[Skip] = dataclasses.field(default_factory=list)
    classes: list[str] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def absorb(self, other: Listing, prefix: str) -> None:
        """Take `other`'s skipped and ignored entries, their paths prefixed (a sub-folder read on its own)."""
        self.skipped += [Skip(prefix + s.path, s.reason) for s in other.skipped]
        self.ignored += [Skip(prefix + s.path, s.reason) for s in other.ignored]


def split_name(name: str) -> tuple[str, bool] | None:
    """(split, qualified) for a file stem or folder name that means a split, else None.
    `Validation` -> ("valid", False); `dev-clean` -> ("valid", True)."""
    lower = name.lower()
    if lower in SPLIT_NAMES:
        return SPLIT_NAMES[lower], False
    match = _QUALIFIED.match(lower)
    if match and match["base"] in SPLIT_NAMES:
        return SPLIT_NAMES[match["base"]], True
    return None


def ignored_reason(name: str) -> str | None:
    """Why a file or folder name is never a class, sample or split (None: it may be data)."""
    if name.startswith("."):
        return "hidden file or folder (name starts with '.'); never data"
    if name.lower() in SYSTEM_NAMES or name.startswith("~$") or name.endswith("~"):
        return "operating-system or tool file; never data"
    return None


def visible_children(folder: Path, root: Path, listing: Listing) -> list[Path]:
    """The entries of `folder`, sorted, without hidden and OS/tool ones (those go to `listing.ignored`)."""
    children = []
    for child in sorted(folder.iterdir()):
        reason = ignored_reason(child.name)
        if reason is None:
            children.append(child)
        else:
            listing.ignored.append(Skip(relative(child, root) + ("/" if child.is_dir() else ""), reason))
    return children


def walk_files(folder: Path, root: Path, listing: Listing) -> list[Path]:
    """Every file under `folder`, sorted by path (as sorted(rglob) would), not descending into hidden or OS/tool
    folders; those and hidden files go to `listing.ignored`, unreadable folders to `listing.skipped`."""
    files: list[Path] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            children = visible_children(current, root, listing)
        except OSError as e:
            listing.skipped.append(Skip(relative(current, root) + "/", f"unreadable folder: {e.strerror}"))
            continue
        for child in children:
            if child.is_dir():
                pending.append(child)
            elif child.is_file():
                files.append(child)
    return sorted(files)


def group_splits(entries: list[Path], root: Path, listing: Listing, name: Callable[[Path], str] = lambda p: p.name) -> dict[str, list[Path]]:
    """Entries whose name (by `name`, e.g. the stem of a file) spells a split, grouped by split.

    Two plain spellings of one split (`val/` and `validation/`) are an error: one is likely a copy of the other.
    Qualified subsets (`dev-clean/` and `dev-other/`, or `dev/` and `dev-other/`) are merged in name order.
    What went into each split is recorded in `listing.info["split_sources"]`.
    """
    groups: dict[str, list[Path]] = {}
    plain: dict[str, Path] = {}
    for entry in entries:
        found = split_name(name(entry))
        if found is None:
            continue
        split, qualified = found
        if not qualified:
            if split in plain:
                raise UserInputError(f"{root}: both {plain[split].name} and {entry.name} mean split '{split}'; keep one "
                                     "(subsets such as dev-clean and dev-other are merged, two spellings are not)")
            plain[split] = entry
        groups.setdefault(split, []).append(entry)
    if groups:
        listing.info["split_sources"] = {split: [relative(p, root) for p in paths] for split, paths in sorted(groups.items())}
    return groups


def ignore_unused(entries: list[Path], used: set[Path], root: Path, listing: Listing, reason: str) -> None:
    """List every entry not in `used` under `listing.ignored` with `reason` (top-level entries outside the layout)."""
    for entry in entries:
        if entry not in used:
            listing.ignored.append(Skip(relative(entry, root) + ("/" if entry.is_dir() else ""), reason))


def decode_text(data: bytes) -> str:
    """UTF-8 text with a leading byte-order mark removed (Windows editors write one); raises UnicodeDecodeError
    with a reason that names UTF-16 when the bytes start with its byte-order mark."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UnicodeDecodeError("utf-8", data, 0, 2, "UTF-16 (starts with its byte-order mark)")
    return data.decode("utf-8-sig")


def read_text(path: Path, root: Path) -> str:
    """A text file the run cannot do without (a manifest, a transcript file): UTF-8, BOM stripped; not UTF-8 is a
    UserInputError naming the file."""
    try:
        return decode_text(path.read_bytes())
    except UnicodeDecodeError as e:
        raise UserInputError(f"{relative(path, root)}: not valid UTF-8 (byte {e.start}: {e.reason}); re-save it as UTF-8") from None
    except OSError as e:
        raise UserInputError(f"{relative(path, root)}: unreadable ({e.strerror})") from None


def relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def sorted_labels(labels: set[str]) -> list[str]:
    """Class names in a stable order: numerically when every label is an integer, else lexicographically."""
    if labels and all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)
