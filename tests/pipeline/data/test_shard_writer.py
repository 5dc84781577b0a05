"""Shard writing: deterministic bytes, atomic replacement, stale shards removed, index verified."""
import json
import os

import pytest

from pipeline.config import Shard
from pipeline.data.shard import shard
from pipeline.data.shard_writer import Sample, verify_index, write_split
from pipeline.io import atomic_write_bytes


def samples(n):
    return [Sample(f"k{i:03d}", {"txt": f"text {i}".encode(), "cls": str(i % 3).encode()}) for i in range(n)]


def test_same_input_gives_byte_identical_shards(tmp_path):
    a = write_split(tmp_path / "a", "train", samples(7), max_samples=3)
    b = write_split(tmp_path / "b", "train", samples(7), max_samples=3)
    assert [s.sha256 for s in a] == [s.sha256 for s in b]
    assert [s.num_samples for s in a] == [3, 3, 1]
    assert (tmp_path / "a" / "train-000002.tar").read_bytes() == (tmp_path / "b" / "train-000002.tar").read_bytes()


def test_byte_limit_starts_a_new_shard(tmp_path):
    big = [Sample(f"k{i}", {"bin": bytes(1000)}) for i in range(5)]
    shards = write_split(tmp_path, "train", big, max_samples=100, max_bytes=2500)
    assert [s.num_samples for s in shards] == [2, 2, 1]


def test_keys_with_dots_and_duplicates_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no dots"):
        write_split(tmp_path, "train", [Sample("a.b", {"txt": b"x"})], max_samples=10)
    with pytest.raises(ValueError, match="duplicate"):
        write_split(tmp_path, "train", [Sample("a", {"txt": b"x"}), Sample("a", {"txt": b"y"})], max_samples=10)


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "x.tar"
    target.write_bytes(b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.tar"]
    monkeypatch.undo()
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["x.tar"]  # no temporary file left behind


def test_shard_twice_is_identical_and_stale_shards_go(tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("\n\n".join(f"document {i}" for i in range(10)))
    out = tmp_path / "out"
    first = shard("text", src, out, Shard(max_samples_per_shard=2), progress=False)
    index_bytes = (out / "index.json").read_bytes()
    second = shard("text", src, out, Shard(max_samples_per_shard=2), progress=False)
    assert first == second and (out / "index.json").read_bytes() == index_bytes
    assert len(list(out.glob("train-*.tar"))) == 5
    shard("text", src, out, Shard(max_samples_per_shard=5), progress=False)
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    assert verify_index(out) == []


def test_verify_index_finds_tampering(tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("a\n\nb\n\nc")
    out = tmp_path / "out"
    shard("text", src, out, Shard(max_samples_per_shard=2), progress=False)
    index = json.loads((out / "index.json").read_text())
    index["splits"]["train"]["shards"][0]["num_samples"] = 3
    (out / "index.json").write_text(json.dumps(index))
    (out / "train-000001.tar").unlink()
    problems = verify_index(out)
    assert any("2 samples, index.json says 3" in p for p in problems)
    assert any("train-000001.tar: listed in index.json but missing" in p for p in problems)
