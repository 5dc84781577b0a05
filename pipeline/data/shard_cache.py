"""Shards from an HTTP server, object storage or a command, fetched once per node into a local cache and then
read by index like local shards (pipeline/data/shard_reader.py), the way webdataset's `wids` caches remote shards.

Locations (`--shards`): a local folder (read in place, as before); `http://HOST/PATH` or `https://...` (the
standard library's urllib); `s3://BUCKET/PATH` or `gs://BUCKET/PATH` (fsspec with s3fs or gcsfs: the optional
extras `pip install '.[s3]'` or `'.[gs]'`); `pipe:COMMAND`, a shell command that writes one file on stdout, `{}` in it
replaced by the file name (appended when there is no `{}`), e.g. `pipe:aws s3 cp s3://bucket/shards/{} -` (as
webdataset's `pipe:` URLs; opened with webdataset.gopen). index.json is read from the same location.

Layout of the cache (one per node: put it on the node's local disk):
  <cache>/blobs/<sha256>.tar          every shard, named by the sha256 index.json records (content-addressed:
                                      the same shard under two URLs is stored once)
  <cache>/sources/<digest of URL>/    index.json as last read from the location, origin.json ({"url": ...})
                                      and one symbolic link per fetched shard name -> ../../blobs/<sha256>.tar
The stages read that sources/ folder as a shard folder, so batches, resume and the run's identity (the digest of
index.json) are the same as with a local copy: training from a URL gives the same weights as training from the
folder the URL serves.

Guarantees: a download goes to a temporary file that is renamed into blobs/ only after its size and sha256
match index.json; processes of one node take turns through a file lock (a shard is downloaded once per node,
not once per rank); a cached shard's sha256 is checked again once per process (a mismatch is downloaded anew);
least recently used shards (by the blob's modification time, touched on every use) are deleted when the cache
grows past its limit, never the shards of the split being fetched. Transient failures (connection errors,
timeouts, HTTP 408/425/429/500/502/503/504, a short transfer, a failing command) are retried with exponential back-off;
what still fails, and a sha256 that does not match index.json, is one UserInputError naming the URL.

Settings (environment, so that each node of a cluster can point at its own disk): PIPELINE_SHARD_CACHE
(default $XDG_CACHE_HOME/d2v2-pipeline/shards, else ~/.cache/d2v2-pipeline/shards) and PIPELINE_SHARD_CACHE_GB
(default 100). The split being read must fit in the limit: batches draw from every shard of it.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.data.shard_writer import shard_bytes_problem
from pipeline.errors import UserInputError
from pipeline.io import atomic_write_bytes, atomic_write_json

CACHE_ENV = "PIPELINE_SHARD_CACHE"
SIZE_ENV = "PIPELINE_SHARD_CACHE_GB"
DEFAULT_GB = 100.0
SCHEMES = ("http://", "https://", "s3://", "gs://", "pipe:")
LOCATION_HELP = ("a folder, http(s)://HOST/PATH, s3://BUCKET/PATH or gs://BUCKET/PATH (pip install '.[s3]' or '.[gs]'), or "
                 "pipe:COMMAND ({} = file name); index.json is read from the same place and remote shards are fetched "
                 f"once per node into {CACHE_ENV} (size limit {SIZE_ENV}, default {DEFAULT_GB:g})")
ATTEMPTS = 5  # one try and four retries: 1 + 2 + 4 + 8 s of back-off at the default
BACKOFF_S = 1.0
TIMEOUT_S = 60.0  # per connection attempt and per blocking read (urllib)
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
CHUNK = 1 << 20


def is_remote(location: str | Path | None) -> bool:
    return isinstance(location, str) and location.startswith(SCHEMES)


def shard_location(value: str) -> str | Path:
    """argparse type of --shards: a remote location as given (a Path would collapse its `//`), else a Path.
    Raises argparse.ArgumentTypeError for a URL scheme the pipeline cannot read."""
    if is_remote(value):
        return value
    if "://" in value:
        raise argparse.ArgumentTypeError(f"{value}: unsupported URL; use {', '.join(SCHEMES)} or a folder")
    return Path(value)


def file_url(location: str, name: str) -> str:
    """The URL of file `name` (index.json, a shard) at `location`."""
    if location.startswith("pipe:"):
        return location.replace("{}", name) if "{}" in location else f"{location} {name}"
    return f"{location.rstrip('/')}/{name}"


def origin(folder: Path) -> str | None:
    """The location a cache folder (from `local_folder`) mirrors, or None for an ordinary shard folder."""
    path = Path(folder) / "origin.json"
    return json.loads(path.read_text(encoding="utf-8"))["url"] if path.is_file() else None


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "d2v2-pipeline" / "shards"


def cache_limit_bytes() -> int:
    value = os.environ.get(SIZE_ENV, str(DEFAULT_GB))
    try:
        return int(float(value) * 1e9)
    except ValueError:
        raise UserInputError(f"{SIZE_ENV}={value!r}: not a number of gigabytes") from None


def local_folder(location: str | Path, cache: ShardCache | None = None) -> Path:
    """The shard folder to read for `location`: a local folder as it is; for a remote location, its folder in the
    cache with index.json read from the location now (rewritten only when it changed, so that its modification
    time keeps caches keyed on it valid). Shards are fetched later, per split (`fetch_split`). Raises
    UserInputError naming index.json's URL when it cannot be read or is not a shard index."""
    if not is_remote(location):
        return Path(location)
    cache = cache or ShardCache(cache_root())
    url = file_url(str(location), "index.json")
    data = cache.read(url)
    try:
        index = json.loads(data)
        if not isinstance(index.get("splits"), dict):
            raise ValueError("no splits")
    except (ValueError, AttributeError) as e:
        raise UserInputError(f"{url}: not a shard index.json ({e}); point --shards at a folder `python -m pipeline "
                             "shard` wrote") from None
    folder = cache.root / "sources" / hashlib.sha256(str(location).encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / "index.json"
    if not index_path.is_file() or index_path.read_bytes() != data:
        atomic_write_bytes(index_path, data)
    if origin(folder) != location:
        atomic_write_json(folder / "origin.json", {"url": location})
    return folder


# (folder, split) whose shards this process has fetched and checked
_FETCHED: set[tuple[str, str]] = set()


def fetch_split(folder: Path, index: dict[str, Any], split: str) -> None:
    """Make every shard of `split` a checked file in cache folder `folder` (a link into its cache's blobs),
    downloading the missing ones from the folder's origin; once per process and split. Prints one line on
    stderr: how many shards came from the cache and how many were downloaded. Raises UserInputError (the URL
    named) for a download that fails or does not match index.json, or a split larger than the cache limit."""
    folder = Path(folder)
    if (str(folder), split) in _FETCHED:
        return
    location = origin(folder)
    cache = ShardCache(folder.parent.parent)  # the cache the folder lives in, whatever the environment says now
    entries = index["splits"][split]["shards"]
    need = sum(e["bytes"] for e in entries)
    if need > cache.max_bytes:
        raise UserInputError(f"{location}: split {split!r} has {need / 1e9:.3g} GB of shards, more than the shard "
                             f"cache's limit ({SIZE_ENV}={cache.max_bytes / 1e9:g}); raise {SIZE_ENV}")
    pinned = {e["sha256"] for e in entries}
    for entry in entries:
        blob = cache.fetch(file_url(location, entry["name"]), entry, pinned)
        link = folder / entry["name"]
        target = os.path.relpath(blob, folder)
        if not link.is_symlink() or os.readlink(link) != target:
            tmp = folder / f".{entry['name']}.link-{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            os.replace(tmp, link)
    print(f"shards {location} [{split}]: {cache.hits} from the cache, {cache.downloads} downloaded "
          f"({cache.downloaded_bytes / 1e6:.3g} MB) into {cache.root}", file=sys.stderr)
    _FETCHED.add((str(folder), split))


# (blob path, size, inode) whose sha256 this process has checked
_CHECKED: set[tuple[str, int, int]] = set()


class ShardCache:
    """Content-addressed shard files under `root` (see the module docstring), at most `max_bytes` in all.
    `hits`, `downloads` and `downloaded_bytes` count this object's fetches."""

    def __init__(self, root: Path, max_bytes: int | None = None, attempts: int = ATTEMPTS, backoff_s: float = BACKOFF_S):
        self.root = Path(root)
        self.max_bytes = cache_limit_bytes() if max_bytes is None else max_bytes
        self.attempts, self.backoff_s = attempts, backoff_s
        self.hits = self.downloads = self.downloaded_bytes = 0
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One process of this node at a time fetches or evicts (the other ranks wait, then find the file)."""
        with open(self.root / "lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self, url: str) -> bytes:
        """The whole file at `url` (index.json), with retries."""
        return self._retrying(url, lambda: _read_all(url))

    def fetch(self, url: str, entry: dict[str, Any], pinned: frozenset[str] | set[str] = frozenset()) -> Path:
        """The cached file of shard `entry` (index.json's name, bytes, sha256), downloaded from `url` unless the
        cache holds it; then the least recently used blobs beyond the limit are deleted, except `pinned` ones."""
        blob = self.root / "blobs" / f"{entry['sha256']}.tar"
        with self._locked():
            if blob.is_file() and self._checked(blob, entry):
                self.hits += 1
                os.utime(blob)  # most recently used
                return blob
            self._retrying(url, lambda: self._download(url, entry, blob))
            self.downloads += 1
            self.downloaded_bytes += entry["bytes"]
            self._evict(pinned | {entry["sha256"]})
        return blob

    def _checked(self, blob: Path, entry: dict[str, Any]) -> bool:
        """Whether a cached blob still has index.json's bytes (hashed once per process); a bad one is deleted."""
        stat = blob.stat()
        version = (str(blob), stat.st_size, stat.st_ino)
        if version in _CHECKED:
            return True
        if shard_bytes_problem(blob, entry) is not None:
            blob.unlink()
            return False
        _CHECKED.add(version)
        return True

    def _download(self, url: str, entry: dict[str, Any], blob: Path) -> None:
        """Stream `url` into a temporary file, hashing on the way; rename it into place only if it matches."""
        tmp = blob.with_name(f".{blob.name}.part-{os.getpid()}")
        digest, size = hashlib.sha256(), 0
        try:
            with _open(url) as stream, open(tmp, "wb") as out:
                for block in iter(lambda: stream.read(CHUNK), b""):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
            if size != entry["bytes"]:
                raise _Transient(f"{size} bytes received, index.json says {entry['bytes']}")
            if digest.hexdigest() != entry["sha256"]:
                raise UserInputError(f"{url}: sha256 {digest.hexdigest()[:12]}... differs from index.json's "
                                     f"{entry['sha256'][:12]}... for {entry['name']}: the served shard is not the one "
                                     "index.json describes; upload the shards and index.json `shard` wrote together")
            os.replace(tmp, blob)
            _CHECKED.add((str(blob), size, blob.stat().st_ino))
        finally:
            tmp.unlink(missing_ok=True)

    def _evict(self, pinned: set[str]) -> None:
        """Delete least recently used blobs (oldest modification time first) until the cache fits its limit."""
        blobs = []
        for path in (self.root / "blobs").glob("*.tar"):
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                blobs.append((stat.st_mtime_ns, stat.st_size, path))
        total = sum(size for _, size, _ in blobs)
        for _, size, path in sorted(blobs):
            if total <= self.max_bytes:
                break
            if path.stem not in pinned:
                path.unlink(missing_ok=True)
                total -= size

    def _retrying(self, url: str, attempt):
        """attempt() until it succeeds, retrying transient errors with exponential back-off. Raises
        UserInputError naming `url` when it fails for good."""
        for n in range(1, self.attempts + 1):
            try:
                return attempt()
            except UserInputError:
                raise
            except Exception as e:  # noqa: BLE001 (every failure of a transfer becomes one message naming the URL)
                reason = _reason(e)
                if not _transient(e) or n == self.attempts:
                    tries = f" after {n} attempts" if n > 1 else ""
                    raise UserInputError(f"{url}: cannot download ({reason}){tries}; check the URL and that this "
                                         "node can reach it") from e
                delay = self.backoff_s * 2 ** (n - 1)
                print(f"{url}: {reason}; retrying in {delay:g} s ({n}/{self.attempts - 1})", file=sys.stderr)
                time.sleep(delay)
        raise AssertionError("unreachable")


class _Transient(Exception):
    """A transfer that ended early (fewer bytes than index.json records): worth another try."""


def _open(url: str) -> BinaryIO:
    """A binary stream of the file at `url`."""
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=TIMEOUT_S)  # noqa: S310 (the schemes are checked above)
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen  # checks the command's exit status when the stream closes

        return gopen(url, "rb")
    import fsspec  # s3://, gs://: the filesystem packages come with the `s3` and `gs` extras

    return fsspec.open(url, "rb").open()


def _read_all(url: str) -> bytes:
    with _open(url) as stream:
        return stream.read()


def _transient(error: Exception) -> bool:
    """Whether another attempt may succeed: server errors, throttling, timeouts, dropped connections, short
    transfers, a command that failed; not a missing file, a refused permission or a missing package."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code in TRANSIENT_HTTP
    if isinstance(error, (ImportError, FileNotFoundError, PermissionError, IsADirectoryError, ValueError)):
        return False
    return isinstance(error, (_Transient, urllib.error.URLError, OSError, TimeoutError))


def _reason(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, ImportError):
        return f"{error}; install the optional extra: pip install '.[s3]' or '.[gs]'"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return f"{type(error).__name__}: {error}" if not isinstance(error, _Transient) else str(error)
