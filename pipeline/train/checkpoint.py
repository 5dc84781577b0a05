"""Checkpoints: plain state dicts written atomically, loaded with `weights_only=True`.

A checkpoint holds the student, the EMA teacher, the optimizer, the grad scaler, the LR scheduler, the update
count, the data position (next update = next global batch), the training seconds spent, and every RNG
state of every rank (python, numpy, torch CPU, CUDA), so a resumed run continues exactly.
"""
from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import UserInputError


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only loading refuses: store it as a tensor
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _to_tuple(value: Any) -> Any:
    """random.setstate wants tuples; a round trip through torch.save may hand back lists."""
    return tuple(_to_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def save(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint at `path` (tensors on `map_location`), read with `torch.load(weights_only=True)`: tensors,
    numbers, strings and containers only, so loading never runs code from the file. Raises UserInputError (one
    line) when the file is missing, is not a torch file, or holds other objects (refused, never unpickled)."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise UserInputError(f"{path}: not a loadable checkpoint ({load_failure(e)}); delete it or pass another") from None


def load_failure(error: Exception) -> str:
    """One line for why torch.load(weights_only=True) failed. torch's own message for a file holding Python
    objects is several paragraphs that end by suggesting weights_only=False, which would run the file's code:
    only the unpickler's reason is kept."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and "weights_only" in text.lower():
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, re.S)
        reason = " ".join(found.group(1).split()) if found else "unsupported content"
        return f"weights_only loading refused it, nothing was unpickled: {reason}"
    return f"{type(error).__name__}: {' '.join(text.split())[:300]}"
