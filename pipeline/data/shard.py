"""The `shard` stage: a source (embedded default or the user's own data) -> WebDataset tar shards + index.json.

index.json records, per split, the sample count and each shard's name, sample count, bytes and sha256; the
class names; and a `skipped` list of {path, reason} for every input that was not used. Nothing is dropped
silently: every listed item ends up either in a shard or in `skipped`, and the stage checks that.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline import paths

from pipeline.data import image_source

from pipeline.data import speech_source

from pipeline.data import text_source
from pipeline.errors import BadSample, UserInputError
from pipeline.config import Shard
from pipeline.data.shard_writer import Sample, remove_stale_shards, write_split
from pipeline.io import atomic_write_json
from pipeline.data.source import Item, Listing, Skip

READERS = {"image": image_source.list_source, "speech": speech_source.list_source, "text": text_source.list_source}
INDEX_VERSION = 1


def list_text_with_tasks(root: Path) -> Listing:
    """Text layout with `corpus/` (unlabeled .txt) and `tasks/<name>/` (GLUE TSVs): splits `train`, `valid`
    from the corpus and `<name>_train`, `<name>_valid`, `<name>_test` per task."""
    listing = Listing(splits={}, info={"layout": "corpus + tasks", "tasks": {}})
    if (root / "corpus").exists():
        corpus = text_source.list_source(root / "corpus")
        listing.splits.update(corpus.splits)
        listing.skipped += [Skip(f"corpus/{s.path}", s.reason) for s in corpus.skipped]
    for task_dir in sorted(p for p in (root / "tasks").iterdir() if p.is_dir()):
        task = text_source.list_source(task_dir)
        for split, items in task.splits.items():
            listing.splits[f"{task_dir.name}_{split}"] = items
        listing.skipped += [Skip(f"tasks/{task_dir.name}/{s.path}", s.reason) for s in task.skipped]
        listing.info["tasks"][task_dir.name] = {"classes": task.classes, "splits": sorted(task.splits)}
    return listing


def list_source(modality: str, source: Path) -> Listing:
    if modality == "text" and source.is_dir() and (source / "tasks").is_dir():
        return list_text_with_tasks(source)
    return READERS[modality](source)


def _samples(split: str, items: list[Item], skipped: list[Skip], bar: tqdm) -> Iterator[Sample]:
    for i, item in enumerate(items):
        bar.update(1)
        try:
            files = item.load()
        except BadSample as e:
            skipped.append(Skip(item.source, str(e)))
            continue
        yield Sample(f"{split}_{i:07d}", files)


def shard(modality: str, source: Path | None, out: Path | None, cfg: Shard, progress: bool = True) -> dict[str, Any]:
    """Shard `source` (default: the prepared embedded data) into `out` (default: data/shards/<modality>)."""
    source = source if source is not None else paths.raw_dir(modality)
    out = out if out is not None else paths.shards_dir(modality)
    if not source.exists() and source == paths.raw_dir(modality):
        raise UserInputError(f"{source}: embedded data not prepared; run `python -m pipeline prepare --modality {modality}`")
    listing = list_source(modality, source)
    total = sum(len(items) for items in listing.splits.values())
    if total == 0:
        raise UserInputError(f"{source}: no usable {modality} inputs found" + _skip_summary(listing.skipped))
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, Any] = {}
    skipped = list(listing.skipped)
    with tqdm(total=total, desc=f"shard {modality}", unit="sample", disable=not progress, file=sys.stderr) as bar:
        for split, items in sorted(listing.splits.items()):
            before = len(skipped)
            shards = write_split(out, split, _samples(split, items, skipped, bar), cfg.max_samples_per_shard, cfg.max_bytes_per_shard)
            written = sum(s.num_samples for s in shards)
            if written + (len(skipped) - before) != len(items):  # never silently short
                raise RuntimeError(f"split {split}: {len(items)} inputs but {written} written + {len(skipped) - before} skipped")
            splits[split] = {"num_samples": written, "shards": [dataclasses.asdict(s) for s in shards]}
    if not any(info["num_samples"] for info in splits.values()):
        raise UserInputError(f"{source}: every input was unusable" + _skip_summary(skipped))
    index = {
        "version": INDEX_VERSION,
        "modality": modality,
        "format": "webdataset",
        "source": str(source),
        "layout": listing.info.get("layout"),
        "policy": listing.info.get("policy"),
        "classes": listing.classes,
        "tasks": listing.info.get("tasks"),
        "num_samples": sum(info["num_samples"] for info in splits.values()),
        "splits": splits,
        "skipped": [dataclasses.asdict(s) for s in skipped],
    }
    keep = {s["name"] for info in splits.values() for s in info["shards"]}
    atomic_write_json(out / "index.json", index)
    remove_stale_shards(out, keep)
    return index


def _skip_summary(skipped: list[Skip], limit: int = 5) -> str:
    if not skipped:
        return ""
    lines = [f"\n  {s.path}: {s.reason}" for s in skipped[:limit]]
    more = f"\n  ... and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"; {len(skipped)} skipped:" + "".join(lines) + more
