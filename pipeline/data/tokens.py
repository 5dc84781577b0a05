"""The `tokenize` stage: the text corpus as token ids, computed once per (shards, tokenizer).

data/tokens/text/ holds `<split>.npy` for the pretraining splits (train, valid): int32, every document of the split
in index order followed by </s> (the stream fairseq's `sample_break_mode: none` cuts into blocks), and index.json,
which names the shards and the tokenizer it was computed from with their digests (pipeline.io.files_digest of the
shards' index.json, which holds every shard's sha256, and of tokenizer.json). Text pretraining
(pipeline/pretrain/data.py) reads it instead of tokenizing the corpus on every run (seconds each, and the benchmark
trains many short runs); a stale artifact is refused, never read.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import paths
from pipeline.errors import UserInputError
from pipeline.io import atomic_write_bytes, atomic_write_json, files_digest

SPLITS = ("train", "valid")  # what pretraining reads; the labeled tasks' splits are tokenized by their own data
INDEX = "index.json"
REBUILD = "python -m pipeline tokenize --modality text"


def encode_split(shard_dir: Path, split: str, tokenizer_path: Path) -> tuple[np.ndarray, int]:
    """(the documents of `split` as one int32 stream, each followed by </s>; the id of <s>)."""
    from pipeline.data.tokenizer import iter_shard_texts, load

    tok = load(tokenizer_path)
    tok.no_padding()
    tok.no_truncation()
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    texts = list(iter_shard_texts(shard_dir, split))
    stream: list[int] = []
    for start in range(0, len(texts), 4096):
        for enc in tok.encode_batch(texts[start : start + 4096], add_special_tokens=False):
            stream.extend(enc.ids)
            stream.append(eos)
    return np.asarray(stream, dtype=np.int32), bos


def source_digests(shard_dir: Path, tokenizer_path: Path) -> dict[str, str]:
    return {"shards_digest": files_digest([Path(shard_dir) / "index.json"]), "tokenizer_digest": files_digest([Path(tokenizer_path)])}


def tokenize_corpus(shard_dir: Path | None = None, tokenizer_path: Path | None = None, out: Path | None = None) -> dict[str, Any]:
    """Write `out` (default data/tokens/text): `<split>.npy` of every split of SPLITS the shards hold, then
    index.json (last, so a folder without it is an unfinished one). Returns a summary (path, tokens per split)."""
    from pipeline.data.shard_reader import IndexedShards

    shard_dir = Path(shard_dir if shard_dir is not None else paths.shards_dir("text"))
    tokenizer_path = Path(tokenizer_path if tokenizer_path is not None else paths.tokenizer_path("text"))
    out = Path(out if out is not None else paths.tokens_dir("text"))
    splits = [s for s in SPLITS if s in IndexedShards(shard_dir, "train").index["splits"]]  # names a missing train split
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX).unlink(missing_ok=True)
    index: dict[str, Any] = {"shards": str(shard_dir), "tokenizer": str(tokenizer_path),
                             **source_digests(shard_dir, tokenizer_path), "splits": {}}
    for split in splits:
        stream, index["bos"] = encode_split(shard_dir, split, tokenizer_path)
        buffer = io.BytesIO()
        np.save(buffer, stream, allow_pickle=False)
        atomic_write_bytes(out / f"{split}.npy", buffer.getvalue())
        index["splits"][split] = {"file": f"{split}.npy", "tokens": len(stream)}
    for old in set(out.glob("*.npy")) - {out / f"{s}.npy" for s in splits}:  # an earlier corpus's split
        old.unlink()
    atomic_write_json(out / INDEX, index)
    return {"path": str(out), "tokens": {s: v["tokens"] for s, v in index["splits"].items()}}


def read_split(tokens_dir: Path, shard_dir: Path, tokenizer_path: Path, split: str) -> tuple[np.ndarray, int] | None:
    """The stream of `split` and the id of <s> from the artifact in `tokens_dir`, when it was computed from these
    shards and this tokenizer; None when there is none, it is of other files (a user's own --shards) or lacks the
    split. Raises UserInputError when it names these files but they changed since (a stale artifact)."""
    index_path = Path(tokens_dir) / INDEX
    if not index_path.exists():
        return None
    index = json.loads(index_path.read_text())
    same = all(Path(index[key]).resolve() == Path(path).resolve() for key, path in (("shards", shard_dir), ("tokenizer", tokenizer_path)))
    if not same or split not in index["splits"]:
        return None
    if {k: index[k] for k in ("shards_digest", "tokenizer_digest")} != source_digests(shard_dir, tokenizer_path):
        raise UserInputError(f"{tokens_dir}: token ids of an earlier {shard_dir} or {tokenizer_path}, which changed "
                             f"since; run `{REBUILD}` (or `dvc repro`) to tokenize them again")
    return np.load(Path(tokens_dir) / index["splits"][split]["file"], allow_pickle=False), int(index["bos"])
