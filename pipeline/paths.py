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

# The pretraining methods the benchmark compares per modality: data2vec 2.0, data2vec 1.0 and the baseline the
# paper compares against (plus `scratch`, fine-tuning from random weights, which has no pretraining).
PRETRAIN_METHODS = {
    "image": ("data2vec2", "data2vec1", "mae"),
    "speech": ("data2vec2", "data2vec1", "wav2vec2"),
    "text": ("data2vec2", "data2vec1", "mlm"),
}


def sweep_dir(modality: str, method: str, task: str) -> Path:
    return Path("models") / modality / method / "sweep" / task


def throughput_path(modality: str) -> Path:
    return Path("reports") / "throughput" / f"{modality}.json"
