"""Import a fairseq data2vec 2.0 pretraining checkpoint (`Data2VecMultiModel`, `cfg.model._name ==
data2vec_multi`) as one of this project's pretraining checkpoints.

Sources (fairseq repository): `fairseq/trainer.py` `Trainer.state_dict` (the file: `cfg`, `model`, `extra_state`,
...), `examples/data2vec/models/data2vec2.py` (`Data2VecMultiConfig`, `state_dict` adds the EMA teacher's fp32
parameters under `_ema`, `make_target_model`), `examples/data2vec/models/modalities/{base,images,audio,text,
modules}.py` (the modality configs and module names) and `examples/data2vec/config/v2/*_only_task.yaml`.

Three steps, each refusing what it cannot represent instead of guessing:
  * `config_from_fairseq`: cfg["model"] -> `Data2Vec2Config`. Every field is either mapped (FIELD_MAP), required
    to hold the one value this code implements (REQUIRED: anything else is refused, naming the field), or listed
    as having no effect on the model's math here (NO_EFFECT: optimizer grouping, logging, init of weights that
    are then loaded). A field in none of the tables is refused unless its value is off (False, 0, None, empty).
  * `map_state_dict`: fairseq parameter names -> ours (the name map of docs/model.md), for the student (`model`)
    and the teacher (`_ema`). A name left over on either side, or a shape that differs, is an error listing them.
  * `import_checkpoint`: load safely (pipeline/weights/safe_load.py), map, check, and return our checkpoint dict.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserInputError

MODALITY_KEYS = {"image": "IMAGE", "speech": "AUDIO", "text": "TEXT"}  # fairseq Modality names
SECTION_KEYS = {"image": "image", "speech": "audio", "text": "text"}  # cfg.model.modalities.<section>

# fairseq field -> our config path (section.field); "model." fields are Data2VecMultiConfig, "mod." the modality's
FIELD_MAP = {
    "model.loss_beta": "loss_beta", "model.loss_scale": "loss_scale", "model.depth": "encoder.depth",
    "model.num_heads": "encoder.num_heads", "model.embed_dim": "encoder.embed_dim", "model.mlp_ratio": "encoder.mlp_ratio",
    "model.norm_eps": "encoder.norm_eps", "model.encoder_dropout": "encoder.dropout",
    "model.attention_dropout": "encoder.attention_dropout", "model.activation_dropout": "encoder.activation_dropout",
    "model.post_mlp_drop": "encoder.post_mlp_drop", "model.layerdrop": "encoder.layerdrop",
    "model.start_drop_path_rate": "encoder.start_drop_path_rate", "model.end_drop_path_rate": "encoder.end_drop_path_rate",
    "model.average_top_k_layers": "average_top_k_layers", "model.end_of_block_targets": "end_of_block_targets",
    "model.clone_batch": "mask.clone_batch", "model.instance_norm_target_layer": "instance_norm_target_layer",
    "model.layer_norm_target_layer": "layer_norm_target_layer", "model.instance_norm_targets": "instance_norm_targets",
    "model.layer_norm_targets": "layer_norm_targets", "model.ema_decay": "ema_decay", "model.ema_end_decay": "ema_end_decay",
    "model.ema_anneal_end_step": "ema_anneal_end_step", "model.min_target_var": "min_target_var",
    "model.min_pred_var": "min_pred_var", "model.cls_loss": "cls_loss", "model.seed": "seed",
    "mod.mask_prob": "mask.mask_prob", "mod.mask_length": "mask.mask_length", "mod.mask_prob_adjust": "mask.mask_prob_adjust",
    "mod.inverse_mask": "mask.inverse_mask", "mod.mask_noise_std": "mask.mask_noise_std",
    "mod.decoder.decoder_dim": "decoder.decoder_dim", "mod.decoder.decoder_kernel": "decoder.decoder_kernel",
    "mod.decoder.decoder_layers": "decoder.decoder_layers", "mod.decoder.decoder_groups": "decoder.decoder_groups",
    "mod.decoder.decoder_residual": "decoder.decoder_residual", "mod.decoder.projection_layers": "decoder.projection_layers",
    "mod.decoder.projection_ratio": "decoder.projection_ratio", "mod.decoder.input_dropout": "decoder.input_dropout",
}
MODALITY_FIELD_MAP = {
    "image": {"mod.input_size": "image.input_size", "mod.in_chans": "image.in_chans", "mod.patch_size": "image.patch_size",
              "mod.prenet_depth": "image.prenet_depth", "mod.prenet_dropout": "image.prenet_dropout",
              "mod.num_extra_tokens": "image.num_extra_tokens"},
    "speech": {"mod.conv_pos_width": "speech.conv_pos_width", "mod.conv_pos_depth": "speech.conv_pos_depth",
               "mod.conv_pos_groups": "speech.conv_pos_groups", "mod.prenet_depth": "speech.prenet_depth",
               "mod.prenet_dropout": "speech.prenet_dropout", "mod.alibi_scale": "speech.alibi_scale",
               "mod.feature_encoder_spec": "speech.conv_feature_layers"},
    "text": {"mod.max_source_positions": "text.max_positions", "mod.dropout": "text.embed_dropout"},
}

# fairseq field -> the only value this code implements (what every released data2vec 2.0 config holds)
REQUIRED = {
    "model.norm_affine": True, "model.layer_norm_first": False, "model.dropout_input": 0.0,
    "model.batch_norm_target_layer": False, "model.shared_decoder": None, "model.recon_loss": 0.0, "model.d2v_loss": 1.0,
    "model.skip_ema": False, "mod.mask_prob_min": None, "mod.keep_masked_pct": 0.0, "mod.add_masks": False,
    "mod.remove_masks": False, "mod.mask_dropout": 0.0, "mod.mask_channel_prob": 0.0, "mod.local_grad_mult": 1.0,
    "mod.learned_alibi": False, "mod.decoder.add_positions_masked": False, "mod.decoder.add_positions_all": False,
}
MODALITY_REQUIRED = {
    "image": {"mod.use_alibi_encoder": False, "mod.fixed_positions": True, "mod.transformer_decoder": False,
              "mod.enc_dec_transformer": False},
    "speech": {"mod.use_alibi_encoder": True, "mod.learned_alibi_scale": True, "mod.learned_alibi_scale_per_head": True,
               "mod.learned_alibi_scale_per_layer": False, "mod.extractor_mode": "layer_norm",
               "mod.conv_pos_pre_ln": False, "mod.encoder_zero_mask": True, "mod.num_extra_tokens": 0,
               "mod.mlp_encoder": False},
    "text": {"mod.use_alibi_encoder": False, "mod.learned_pos": True, "mod.no_scale_embedding": True,
             "mod.layernorm_embedding": True, "mod.no_token_positional_embeddings": False, "mod.prenet_depth": 0,
             "mod.num_extra_tokens": 0},
}
# fields read elsewhere (ema scope, modality, the prenet's extras) or without effect on the math of the model here
NO_EFFECT = {
    "model._name": "checked: data2vec_multi", "model.supported_modality": "checked against --modality",
    "model.ema_encoder_only": "with ema_local_encoder: ema_scope", "mod.ema_local_encoder": "with ema_encoder_only: ema_scope",
    "model.modalities": "the modality's section is read", "model.ema_same_dtype": "precision of the EMA forward",
    "model.log_norms": "logging", "model.max_update": "the training schedule", "model.decoder_group": "optimizer groups",
    "model.mae_init": "initialisation (the weights are loaded)", "mod.init_extra_token_zero": "initialisation",
    "mod.type": "the modality", "mod.model_depth": "= depth", "mod.num_alibi_heads": "checked: = num_heads",
    "mod.mask_channel_length": "mask_channel_prob is 0", "mod.alibi_max_pos": "learned_alibi is off",
    "mod.alibi_dims": "ALiBi settings of images (ALiBi is off)", "mod.alibi_distance": "ALiBi settings of images",
    "mod.prenet_dropout": "text: used only with prenet blocks (prenet_depth is 0)",
    "mod.alibi_scale": "images and text: ALiBi is off", "mod.learned_alibi_scale": "images and text: ALiBi is off",
    "mod.learned_alibi_scale_per_head": "images and text: ALiBi is off",
    "mod.learned_alibi_scale_per_layer": "images and text: ALiBi is off",
    "mod.embed_dim": "checked: = embed_dim", "mod.encoder_zero_mask": "images and text: no positional conv",
    "mod.prenet_layerdrop": "checked: 0 when there are prenet blocks",
    "mod.start_drop_path_rate": "checked: 0 when there are prenet blocks",
    "mod.end_drop_path_rate": "checked: 0 when there are prenet blocks",
    "mod.mlp_n_in": "mlp_encoder is off", "mod.mlp_dim": "mlp_encoder is off",
}


def _off(value: Any) -> bool:
    return value is None or value is False or value == 0 or value in ("", [], {})


def _flatten(section: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = {}
    for key, value in section.items():
        if isinstance(value, dict) and key == "decoder":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def conv_layers_from_spec(spec: str) -> list[tuple[int, int, int]]:
    """fairseq's `feature_encoder_spec` ("[(512, 10, 5)] + [(512, 3, 2)] * 4 + ...") without eval: lists of
    int tuples, `+` and `* int` only. Raises ValueError for anything else."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported expression {ast.dump(node)[:60]}")

    layers = value(ast.parse(spec, mode="eval").body)
    if not (isinstance(layers, list) and all(isinstance(t, tuple) and len(t) == 3 for t in layers)):
        raise ValueError("not a list of (dim, kernel, stride)")
    return [tuple(int(v) for v in t) for t in layers]


def _set(cfg, path: str, value: Any) -> None:
    section, _, name = path.rpartition(".")
    target = getattr(cfg, section) if section else cfg
    if name == "conv_feature_layers":
        value = conv_layers_from_spec(value)
    current = getattr(target, name)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    setattr(target, name, value)


def _ema_scope(fields: dict[str, Any]) -> str:
    if fields.get("model.ema_encoder_only", True):
        return "blocks"
    return "all" if fields.get("mod.ema_local_encoder", False) else "encoder"

# fairseq's dataclass defaults, for a field an older checkpoint's cfg lacks (Data2VecMultiConfig, D2vModalityConfig,
# D2vDecoderConfig, D2vImageConfig, D2vAudioConfig, D2vTextConfig)
DEFAULTS = {
    "model.loss_beta": 0.0, "model.loss_scale": None, "model.depth": 8, "model.num_heads": 12, "model.embed_dim": 768,
    "model.mlp_ratio": 4.0, "model.norm_eps": 1e-6, "model.encoder_dropout": 0.1, "model.attention_dropout": 0.1,
    "model.activation_dropout": 0.0, "model.post_mlp_drop": 0.1, "model.layerdrop": 0.0,
    "model.start_drop_path_rate": 0.0, "model.end_drop_path_rate": 0.0, "model.average_top_k_layers": 8,
    "model.end_of_block_targets": False, "model.clone_batch": 1, "model.instance_norm_target_layer": False,
    "model.layer_norm_target_layer": False, "model.instance_norm_targets": False, "model.layer_norm_targets": False,
    "model.ema_decay": 0.999, "model.ema_end_decay": 0.9999, "model.min_target_var": 0.1, "model.min_pred_var": 0.01,
    "model.cls_loss": 0.0, "model.ema_encoder_only": True,
    "mod.mask_prob": 0.7, "mod.mask_length": 5, "mod.mask_prob_adjust": 0.0, "mod.inverse_mask": False,
    "mod.mask_noise_std": 0.01, "mod.prenet_depth": 4, "mod.prenet_dropout": 0.0, "mod.num_extra_tokens": 0,
    "mod.alibi_scale": 1.0, "mod.use_alibi_encoder": False, "mod.learned_alibi_scale": False,
    "mod.learned_alibi_scale_per_head": False, "mod.ema_local_encoder": False,
    "mod.decoder.decoder_dim": 384, "mod.decoder.decoder_kernel": 5, "mod.decoder.decoder_layers": 5,
    "mod.decoder.decoder_groups": 16, "mod.decoder.decoder_residual": True, "mod.decoder.projection_layers": 1,
    "mod.decoder.projection_ratio": 2.0, "mod.decoder.input_dropout": 0.1,
    "mod.input_size": 224, "mod.in_chans": 3, "mod.patch_size": 16,
    "mod.conv_pos_width": 95, "mod.conv_pos_depth": 5, "mod.conv_pos_groups": 16,
    "mod.feature_encoder_spec": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
    "mod.max_source_positions": 512, "mod.dropout": 0.1,
}


def fairseq_fields(ckpt_cfg: Any, modality: str, path: Path) -> dict[str, Any]:
    """cfg["model"] and its modality section, flat: {"model.depth": 12, "mod.mask_prob": 0.5, "mod.decoder.x": ..}.
    Raises UserInputError for a file that is not a data2vec 2.0 pretraining checkpoint of `modality`."""
    model = ckpt_cfg.get("model") if isinstance(ckpt_cfg, dict) else None
    if not isinstance(model, dict):
        raise UserInputError(f"{path}: no cfg['model'] dict: not a fairseq checkpoint written by a Hydra-era "
                             "fairseq (cfg is a plain dict there)")
    name = model.get("_name")
    if name != "data2vec_multi":
        raise UserInputError(f"{path}: a fairseq `{name}` checkpoint, not data2vec 2.0 pretraining (data2vec_multi); "
                             "fine-tuned and data2vec 1.0 checkpoints cannot be imported, use the pretrained one")
    supported = model.get("supported_modality")
    if isinstance(supported, str) and supported.upper() != MODALITY_KEYS[modality]:
        raise UserInputError(f"{path}: a {supported} model (cfg.model.supported_modality), not {modality}: "
                             f"pass --modality {dict(map(reversed, MODALITY_KEYS.items())).get(supported.upper(), '?')}")
    section = (model.get("modalities") or {}).get(SECTION_KEYS[modality])
    if not isinstance(section, dict):
        raise UserInputError(f"{path}: no cfg.model.modalities.{SECTION_KEYS[modality]} section for {modality}")
    if not isinstance(section.get("decoder"), dict):
        raise UserInputError(f"{path}: cfg.model.modalities.{SECTION_KEYS[modality]}.decoder is empty: a "
                             "data2vec 2.0 model without its decoder cannot be continued or checked")
    return {f"model.{k}": v for k, v in model.items()} | _flatten(section, "mod.")


def config_from_fairseq(ckpt_cfg: Any, modality: str, state: dict[str, Any], path: Path,
                        ignore: tuple[str, ...] = ()):
    """Our `Data2Vec2Config` for a fairseq checkpoint's `cfg` (a plain dict) and its report: which fields were
    mapped, checked, without effect here, unknown but off, or ignored on request (`ignore`: flat names as in
    the error, e.g. `mod.mask_dropout`). Raises UserInputError listing every field it cannot represent."""
    from model.presets import get_config

    fields = fairseq_fields(ckpt_cfg, modality, path)
    ignored = sorted(set(ignore) & set(fields))
    value = lambda k: fields.get(k, DEFAULTS.get(k))  # noqa: E731
    cfg = get_config(modality, "base")  # supplies what fairseq's cfg does not hold: decoder_type, method, ...
    cfg.preset = "fairseq"
    mapped = FIELD_MAP | MODALITY_FIELD_MAP[modality]
    problems, unknown_off = [], []
    for key, target in mapped.items():
        try:
            _set(cfg, target, value(key))
        except (ValueError, SyntaxError, TypeError) as e:
            problems.append(f"{key}={value(key)!r} ({e})")
    required = REQUIRED | MODALITY_REQUIRED[modality]
    for key, wanted in required.items():
        got = fields.get(key, DEFAULTS.get(key, wanted))
        if got != wanted and not (_off(wanted) and _off(got)) and key not in ignored:
            problems.append(f"{key}={got!r} (only {wanted!r} is implemented)")
    for key in sorted(set(fields) - set(mapped) - set(required) - set(NO_EFFECT) - set(ignored)):
        (unknown_off if _off(fields[key]) else problems).append(key if _off(fields[key]) else f"{key}={fields[key]!r} (unknown field)")
    problems += _consistency(cfg, fields, modality, value)
    cfg.ema_scope = _ema_scope(fields)
    _modality_fixups(cfg, ckpt_cfg, modality, state)
    try:
        cfg.__post_init__()
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise UserInputError(f"{path}: cannot represent these fairseq settings: {'; '.join(problems)} "
                             "(--ignore-field NAME imports anyway, at your risk)")
    report = {"mapped": {k: mapped[k] for k in mapped}, "checked": sorted(required), "no_effect": NO_EFFECT,
              "unknown_off": unknown_off, "ignored_on_request": ignored}
    return cfg, report


def _consistency(cfg, fields: dict[str, Any], modality: str, value) -> list[str]:
    """Settings that are representable only together with others."""
    problems = []
    if cfg.prenet_depth > 0:
        for key in ("mod.prenet_layerdrop", "mod.start_drop_path_rate", "mod.end_drop_path_rate"):
            if not _off(fields.get(key)):
                problems.append(f"{key}={fields[key]!r} (the prenet blocks have no layerdrop or drop path here)")
    if modality == "speech" and fields.get("mod.num_alibi_heads", cfg.encoder.num_heads) != cfg.encoder.num_heads:
        problems.append(f"mod.num_alibi_heads={fields['mod.num_alibi_heads']!r} (ALiBi uses every head here)")
    if modality == "image" and fields.get("mod.embed_dim", cfg.embed_dim) != cfg.embed_dim:
        problems.append(f"mod.embed_dim={fields['mod.embed_dim']!r} (a patch embedding narrower than the model "
                        "needs a projection this code does not have)")
    if modality == "text" and cfg.encoder.norm_eps != 1e-5:
        problems.append(f"model.norm_eps={cfg.encoder.norm_eps!r} (fairseq's text embedding LayerNorm keeps eps "
                        "1e-5; here it shares norm_eps)")
    return problems


def _modality_fixups(cfg, ckpt_cfg: dict[str, Any], modality: str, state: dict[str, Any]) -> None:
    """What the model section does not say: the text vocabulary (from the embedding), the task's crop length,
    the image CLS loss's row count (fairseq sums over the per-GPU batch), fairseq's speech padding."""
    task, dataset = ckpt_cfg.get("task") or {}, ckpt_cfg.get("dataset") or {}
    if modality == "text":
        rows = state.get("modality_encoders.TEXT.local_encoder.embed_tokens.weight")
        if rows is not None:
            # fairseq Dictionary: <s>=0 <pad>=1 </s>=2 <unk>=3, ..., <mask> appended last by the masked-LM task
            cfg.text.vocab_size, cfg.text.pad_idx, cfg.text.mask_idx = rows.shape[0], 1, rows.shape[0] - 1
    if modality == "speech":
        cfg.speech.zero_padding_before_pos_conv = False  # fairseq's data2vec 2.0 audio encoder does not zero them
        if isinstance(task.get("max_sample_size"), int):
            cfg.speech.max_sample_size = task["max_sample_size"]
    if modality == "image" and isinstance(dataset.get("batch_size"), int):
        cfg.cls_loss_reference_rows = dataset["batch_size"] * cfg.mask.clone_batch


def check_task(ckpt_cfg: Any, modality: str, path: Path) -> None:
    """The input the pipeline feeds must be the input the model was trained on. Speech: per-utterance normalized
    waveforms (pipeline/pretrain/data.py normalize_waveform), fairseq `task.normalize: true`."""
    task = ckpt_cfg.get("task") if isinstance(ckpt_cfg, dict) else None
    if modality == "speech" and isinstance(task, dict) and task.get("normalize") is False:
        raise UserInputError(f"{path}: cfg.task.normalize is false: this model was trained on raw waveforms, the "
                             "pipeline feeds per-utterance normalized ones")


# ---------------------------------------------------------------------------------------------------------------
# parameter names: fairseq (after `modality_encoders.<MOD>.`) -> ours

_SPEECH_RENAMES = [
    (re.compile(r"local_encoder\.conv_layers\.(\d+)\.0\.weight"), r"local_encoder.feature_extractor.conv_layers.\1.0.weight"),
    (re.compile(r"local_encoder\.conv_layers\.(\d+)\.2\.1\.(weight|bias)"), r"local_encoder.feature_extractor.conv_layers.\1.2.\2"),
    (re.compile(r"project_features\.1\.(weight|bias)"), r"local_encoder.layer_norm.\1"),
    (re.compile(r"project_features\.2\.(weight|bias)"), r"local_encoder.proj.\1"),
    (re.compile(r"alibi_scale"), "context_encoder.alibi_scale"),
]
_POSITIONAL_CONV = re.compile(r"relative_positional_encoder\.(\d+)\.0\.(weight|bias)")
IMAGE_POSITIONS = "fixed_positional_encoder.positions"  # the fixed sin-cos table: compared, not copied


def our_name(modality: str, name: str) -> str:
    """Our parameter name for fairseq's `name` (a student or `_ema` name with the `blocks.` prefix); names
    outside the map come back unchanged, so the key check lists them."""
    prefix = f"modality_encoders.{MODALITY_KEYS[modality]}."
    if not name.startswith(prefix):
        return name  # blocks.*, norm.*
    rest = name[len(prefix):]
    if modality == "image" and rest == "extra_tokens":
        return "context_encoder.extra_tokens"
    if modality == "speech":
        m = _POSITIONAL_CONV.fullmatch(rest)
        if m:  # fairseq: Sequential(TransposeLast, 5 x Sequential(conv, ...), TransposeLast); ours: 4 modules a layer
            return f"context_encoder.relative_positional_encoder.{4 * (int(m[1]) - 1)}.{m[2]}"
        for pattern, replacement in _SPEECH_RENAMES:
            if pattern.fullmatch(rest):
                return pattern.sub(replacement, rest)
    return rest


def map_state_dict(state: dict[str, Any], modality: str, blocks_only: bool = False) -> dict[str, torch.Tensor]:
    """fairseq names -> ours, tensors as float32 (released students are stored in fp16). `blocks_only`: the
    text teacher of `ema_encoder_only`, whose `_ema` names are the block list's (`{i}.norm1.weight`)."""
    out = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            out[name] = tensor  # listed as left over by check_keys
            continue
        if tensor.is_floating_point():
            tensor = tensor.float()
        ours = f"blocks.{name}" if blocks_only else our_name(modality, name)
        if ours == "context_encoder.alibi_scale":
            tensor = tensor.reshape(-1)  # (1, 1, H, 1, 1) per head -> (H,)
        out[ours] = tensor
    return out


def check_keys(mapped: dict[str, Any], expected: dict[str, torch.Tensor], what: str, path: Path) -> None:
    """Every tensor of the file has exactly one partner of the same shape: else UserInputError listing the
    names left over on either side and the shapes that differ."""
    extra = sorted(set(mapped) - set(expected))
    missing = sorted(set(expected) - set(mapped))
    shapes = [f"{k} {tuple(mapped[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(mapped) & set(expected))
              if not isinstance(mapped[k], torch.Tensor) or mapped[k].shape != expected[k].shape]
    if extra or missing or shapes:
        def few(items):
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

        parts = [f"{label}: {few(items)}" for label, items in (("not in our model", extra), ("missing from the file",
                 missing), ("shape differs", shapes)) if items]
        raise UserInputError(f"{path}: the {what} does not map one to one onto the config's model; {'; '.join(parts)}")


def _take_positions(state: dict[str, Any], modality: str, model, path: Path, what: str) -> None:
    """The image's fixed sin-cos table is a parameter in fairseq and a buffer here: it must equal ours (else the
    grid or width differs), and is then dropped."""
    key = f"modality_encoders.{MODALITY_KEYS[modality]}.{IMAGE_POSITIONS}"
    if modality != "image" or key not in state:
        return
    from model.image_encoder import sincos_2d_positions

    grid = model.cfg.image.grid_size
    theirs, ours = state.pop(key).float(), sincos_2d_positions(model.cfg.embed_dim, grid, grid)[None]
    if theirs.shape != ours.shape or not torch.allclose(theirs, ours, atol=1e-3):  # fp16 students: rounding <= 5e-4
        raise UserInputError(f"{path}: the {what}'s {IMAGE_POSITIONS} {tuple(theirs.shape)} is not the 2-D sin-cos "
                             f"table of the config's grid {tuple(ours.shape)}")


def import_checkpoint(path: Path, modality: str, ignore: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a fairseq data2vec 2.0 pretraining checkpoint safely and convert it. Returns (our pretraining
    checkpoint: student, teacher, config, update, train_seconds; the import report). Raises UserInputError for a
    file that is unusable, not data2vec 2.0 pretraining, holds settings this code cannot represent, or whose
    tensors do not map one to one."""
    from model.build import build_model
    from pipeline.weights.safe_load import safe_load

    path = Path(path)
    loaded = safe_load(path)
    obj = loaded.obj
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict) or "cfg" not in obj:
        raise UserInputError(f"{path}: not a fairseq checkpoint (a dict with `cfg` and `model`)")
    state = dict(obj["model"])
    ema = state.pop("_ema", None)
    cfg, report = config_from_fairseq(obj["cfg"], modality, state, path, ignore)
    check_task(obj["cfg"], modality, path)
    if not isinstance(ema, dict):
        raise UserInputError(f"{path}: no EMA teacher (`model._ema`): a checkpoint saved with skip_ema or stripped; "
                             "data2vec 2.0 pretraining checkpoints carry one")
    with torch.device("meta"):  # the reference for names and shapes: no memory, no init
        model = build_model(cfg)
    _take_positions(state, modality, model, path, "student")
    _take_positions(ema, modality, model, path, "teacher")
    student = map_state_dict(state, modality)
    teacher = map_state_dict(ema, modality, blocks_only=cfg.ema_scope == "blocks")
    check_keys(student, model.state_dict(), "student (`model`)", path)
    check_keys(teacher, model.teacher.state_dict(), "EMA teacher (`model._ema`)", path)
    history = obj.get("optimizer_history") or [{}]
    extra = obj.get("extra_state") if isinstance(obj.get("extra_state"), dict) else {}
    seconds = extra.get("previous_training_time")
    report |= {"source": str(path), "neutralised": loaded.neutralised, "tensors": {"student": len(student), "teacher": len(teacher)},
               "stored_dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in state.values() if isinstance(t, torch.Tensor)}),
               "not_imported": sorted(k for k in obj if k not in ("cfg", "model", "args"))}
    ckpt = {"student": student, "teacher": teacher,
            "config": {"model": cfg.to_dict(), "pretrain": None, "tokenizer": None, "tokenizer_vocab_sha256": None,
                       "imported_from": {"path": str(path), "format": "fairseq data2vec_multi"}},
            "update": int(history[-1].get("num_updates", 0) or 0),
            "train_seconds": float(seconds) if isinstance(seconds, (int, float)) else 0.0}
    return ckpt, report
