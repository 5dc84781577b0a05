"""Read the fortune cookie files of Debian's `fortunes` package: one file per category, entries separated by
lines holding a single `%`."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import UserInputError

FORTUNE_DIR = Path("/usr/share/games/fortunes")
EXCLUDED = {"ascii-art"}  # pictures, not text


def categories(root: Path = FORTUNE_DIR) -> list[str]:
    if not root.is_dir():
        raise UserInputError(f"{root}: fortunes not found; install Debian's fortunes (`make setup` does)")
    return sorted(
        p.name for p in root.iterdir() if p.is_file() and not p.is_symlink() and "." not in p.name and p.name not in EXCLUDED
    )


def fortunes(category: str, root: Path = FORTUNE_DIR) -> Iterator[str]:
    text = (root / category).read_text(encoding="utf-8-sig", errors="replace")
    entry: list[str] = []
    for line in text.splitlines():
        if line.strip() == "%":
            if entry and "".join(entry).strip():
                yield "\n".join(entry).strip()
            entry = []
        else:
            entry.append(line.rstrip())
    if entry and "".join(entry).strip():
        yield "\n".join(entry).strip()
