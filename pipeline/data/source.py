"""What a source reader hands to the shard stage: items per split, files it could not use, class names.

Readers list inputs cheaply; decoding happens in `Item.load`, which raises BadSample for a file that turns
out to be unusable, so the shard stage can record it in `skipped` instead of dropping it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Folder names that mean a split, in any source layout; `val`/`dev` are spelled `valid` in the shards.
SPLIT_DIRS = {"train": "train", "val": "valid", "valid": "valid", "dev": "valid", "test": "test"}


@dataclasses.dataclass
class Item:
    source: str  # path (relative to the source root) or "file:line", for provenance and skip reports
    load: Callable[[], dict[str, bytes]]  # extension -> bytes; raises BadSample
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Skip:
    path: str
    reason: str


@dataclasses.dataclass
class Listing:
    splits: dict[str, list[Item]]
    skipped: list[Skip] = dataclasses.field(default_factory=list)
    classes: list[str] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def split_subdirs(root: Path) -> dict[str, Path]:
    """`root/{train,val,valid,dev,test}/` folders mapped to split names (empty when there are none)."""
    found: dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        split = SPLIT_DIRS.get(child.name.lower())
        if child.is_dir() and split is not None:
            if split in found:
                raise_duplicate_split(root, split, found[split], child)
            found[split] = child
    return found


def raise_duplicate_split(root: Path, split: str, first: Path, second: Path) -> None:
    from pipeline.errors import UserInputError

    raise UserInputError(f"{root}: both {first.name}/ and {second.name}/ mean split '{split}'; keep one")


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
