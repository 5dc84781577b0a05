"""Export an encoder as `model.safetensors` + `config.json`: no pickle, loadable without this project's
checkpoint code (safetensors) and by `load_encoder` (pipeline/weights/load.py).

config.json: {"format": "d2v2-encoder", "format_version": 1, "weights": "student" | "teacher", "model": our
resolved config (model/config.py `Data2Vec2Config.to_dict`), "source": the checkpoint, its update count and
sha256 prefix, "project": this project's version and git commit}. The tensors carry our parameter names
(docs/model.md has the map to fairseq's).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.weights.load import (CONFIG_FILE, EXPORT_FORMAT, EXPORT_VERSION, WEIGHTS_FILE, load_checkpoint,
                                   model_from_checkpoint)


def project_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("d2v2-pipeline")
    except PackageNotFoundError:
        return "unknown"


def export_encoder(checkpoint_path: Path, out: Path, teacher: bool = False) -> dict[str, Any]:
    """Write out/model.safetensors and out/config.json (atomically) for the student's (or, `teacher`, the EMA
    teacher's) encoder of a pretraining checkpoint. Returns the stage summary. Raises UserInputError for a missing
    or unloadable file (naming what writes a pretraining checkpoint), a file that is not a pretraining checkpoint,
    or `teacher` for a model without one."""
    from safetensors.torch import save

    from pipeline.io import atomic_write_bytes, atomic_write_json, files_digest, git_state

    ckpt = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(ckpt, checkpoint_path, teacher)
    model.remove_pretraining_modules()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "weights": "teacher" if teacher else "student",
            "model": model.cfg.to_dict(),
            "source": {"checkpoint": str(checkpoint_path), "sha256_16": files_digest([checkpoint_path]),
                       "update": int(ckpt.get("update", 0)), "imported_from": ckpt["config"].get("imported_from")},
            "project": {"version": project_version(), "git": git_state()}}
    atomic_write_bytes(out / WEIGHTS_FILE, save(state, metadata={"format": "pt", "weights": meta["weights"]}))
    atomic_write_json(out / CONFIG_FILE, meta)
    return {"out": str(out), "weights": meta["weights"], "tensors": len(state),
            "parameters": sum(v.numel() for v in state.values()), "modality": model.cfg.modality,
            "files": [str(out / WEIGHTS_FILE), str(out / CONFIG_FILE)]}
