"""The `shard` stage: a source (embedded default or the user's own data) -> WebDataset tar shards + index.json.

index.json records, per split, the sample count and each shard's name, sample count, bytes and sha256; the
class names; `split_sources` (which folders or files made each split); `conversions` ({path, changes} for every
file converted lossily: resampled, mixed to mono, re-quantized, scaled down instead of clipped, colour depth
reduced, ...); `skipped` ({path, reason} for every selected input that was not used) and `ignored` ({path, reason}
for hidden and OS/tool files and for top-level entries outside the layout). Nothing is dropped silently: every
listed item ends up either in a shard or in `skipped`, and the stage checks that. An input whose decoding
raises anything (a decoder's error or safety limit, a warning turned into an error) is skipped, never fatal.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline import paths
from pipeline.config import Shard
from pipeline.data import image_source, speech_source, text_source
from pipeline.data.shard_writer import Sample, remove_stale_shards, write_split
from pipeline.data.source import Item, Listing, Skip
from pipeline.errors import BadSample, UserInputError
from pipeline.io import atomic_write_json

INDEX_VERSION = 1


def list_source(modality: str, source: Path, cfg: Shard) -> Listing:
    if modality == "speech":
        return speech_source.list_source(source, cfg.min_seconds)
    return {"image": image_source.list_source, "text": text_source.list_source}[modality](source)


def _samples(split: str, items: list[Item], skipped: list[Skip], conversions: list[dict[str, Any]], bar: tqdm) -> Iterator[Sample]:
    for i, item in enumerate(items):
        bar.update(1)
        changes: list[str] = []
        try:
            files = item.load(changes)
        except BadSample as e:
            skipped.append(Skip(item.source, str(e)))
            continue
        except Exception as e:  # noqa: BLE001 (one undecodable file, whatever the decoder raises, is not the run's end)
            skipped.append(Skip(item.source, f"cannot decode: {type(e).__name__}: {e}"))
            continue
        if changes:
            conversions.append({"path": item.source, "changes": changes})
        yield Sample(f"{split}_{i:07d}", files)


def shard(modality: str, source: Path | None, out: Path | None, cfg: Shard, progress: bool = True) -> dict[str, Any]:
    """Shard `source` (default: the prepared embedded data) into `out` (default: data/shards/<modality>)."""
    source = source if source is not None else paths.raw_dir(modality)
    out = out if out is not None else paths.shards_dir(modality)
    if not source.exists() and source == paths.raw_dir(modality):
        raise UserInputError(f"{source}: embedded data not prepared; run `python -m pipeline prepare --modality {modality}`")
    listing = list_source(modality, source, cfg)
    total = sum(len(items) for items in listing.splits.values())
    if total == 0:
        raise UserInputError(f"{source}: no usable {modality} inputs found" + _skip_summary(listing.skipped)
                             + _skip_summary(listing.ignored, "ignored"))
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, Any] = {}
    skipped = list(listing.skipped)
    conversions: list[dict[str, Any]] = []
    with tqdm(total=total, desc=f"shard {modality}", unit="sample", disable=not progress, file=sys.stderr) as bar:
        for split, items in sorted(listing.splits.items()):
            before = len(skipped)
            shards = write_split(out, split, _samples(split, items, skipped, conversions, bar), cfg.max_samples_per_shard, cfg.max_bytes_per_shard)
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
        "split_sources": listing.info.get("split_sources"),
        "min_seconds": listing.info.get("min_seconds"),
        "num_samples": sum(info["num_samples"] for info in splits.values()),
        "splits": splits,
        "conversions": conversions,
        "skipped": [dataclasses.asdict(s) for s in skipped],
        "ignored": [dataclasses.asdict(s) for s in listing.ignored],
    }
    keep = {s["name"] for info in splits.values() for s in info["shards"]}
    atomic_write_json(out / "index.json", index)
    remove_stale_shards(out, keep)
    return index


def _skip_summary(skipped: list[Skip], what: str = "skipped", limit: int = 5) -> str:
    if not skipped:
        return ""
    lines = [f"\n  {s.path}: {s.reason}" for s in skipped[:limit]]
    more = f"\n  ... and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"; {len(skipped)} {what}:" + "".join(lines) + more
