"""Small previews of written shards for people to look at (Dagster metadata, README): an image grid, a few
transcripts with durations, a few text samples. Read with plain tarfile, so they also check the shards decode."""
from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_index(shard_dir: Path) -> dict[str, Any]:
    return json.loads((shard_dir / "index.json").read_text(encoding="utf-8"))


def first_samples(shard_dir: Path, split: str, count: int) -> Iterator[dict[str, bytes]]:
    """The first `count` samples of `split`, each as {extension: bytes}, in shard order."""
    index = read_index(shard_dir)
    seen = 0
    for shard in index["splits"][split]["shards"]:
        with tarfile.open(shard_dir / shard["name"]) as tar:
            sample: dict[str, bytes] = {}
            key = None
            for member in tar:
                member_key, ext = member.name.split(".", 1)
                if key is not None and member_key != key:
                    yield sample
                    seen += 1
                    if seen == count:
                        return
                    sample = {}
                key = member_key
                sample[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
            if sample:
                yield sample
                seen += 1
                if seen == count:
                    return


def _first_split(index: dict[str, Any], preferred: str = "train") -> str:
    return preferred if preferred in index["splits"] else sorted(index["splits"])[0]


def image_grid_png(shard_dir: Path, rows: int = 4, cols: int = 8, cell: int = 56) -> bytes:
    """A rows x cols grid of the first training images, each scaled to `cell` pixels, with class captions."""
    from PIL import Image, ImageDraw

    index = read_index(shard_dir)
    classes = index.get("classes") or []
    grid = Image.new("RGB", (cols * cell, rows * (cell + 12)), "white")
    draw = ImageDraw.Draw(grid)
    for i, sample in enumerate(first_samples(shard_dir, _first_split(index), rows * cols)):
        data = sample.get("png") or sample.get("jpg")
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
        x, y = (i % cols) * cell, (i // cols) * (cell + 12)
        grid.paste(img, (x, y))
        if "cls" in sample:
            label = int(sample["cls"])
            draw.text((x + 2, y + cell), (classes[label] if label < len(classes) else str(label))[:9], fill="black")
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()


def speech_examples(shard_dir: Path, count: int = 5, split: str | None = None) -> list[dict[str, Any]]:
    index = read_index(shard_dir)
    split = split or _first_split(index)
    rows = []
    for sample in first_samples(shard_dir, split, count):
        meta = json.loads(sample.get("json", b"{}"))
        rows.append({"split": split, "seconds": meta.get("duration"), "transcript": sample["txt"].decode("utf-8")})
    return rows


def text_examples(shard_dir: Path, count: int = 5, split: str | None = None, max_chars: int | None = 200) -> list[dict[str, Any]]:
    index = read_index(shard_dir)
    split = split or _first_split(index)
    rows = []
    for sample in first_samples(shard_dir, split, count):
        text = sample["txt"].decode("utf-8")
        if max_chars is not None and len(text) > max_chars:
            text = text[:max_chars] + "..."
        rows.append({"split": split, "text": text, "cls": sample.get("cls", b"").decode()})
    return rows
