"""Typed views of params.yaml, the one place hyper-parameters and data sizes live."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.errors import UserInputError

DEFAULT_PARAMS = Path("params.yaml")
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ImagePrepare:
    train_limit: int | None = None
    test_limit: int | None = None


@dataclasses.dataclass(frozen=True)
class SpeechPrepare:
    train_utterances: int = 1200
    valid_utterances: int = 120
    test_utterances: int = 120
    sample_rate: int = 16000


@dataclasses.dataclass(frozen=True)
class TextPrepare:
    corpus_limit: int | None = None
    valid_fraction: float = 0.01
    lexname_train: int = 20000
    lexname_valid: int = 2000
    lexname_test: int = 4000
    fortune_valid_fraction: float = 0.1
    fortune_test_fraction: float = 0.1
    fortune_min_per_category: int = 100


@dataclasses.dataclass(frozen=True)
class Shard:
    max_samples_per_shard: int = 10000
    max_bytes_per_shard: int = 1 << 30


@dataclasses.dataclass(frozen=True)
class TextTokenizer:
    vocab_size: int = 4096
    min_frequency: int = 2


@dataclasses.dataclass(frozen=True)
class SpeechTokenizer:
    lowercase: bool = True


PREPARE = {"image": ImagePrepare, "speech": SpeechPrepare, "text": TextPrepare}
TOKENIZER = {"text": TextTokenizer, "speech": SpeechTokenizer}


def load(path: Path | str = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: params file not found; run from the repository root or pass --params PATH")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def section(params: dict[str, Any], cls: type[T], *keys: str) -> T:
    """Build dataclass `cls` from params[keys[0]][keys[1]]...; unknown keys are an error, missing keys take defaults."""
    node: Any = params
    for key in keys:
        node = (node or {}).get(key, {})
    node = node or {}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(node) - names)
    if unknown:
        raise UserInputError(f"params.yaml {'.'.join(keys)}: unknown key(s) {unknown}; known: {sorted(names)}")
    return cls(**node)


def seed(params: dict[str, Any]) -> int:
    return int(params.get("seed", 0))
