"""The fine-tuning model: an encoder from a pretrained checkpoint (any method: `model.build_model` reads the
config stored in it) or a freshly initialized preset (`scratch`), with the task head of model/heads.py."""
from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import UserInputError
from pipeline.finetune.config import FinetuneConfig

ENCODER_OVERRIDES = ("dropout", "attention_dropout", "activation_dropout", "layerdrop")


def load_pretrained(path: Path | None) -> dict[str, Any] | None:
    """None for `--checkpoint none`; else the pieces of a pretraining checkpoint fine-tuning uses."""
    if path is None:
        return None
    from pipeline.train import checkpoint

    ckpt = checkpoint.load(path)
    try:
        model_cfg = ckpt["config"]["model"]
        student = ckpt["student"]
    except (KeyError, TypeError):
        raise UserInputError(f"{path}: not a pretraining checkpoint (no config.model / student); pass a "
                             "models/<modality>/<method>/pretrain/*.pt file or `none`") from None
    method = (ckpt["config"].get("pretrain") or {}).get("method") or model_cfg.get("method", "data2vec2")
    return {"path": str(path), "model": model_cfg, "student": student, "method": method,
            "update": int(ckpt.get("update", 0)), "train_seconds": float(ckpt.get("train_seconds", 0.0)),
            "preset": model_cfg.get("preset"), "tokenizer": ckpt["config"].get("tokenizer"),
            "tokenizer_vocab_sha256": ckpt["config"].get("tokenizer_vocab_sha256")}


def encoder_config(modality: str, cfg: FinetuneConfig, pretrained: dict[str, Any] | None, tokenizer_path: Path | None):
    """The encoder's config: the checkpoint's (pretrained) or the preset's (scratch), with the fine-tuning
    dropouts / layerdrop pushed in (fairseq pushes the ASR config keys into the loaded model config)."""
    from model import config_from_dict, get_config

    if pretrained is not None:
        model_cfg = config_from_dict(pretrained["model"])
        if model_cfg.modality != modality:
            raise UserInputError(f"{pretrained['path']}: a {model_cfg.modality} checkpoint, not {modality}")
    else:
        try:
            model_cfg = get_config(modality, cfg.preset, "data2vec2")
        except ValueError as e:
            raise UserInputError(str(e)) from None
        if modality == "text":
            from pipeline.pretrain.stage import text_vocab

            text_vocab(model_cfg, tokenizer_path)
    if modality == "text" and tokenizer_path is not None and pretrained is not None:
        check_tokenizer(tokenizer_path, pretrained["path"], pretrained, lambda tok: text_vocab_mismatch(tok, model_cfg.text))
    changes = {k: getattr(cfg, k) for k in ENCODER_OVERRIDES if getattr(cfg, k) is not None}
    if "dropout" in changes:
        changes["post_mlp_drop"] = changes["dropout"]
    model_cfg.encoder = dataclasses.replace(model_cfg.encoder, **changes)
    return model_cfg


def check_tokenizer(tokenizer_path: Path, checkpoint: str | Path, stored: dict[str, Any],
                    mismatch: Callable[[Any], str | None]) -> None:
    """Refuse a tokenizer other than the one `checkpoint` was trained with: ids would mean other strings (a text
    encoder's embeddings, a CTC head's letters). `stored`: the checkpoint's config (or load_pretrained's dict)
    with `tokenizer` (its path then) and `tokenizer_vocab_sha256` (pipeline/data/tokenizer.py vocab_digest).
    A checkpoint written before the digest was stored: `mismatch(tokenizer)` (the size and <pad> checks, a reason
    or None) is all that can be checked, and a note on stderr says so. Raises UserInputError naming both files."""
    from pipeline.data.tokenizer import load, vocab_digest

    tok = load(tokenizer_path)
    trained_with = stored.get("tokenizer") or "its tokenizer"
    digest = stored.get("tokenizer_vocab_sha256")
    if digest is None:
        if os.environ.get("RANK", "0") == "0":
            print(f"note: {checkpoint} records no tokenizer digest (written before digests were stored): only the "
                  f"vocabulary size and <pad> id of {tokenizer_path} are checked", file=sys.stderr)
        reason = mismatch(tok)
    else:
        reason = None if vocab_digest(tok) == digest else "another vocabulary (its sha256 differs)"
    if reason:
        raise UserInputError(f"{tokenizer_path}: not the tokenizer {checkpoint} was trained with ({trained_with}): "
                             f"{reason}, so ids would mean other strings; pass that one with --tokenizer")


def text_vocab_mismatch(tok, text_cfg) -> str | None:
    """Why `tok` cannot be a text encoder's tokenizer by size and <pad> id (model.config TextConfig), or None."""
    if tok.get_vocab_size() != text_cfg.vocab_size or tok.token_to_id("<pad>") != text_cfg.pad_idx:
        return (f"{tok.get_vocab_size()} tokens and <pad> id {tok.token_to_id('<pad>')}, not the encoder's "
                f"{text_cfg.vocab_size} and {text_cfg.pad_idx}")
    return None


def build_encoder(model_cfg, state: dict | None = None):
    """`model.build_model` for the config, the pretrained student weights loaded, pretraining parts dropped."""
    from model import build_model

    encoder = build_model(model_cfg)
    if state is not None:
        encoder.load_state_dict(state)
    encoder.remove_pretraining_modules()
    return encoder


def build_task_model(cfg: FinetuneConfig, encoder, num_outputs: int):
    """Encoder + head: image classifier (or linear probe), speech CTC, text classifier."""
    from model.heads import ImageClassifier, SpeechCTC, TextClassifier, set_drop_path

    if cfg.modality == "image":
        if cfg.mode == "finetune" and cfg.drop_path:
            set_drop_path(encoder, cfg.drop_path)
        return ImageClassifier(encoder, num_outputs, linear_probe=cfg.mode == "linear_probe",
                               label_smoothing=cfg.image.label_smoothing)
    if cfg.drop_path:
        set_drop_path(encoder, cfg.drop_path)
    if cfg.modality == "speech":
        return SpeechCTC(encoder, num_outputs, blank=0, final_dropout=cfg.speech.final_dropout,
                         mask_noise_std=cfg.speech.mask_noise_std)
    return TextClassifier(encoder, num_outputs, pooler_dropout=cfg.text.pooler_dropout)


def speech_vocab_size(tokenizer_path: Path) -> int:
    """The CTC output size: the largest letter id + 1 (ids need not be contiguous); <pad> (id 0) is the blank."""
    from pipeline.data.tokenizer import load

    tok = load(tokenizer_path)
    if tok.token_to_id("<pad>") != 0:
        raise UserInputError(f"{tokenizer_path}: <pad> must be id 0 (the CTC blank); train it with `python -m pipeline tokenizer --modality speech`")
    return max(tok.get_vocab(with_added_tokens=True).values()) + 1
