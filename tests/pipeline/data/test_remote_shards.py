"""Shards from an HTTP server (the standard library's, on 127.0.0.1, started here) through the node's shard cache
(pipeline/data/shard_cache.py): the same weights as from the local folder, a corrupted shard refused with its
URL named, a second run served from the cache, retries of transient errors, LRU eviction.

The end-to-end cases pretrain the tiny image model for 2 updates in one process (seconds each)."""
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
import torch

from helpers import run, tiny_image_shards
from pipeline.data import shard_cache
from pipeline.data.shard_cache import ShardCache, fetch_split, local_folder
from pipeline.errors import UserInputError


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; records every GET path; answers 503 while `server.fail_next` > 0."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.server.fail_next > 0:
            self.server.fail_next -= 1
            self.send_error(503, "busy")
            return
        super().do_GET()

    def log_message(self, *args):  # quiet test output
        pass


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """params.yaml and tiny Fashion-MNIST shards (16 training images in two shards), served over HTTP as /shards/."""
    root = tmp_path_factory.mktemp("remote")
    params = {"seed": 0, "image": {"prepare": {"train_limit": 16, "test_limit": 8}, "shard": {"max_samples_per_shard": 8}},
              "pretrain": {"image": {"preset": "tiny", "batch_size": 4, "max_updates": 2, "warmup_updates": 1,
                                     "checkpoint_every": 2, "log_every": 1}}}
    tiny_image_shards(root, params, root / "www" / "shards")
    return root


@pytest.fixture(scope="module")
def server(workdir):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CountingHandler, directory=str(workdir / "www")))
    httpd.requests, httpd.fail_next = [], 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(server, path):
    return f"http://127.0.0.1:{server.server_address[1]}/{path}"


def pretrain(workdir, out, shards, cache, check=True):
    cmd = [sys.executable, "-m", "pipeline", "pretrain", "--modality", "image", "--out", str(out), "--shards", str(shards),
           "--workers", "0", "--no-progress", "--fresh"]
    env = {"PIPELINE_SHARD_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    if check:
        return run(cmd, cwd=workdir, env=env)
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300, env={**os.environ, **env})


def students_equal(a, b):
    a, b = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return a["update"] == b["update"] and all(torch.equal(a[part][k], b[part][k]) for part in ("student", "teacher")
                                              for k in a[part])


def shard_requests(server):
    return [p for p in server.requests if p.endswith(".tar")]


def test_training_from_http_equals_the_local_folder_and_reruns_from_the_cache(workdir, server, tmp_path):
    local = workdir / "www" / "shards"
    num_shards = len(json.loads((local / "index.json").read_text())["splits"]["train"]["shards"])
    pretrain(workdir, tmp_path / "local", local, tmp_path / "cache")
    server.requests.clear()
    first = pretrain(workdir, tmp_path / "remote", url(server, "shards"), tmp_path / "cache")
    assert len(shard_requests(server)) == num_shards, server.requests  # each shard downloaded once
    assert f"0 from the cache, {num_shards} downloaded" in first.stderr
    assert students_equal(tmp_path / "local" / "last.pt", tmp_path / "remote" / "last.pt")

    server.requests.clear()
    again = pretrain(workdir, tmp_path / "again", url(server, "shards"), tmp_path / "cache")
    assert shard_requests(server) == [] and server.requests == ["/shards/index.json"]  # index.json is read afresh
    assert f"{num_shards} from the cache, 0 downloaded" in again.stderr
    assert students_equal(tmp_path / "local" / "last.pt", tmp_path / "again" / "last.pt")


def test_a_corrupted_served_shard_is_refused_with_its_url(workdir, server, tmp_path):
    bad = workdir / "www" / "bad"
    shutil.copytree(workdir / "www" / "shards", bad)
    shard = bad / "train-000001.tar"
    good_sha = json.loads((bad / "index.json").read_text())["splits"]["train"]["shards"][0]["sha256"]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # same size, other bytes: only the sha256 can tell
    shard.write_bytes(bytes(data))
    result = pretrain(workdir, tmp_path / "out", url(server, "bad"), tmp_path / "cache", check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert url(server, "bad/train-000001.tar") in last and "sha256" in last, last
    # the good shard before it stays cached; the bad one's temporary file is gone
    assert [p.name for p in (tmp_path / "cache" / "blobs").iterdir()] == [f"{good_sha}.tar"]


def test_transient_errors_are_retried_and_a_missing_file_is_one_error(server, tmp_path):
    cache = ShardCache(tmp_path / "cache", attempts=3, backoff_s=0.01)
    server.fail_next = 2  # two 503s, then the file
    server.requests.clear()
    assert json.loads(cache.read(url(server, "shards/index.json")))["splits"]
    assert len(server.requests) == 3
    server.requests.clear()
    with pytest.raises(UserInputError, match=r"http://127\.0\.0\.1:\d+/nowhere/index\.json: cannot download \(HTTP 404"):
        local_folder(url(server, "nowhere"), cache)
    assert len(server.requests) == 1  # a 404 is not retried
    server.fail_next = 5
    with pytest.raises(UserInputError, match="HTTP 503.*after 3 attempts"):
        cache.read(url(server, "shards/index.json"))
    server.fail_next = 0


def test_least_recently_used_shards_are_evicted_past_the_limit(workdir, server, tmp_path, monkeypatch):
    index = json.loads((workdir / "www" / "shards" / "index.json").read_text())
    entries = [e for split in ("train", "test") for e in index["splits"][split]["shards"]]
    assert len(entries) == 3
    size = max(e["bytes"] for e in entries)
    cache = ShardCache(tmp_path / "cache", max_bytes=2 * size)
    blobs = []
    for e in entries:
        blobs.append(cache.fetch(url(server, f"shards/{e['name']}"), e))
        os.utime(blobs[-1], ns=(len(blobs) * 10**9, len(blobs) * 10**9))  # distinct, increasing use times
    assert [b.exists() for b in blobs] == [False, True, True]  # the least recently used went
    assert (cache.hits, cache.downloads) == (0, 3)
    cache.fetch(url(server, f"shards/{entries[1]['name']}"), entries[1])
    assert (cache.hits, cache.downloads) == (1, 3)

    # through the environment, as the stages read it: a split larger than the limit is refused before any download
    folder = local_folder(url(server, "shards"), cache)
    monkeypatch.setenv(shard_cache.SIZE_ENV, str(size / 1e9))
    with pytest.raises(UserInputError, match="split 'train' has .* more than the shard cache's limit"):
        fetch_split(folder, index, "train")
    train_bytes = sum(e["bytes"] for e in index["splits"]["train"]["shards"])
    monkeypatch.setenv(shard_cache.SIZE_ENV, str(train_bytes / 1e9))
    fetch_split(folder, index, "train")  # fits once the test shard is evicted
    assert all((folder / e["name"]).resolve().is_file() for e in index["splits"]["train"]["shards"])
    assert not blobs[2].exists()
