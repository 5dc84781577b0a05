"""Default locations of pipeline outputs; every one is a DVC out (dvc.yaml), never in git (the token cache is a
plain cache, see token_cache_dir)."""
from pathlib import Path

DATA = Path("data")


def raw_dir(modality: str) -> Path:
    return DATA / "raw" / modality


def shards_dir(modality: str) -> Path:
    return DATA / "shards" / modality


def tokenizer_path(modality: str) -> Path:
    return DATA / "tokenizers" / modality / "tokenizer.json"


def token_cache_dir() -> Path:
    """Tokenized text corpora, one file per (shards, tokenizer, split) digest (pipeline/pretrain/data.py); not a
    DVC out: a cache any run may fill and anyone may delete."""
    return DATA / "cache" / "tokens"


def sweep_dir(modality: str, method: str, task: str) -> Path:
    return Path("models") / modality / method / "sweep" / task


def throughput_path(modality: str) -> Path:
    return Path("reports") / "throughput" / f"{modality}.json"
