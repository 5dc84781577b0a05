"""`load_encoder`: a ready encoder from any of this project's weight files.

    from pipeline.weights import load_encoder
    encoder = load_encoder("models/image/fairseq/import/imported.pt")       # or a pretrain last.pt, or an export folder
    out = encoder.extract_features(images)                                   # {"x": (B, T, D), "cls", "padding_mask"}

Accepted: a pretraining checkpoint (`pretrain`'s last.pt / best.pt, `import-fairseq`'s imported.pt), loaded with
`weights_only=True`; an `export` folder (model.safetensors + config.json). The encoder comes back in eval mode
without its pretraining parts (decoder, teacher).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserInputError

# What writes a pretraining checkpoint: the fix an error about a missing or unusable one names
WRITERS = ("write one with `python -m pipeline pretrain --modality M` (models/M/<method>/pretrain/last.pt; with "
           "--benchmark, .../pretrain/s<seed>-u<updates>/last.pt) or `python -m pipeline import-fairseq FILE.pt "
           "--modality M` (models/M/fairseq/import/imported.pt)")
EXPORT_FORMAT = "d2v2-encoder"
EXPORT_VERSION = 1
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"


def teacher_into_student(model) -> None:
    """Overwrite the student's encoder parts the EMA teacher owns with the teacher's weights (same names), so
    the encoder is the teacher's: its own parts plus the student's shared upstream parts (speech: the CNN and
    projection; text: the embeddings), which is exactly what the teacher runs on. Raises UserInputError for a
    model without a teacher."""
    if model.teacher is None:
        raise UserInputError(f"a {model.cfg.method} model has no EMA teacher; export the student")
    with torch.no_grad():
        for name, tensor in model.teacher.state_dict().items():
            target = model.get_parameter(name) if name in dict(model.named_parameters()) else model.get_buffer(name)
            target.copy_(tensor)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict at `path` (pipeline/train/checkpoint.py `load`: weights only). Raises UserInputError
    naming the file and the fix (WRITERS: what writes a pretraining checkpoint) for a missing path, a folder (its
    last.pt or imported.pt named when it holds one) or a file that does not load."""
    from pipeline.train import checkpoint

    path = Path(path)
    if path.is_dir():
        inside = [path / name for name in ("last.pt", "imported.pt") if (path / name).is_file()]
        raise UserInputError(f"{path}: a folder, not a checkpoint file; pass "
                             + (f"{inside[0]}" if inside else f"a pretraining checkpoint file, or {WRITERS}"))
    if not path.exists():
        raise UserInputError(f"{path}: checkpoint not found; {WRITERS}")
    try:
        return checkpoint.load(path)
    except UserInputError as e:  # a file that does not load: what failed (torch's first line), and the fix
        cause = e.__context__ or e
        first = (str(cause).strip().splitlines() or [""])[0]
        raise UserInputError(f"{path}: not a loadable checkpoint ({type(cause).__name__}: {first}); pass another "
                             f"or {WRITERS}") from None


def model_from_checkpoint(ckpt: dict[str, Any], path: Path, teacher: bool = False):
    """The pretraining model of a checkpoint dict (config.model, student, teacher), weights loaded."""
    from model.build import build_model, config_from_dict

    try:
        cfg = config_from_dict(ckpt["config"]["model"])
        student = ckpt["student"]
    except (KeyError, TypeError):
        raise UserInputError(f"{path}: not a pretraining checkpoint (no config.model / student); pass a pretrain "
                             "or import-fairseq checkpoint, or an export folder") from None
    model = build_model(cfg)
    model.load_state_dict(student)
    if model.teacher is not None and ckpt.get("teacher"):
        model.teacher.load_state_dict(ckpt["teacher"])
    if teacher:
        teacher_into_student(model)
    return model


def init_config(path: Path, modality: str, method: str, tokenizer_path: Path | None):
    """The model config of a checkpoint that starts continued pretraining (`pretrain --init`), checked against the
    run: same modality and method, and for text the tokenizer the checkpoint's embeddings were trained with.
    Raises UserInputError otherwise."""
    from model.build import config_from_dict
    from pipeline.finetune.model import check_tokenizer, text_vocab_mismatch

    ckpt = load_checkpoint(path)
    try:
        cfg = config_from_dict(ckpt["config"]["model"])
    except (KeyError, TypeError):
        raise UserInputError(f"{path}: not a pretraining checkpoint (no config.model); pass a pretrain or "
                             "import-fairseq checkpoint to --init") from None
    if (cfg.modality, cfg.method) != (modality, method):
        raise UserInputError(f"{path}: a {cfg.modality} {cfg.method} checkpoint; pass --modality {cfg.modality} "
                             f"--method {cfg.method}")
    if modality == "text":
        check_tokenizer(tokenizer_path, path, ckpt["config"], lambda tok: text_vocab_mismatch(tok, cfg.text))
    return cfg


def load_encoder(path: str | Path, teacher: bool = False, device: str | torch.device = "cpu"):
    """The encoder stored at `path` (see the module docstring), in eval mode on `device`.

    teacher: from a pretraining checkpoint, the EMA teacher's encoder instead of the student's (an export folder
    holds one of them already; its config.json says which). Returns a `model.encoder.Encoder` whose
    `extract_features(inputs, padding_mask=None, layer=None)` gives {"x": (B, T, D), "cls": (B, D) or None,
    "padding_mask"}. Raises UserInputError for a path that is none of the accepted kinds."""
    path = Path(path)
    if path.is_dir():
        model = _from_export(path)
        if teacher and json.loads((path / CONFIG_FILE).read_text())["weights"] != "teacher":
            raise UserInputError(f"{path}: this export holds the student; export the checkpoint with --teacher")
    else:
        model = model_from_checkpoint(load_checkpoint(path), path, teacher)
    model.remove_pretraining_modules()
    return model.to(device).eval()


def _from_export(folder: Path):
    from safetensors.torch import load_file

    from model.build import build_model, config_from_dict

    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise UserInputError(f"{folder}: not an export folder ({CONFIG_FILE} and {WEIGHTS_FILE} expected)")
    meta = json.loads(config_path.read_text())
    if meta.get("format") != EXPORT_FORMAT or meta.get("format_version", 0) > EXPORT_VERSION:
        raise UserInputError(f"{config_path}: format {meta.get('format')!r} version {meta.get('format_version')!r}; "
                             f"this code reads {EXPORT_FORMAT!r} up to version {EXPORT_VERSION}")
    model = build_model(config_from_dict(meta["model"]))
    model.remove_pretraining_modules()
    try:
        state = load_file(weights_path)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a damaged header
        raise UserInputError(f"{weights_path}: not a readable safetensors file ({e})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserInputError(f"{weights_path}: does not match {CONFIG_FILE}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
