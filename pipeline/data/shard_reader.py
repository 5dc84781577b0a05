"""Random access to the samples of WebDataset shards, and the deterministic global batch order of training.

Why random access rather than a stream: a training batch must be a pure function of (seed, batch number), so
that (a) a run on 1 process and on N processes with the same global batch sees exactly the same samples,
(b) a killed run resumes at the exact next batch, and (c) every rank gets exactly the same number of batches
whatever the shard sizes. Shards stay standard WebDataset tars; like webdataset's `wids`, a tar's member
offsets are indexed on first use (headers only) and samples are read with one seek each.

Integrity: before a split is used, each of its shards is checked against index.json (size, then sha256 of the
bytes), once per process and file version; a changed, truncated or missing shard is a UserInputError saying to
re-run `shard`. A sample that still fails to decode during training is reported with its shard and key
(`IndexedShards.decoding`).

Remote shards (http(s)://, s3://, gs://, pipe:) are read from a folder of the node's shard cache
(pipeline/data/shard_cache.py): the split's shards are fetched into it, and checked against index.json's sha256,
when the split is first opened; reading is then the same as for a local folder.
"""
from __future__ import annotations

import bisect
import contextlib
import functools
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import torch

from pipeline.data import shard_cache
from pipeline.data.shard_writer import shard_bytes_problem
from pipeline.errors import UserInputError


BLOCK = 512


def tar_members(path: Path) -> list[tuple[str, int, int]]:
    """(name, byte offset of the data, size) of every file in a tar, from its headers alone. A plain ustar scan
    (ten times faster than tarfile's, which parses every header field in Python); tars with anything else
    (pax or GNU long-name headers, directories, links, base-256 sizes) are read with tarfile."""
    members = []
    with open(path, "rb") as f:
        offset = 0
        while True:
            header = f.read(BLOCK)
            if len(header) < BLOCK or not header.strip(b"\0"):
                break  # end of archive (a short file shows up as a sample count mismatch)
            if header[156:157] not in (b"0", b"\0") or header[124] & 0x80:
                return _tarfile_members(path)
            stored = header[148:156].split(b"\0", 1)[0].strip()
            if not stored or int(stored, 8) != sum(header[:148]) + 8 * 32 + sum(header[156:]):
                raise UserInputError(f"{path}: corrupt tar header at byte {offset}; re-run `python -m pipeline shard`")
            name = header[:100].split(b"\0", 1)[0].decode()
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
            if prefix:
                name = f"{prefix.decode()}/{name}"
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            members.append((name, offset + BLOCK, size))
            offset += BLOCK + -(-size // BLOCK) * BLOCK
            f.seek(offset)
    return members


def _tarfile_members(path: Path) -> list[tuple[str, int, int]]:
    with tarfile.open(path) as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]


# (path, size, mtime in ns) of shard files whose sha256 matched index.json in this process
_VERIFIED: set[tuple[str, int, int]] = set()


def verify_shards(shard_dir: Path, index: dict, split: str) -> None:
    """Raise UserInputError unless every shard of `split` has the size and sha256 index.json records. Hashes a
    file once per process (again only if its size or mtime changes): one sequential read per shard per run."""
    for entry in index["splits"][split]["shards"]:
        path = Path(shard_dir) / entry["name"]
        stat = path.stat() if path.is_file() else None
        version = (str(path.resolve()), stat.st_size, stat.st_mtime_ns) if stat else None
        if version in _VERIFIED:
            continue
        problem = shard_bytes_problem(path, entry)
        if problem is not None:
            source = f" --source {index['source']}" if index.get("source") else ""
            raise UserInputError(f"{path}: {problem}; the shards no longer match their index.json: re-run "
                                 f"`python -m pipeline shard --modality {index.get('modality')}{source} --out {shard_dir}`")
        _VERIFIED.add(version)


class IndexedShards:
    """Samples of one split, addressed 0..len-1 in index.json order; each sample is {"__key__", ext: bytes}.
    `verify` (default on) checks the split's shards against index.json first (`verify_shards`); in a shard
    cache folder (`shard_cache.local_folder`) the split's shards are fetched and checked instead."""

    def __init__(self, shard_dir: Path, split: str, verify: bool = True):
        index_path = Path(shard_dir) / "index.json"
        if not index_path.exists():
            raise UserInputError(f"{index_path}: no shards; run `python -m pipeline shard` first")
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if split not in index["splits"]:
            raise UserInputError(f"{index_path}: no split {split!r}; it has {sorted(index['splits'])}")
        if shard_cache.origin(shard_dir) is not None:  # a cache folder of remote shards: fetched and checked there
            shard_cache.fetch_split(Path(shard_dir), index, split)
        elif verify:
            verify_shards(Path(shard_dir), index, split)
        self.index = index
        self.paths = [Path(shard_dir) / s["name"] for s in index["splits"][split]["shards"]]
        counts = [s["num_samples"] for s in index["splits"][split]["shards"]]
        self.starts = [0]
        for count in counts:
            self.starts.append(self.starts[-1] + count)
        # shard -> (sample keys, per sample [(extension, byte offset, size)]), filled on first access
        self._tables: dict[int, tuple[list[str], list[list[tuple[str, int, int]]]]] = {}
        self._files: dict[int, object] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def _sample_table(self, shard: int) -> tuple[list[str], list[list[tuple[str, int, int]]]]:
        if shard not in self._tables:
            samples: list[list[tuple[str, int, int]]] = []
            keys: list[str] = []
            for name, offset, size in tar_members(self.paths[shard]):
                key, ext = name.split(".", 1)
                if not keys or keys[-1] != key:
                    keys.append(key)
                    samples.append([])
                samples[-1].append((ext, offset, size))
            expected = self.starts[shard + 1] - self.starts[shard]
            if len(samples) != expected:
                raise UserInputError(f"{self.paths[shard]}: {len(samples)} samples but index.json says {expected}; re-run `shard`")
            self._tables[shard] = (keys, samples)
        return self._tables[shard]

    def __getitem__(self, i: int) -> dict[str, bytes | str]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        shard = bisect.bisect_right(self.starts, i) - 1
        keys, table = self._sample_table(shard)
        local = i - self.starts[shard]
        sample: dict[str, bytes | str] = {"__key__": keys[local]}
        for ext, offset, size in table[local]:
            sample[ext] = self._read(shard, offset, size)
        return sample

    def where(self, i: int) -> str:
        """`<shard path>, sample <key>` for sample i, as error messages name it."""
        shard = bisect.bisect_right(self.starts, i) - 1
        keys, _ = self._sample_table(shard)
        return f"{self.paths[shard]}, sample {keys[i - self.starts[shard]]}"

    @contextlib.contextmanager
    def decoding(self, i: int) -> Iterator[None]:
        """Wrap the decoding of sample i: any error becomes a UserInputError naming the shard and sample key."""
        try:
            yield
        except UserInputError:
            raise
        except Exception as e:  # noqa: BLE001 (whatever the decoder raises, the message must name the sample)
            raise UserInputError(f"{self.where(i)}: cannot decode ({type(e).__name__}: {e}); "
                                 "re-run `python -m pipeline shard` to rewrite the shards") from e

    def member(self, i: int, ext: str) -> bytes | None:
        """One member (e.g. "cls") of sample i, or None when the sample has none; reads only that member."""
        shard = bisect.bisect_right(self.starts, i) - 1
        _, table = self._sample_table(shard)
        for name, offset, size in table[i - self.starts[shard]]:
            if name == ext:
                return self._read(shard, offset, size)
        return None

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        if shard not in self._files:
            self._files[shard] = open(self.paths[shard], "rb")  # noqa: SIM115 (kept open for the worker's life)
        f = self._files[shard]
        f.seek(offset)  # type: ignore[attr-defined]
        return f.read(size)  # type: ignore[attr-defined]

    def __getstate__(self):  # open files do not cross into DataLoader workers
        state = dict(self.__dict__)
        state["_files"] = {}
        return state


@functools.lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, num_samples: int) -> torch.Tensor:
    """The seeded permutation of sample ids for one pass over the data (cached: computed once per epoch)."""
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def global_batch(seed: int, batch: int, num_samples: int, global_batch_size: int) -> list[int]:
    """Sample ids of global batch number `batch`: epochs are seeded permutations, cut into full batches
    (a partial batch at the end of an epoch is dropped; the next epoch reshuffles)."""
    per_epoch = num_samples // global_batch_size
    if per_epoch == 0:
        raise UserInputError(f"global batch {global_batch_size} is larger than the {num_samples} training samples")
    epoch, pos = divmod(batch, per_epoch)
    return epoch_order(seed, epoch, num_samples)[pos * global_batch_size : (pos + 1) * global_batch_size].tolist()


class RankBatchSampler(torch.utils.data.Sampler[list[int]]):
    """This rank's rows of global batches `start`, `start+1`, ..., `stop-1`: every rank gets the same number of
    batches, and the union over ranks of batch b is exactly global batch b (whatever the world size)."""

    def __init__(self, num_samples: int, global_batch_size: int, rank: int, world_size: int, seed: int, start: int, stop: int):
        if global_batch_size % world_size:
            raise UserInputError(f"global batch {global_batch_size} is not divisible by world size {world_size}")
        self.num_samples, self.global_batch_size = num_samples, global_batch_size
        self.rank, self.world_size, self.seed, self.start, self.stop = rank, world_size, seed, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        local = self.global_batch_size // self.world_size
        for b in range(self.start, self.stop):
            ids = global_batch(self.seed, b, self.num_samples, self.global_batch_size)
            yield ids[self.rank * local : (self.rank + 1) * local]
