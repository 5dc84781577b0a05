"""One entry point from a config to a model, for every pretraining method (trainers and fine-tuning use it).

Every model is an `Encoder` (model/encoder.py) with the same interface: `forward(batch) -> (loss, stats)`,
`ema_step(update) -> float` (a no-op returning 1.0 for methods without a teacher), `teacher` (an unregistered
EMA module or None), `extract_features(inputs, padding_mask=None, layer=None)` and
`remove_pretraining_modules()`; and the encoder parameters carry the same names (`local_encoder.*`,
`context_encoder.*`, `blocks.*`) whatever the method, so a fine-tuning run loads any method's checkpoint the
same way.

Methods: data2vec2 and data2vec1 (`Data2Vec2`), and the baselines on the same encoder: mae (`MAE`, images),
wav2vec2 (`Wav2Vec2`, speech), mlm (`MaskedLM`, text).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from model.config import Data2Vec2Config
from model.data2vec2 import Data2Vec2
from model.mae import MAE
from model.mlm import MaskedLM
from model.wav2vec2 import Wav2Vec2


def config_from_dict(d: dict[str, Any]) -> Data2Vec2Config:
    """Inverse of `cfg.to_dict()` (the resolved config stored in checkpoints and config.json)."""
    return Data2Vec2Config.from_dict(d)


def build_model(cfg: Data2Vec2Config) -> nn.Module:
    if cfg.method in ("data2vec2", "data2vec1"):
        return Data2Vec2(cfg)
    if cfg.method == "mae":
        return MAE(cfg)
    if cfg.method == "wav2vec2":
        return Wav2Vec2(cfg)
    if cfg.method == "mlm":
        return MaskedLM(cfg)
    raise ValueError(f"no model for method {cfg.method!r}")
