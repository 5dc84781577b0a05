"""Deterministic, atomic WebDataset tar shards and their index.json.

The same samples in the same order give byte-identical tars: members are written in a fixed order with
mtime 0, owner 0:0, no user/group names and mode 0644. Each shard is written under a temporary name and
renamed into place, so a crash never leaves a half-written `<split>-NNNNNN.tar` behind.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from pipeline.io import atomic_write_bytes

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")  # WebDataset splits a member name at its first dot
SHARD_PATTERN = re.compile(r"^(?P<split>.+)-(?P<num>\d{6})\.tar$")


@dataclasses.dataclass
class Sample:
    """One WebDataset sample: `files` maps an extension (`png`, `cls`, `flac`, `txt`, `json`) to bytes."""

    key: str
    files: dict[str, bytes]


@dataclasses.dataclass
class ShardInfo:
    name: str
    num_samples: int
    bytes: int
    sha256: str


def _tar_bytes(samples: list[Sample]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            for ext in sorted(sample.files):
                data = sample.files[ext]
                info = tarfile.TarInfo(f"{sample.key}.{ext}")
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _batches(samples: Iterable[Sample], max_samples: int, max_bytes: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    size = 0
    for sample in samples:
        if not KEY_PATTERN.match(sample.key):
            raise ValueError(f"sample key {sample.key!r} must match {KEY_PATTERN.pattern} (no dots)")
        sample_bytes = sum(len(v) for v in sample.files.values())
        if batch and (len(batch) >= max_samples or size + sample_bytes > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(sample)
        size += sample_bytes
    if batch:
        yield batch


def write_split(
    out_dir: Path, split: str, samples: Iterable[Sample], max_samples: int, max_bytes: int = 1 << 30
) -> list[ShardInfo]:
    """Write `samples` (already in their final, deterministic order) as `out_dir/<split>-NNNNNN.tar`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[ShardInfo] = []
    seen: set[str] = set()
    for num, batch in enumerate(_batches(samples, max_samples, max_bytes)):
        for sample in batch:
            if sample.key in seen:
                raise ValueError(f"duplicate sample key {sample.key!r} in split {split!r}")
            seen.add(sample.key)
        data = _tar_bytes(batch)
        name = f"{split}-{num:06d}.tar"
        atomic_write_bytes(out_dir / name, data)
        shards.append(ShardInfo(name, len(batch), len(data), hashlib.sha256(data).hexdigest()))
    return shards


def remove_stale_shards(out_dir: Path, keep: set[str]) -> list[str]:
    """Delete `<split>-NNNNNN.tar` files a previous run left that the new index does not list."""
    removed = []
    for path in sorted(out_dir.glob("*.tar")):
        if SHARD_PATTERN.match(path.name) and path.name not in keep:
            path.unlink()
            removed.append(path.name)
    return removed


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_bytes_problem(path: Path, entry: dict) -> str | None:
    """Why the file at `path` is not the shard index.json's `entry` describes (missing, another size, another
    sha256), or None when its bytes match. Reads the whole file when the size matches."""
    if not path.is_file():
        return "listed in index.json but missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"{size} bytes, index.json says {entry['bytes']} (truncated or changed after `shard` wrote it)"
    if sha256_file(path) != entry["sha256"]:
        return "sha256 differs from index.json (changed after `shard` wrote it)"
    return None


def verify_index(out_dir: Path) -> list[str]:
    """Re-read every shard listed in index.json; return a list of problems (empty when all is consistent)."""
    index = json.loads((out_dir / "index.json").read_text(encoding="utf-8"))
    problems = []
    for split, info in index["splits"].items():
        total = 0
        for shard in info["shards"]:
            path = out_dir / shard["name"]
            problem = shard_bytes_problem(path, shard)
            if problem is not None:  # checked first: tarfile cannot always open a truncated file
                problems.append(f"{shard['name']}: {problem}")
                total += shard["num_samples"]
                continue
            with tarfile.open(path) as tar:
                keys = {member.name.split(".", 1)[0] for member in tar.getmembers()}
            if len(keys) != shard["num_samples"]:
                problems.append(f"{shard['name']}: {len(keys)} samples, index.json says {shard['num_samples']}")
            if shard["num_samples"] == 0:
                problems.append(f"{shard['name']}: empty shard")
            total += len(keys)
        if total != info["num_samples"]:
            problems.append(f"split {split}: {total} samples in shards, index.json says {info['num_samples']}")
    return problems
