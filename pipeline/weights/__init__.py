"""Weights in and out: import fairseq's released data2vec 2.0 checkpoints (fairseq.py, read with safe_load.py),
export an encoder as safetensors (export.py), and `load_encoder` for every kind of weight file (load.py)."""
from pipeline.weights.load import load_encoder

__all__ = ["load_encoder"]
