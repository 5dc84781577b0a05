"""Default locations of pipeline outputs; every one is a DVC out (dvc.yaml), never in git."""
from pathlib import Path

DATA = Path("data")


def raw_dir(modality: str) -> Path:
    return DATA / "raw" / modality


def shards_dir(modality: str) -> Path:
    return DATA / "shards" / modality


def tokenizer_path(modality: str) -> Path:
    return DATA / "tokenizers" / modality / "tokenizer.json"


def tokens_dir(modality: str) -> Path:
    """The corpus as token ids, written by the `tokenize` stage (pipeline/data/tokens.py)."""
    return DATA / "tokens" / modality


def sweep_dir(modality: str, method: str, task: str) -> Path:
    return Path("models") / modality / method / "sweep" / task


def throughput_path(modality: str) -> Path:
    return Path("reports") / "throughput" / f"{modality}.json"
