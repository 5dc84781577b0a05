"""Default locations of pipeline outputs (shared/DESIGN.md "Paths"); every one is a DVC out, never in git."""
from pathlib import Path

MODALITIES = ("image", "speech", "text")
DATA = Path("data")


def raw_dir(modality: str) -> Path:
    return DATA / "raw" / modality


def shards_dir(modality: str) -> Path:
    return DATA / "shards" / modality


def tokenizer_path(modality: str) -> Path:
    return DATA / "tokenizers" / modality / "tokenizer.json"
