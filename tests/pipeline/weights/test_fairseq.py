"""Importing fairseq data2vec 2.0 checkpoints, exporting safetensors, load_encoder.

The fairseq files are built here from our own tiny models: the file layout of fairseq's `Trainer.state_dict`
(`args`, `cfg` as a plain dict, `model` with the `_ema` teacher's fp32 parameters, `extra_state` holding a meter
of a class that does not exist when the file is loaded, `optimizer_history`), the parameter names of fairseq's
`Data2VecMultiModel` (written out below from fairseq's module structure, not from the importer's map), and the
model section of the released `examples/data2vec/config/v2/base_*_only_task.yaml` on top of fairseq's dataclass
defaults.
"""
import contextlib
import copy
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from helpers import run, tiny_image_shards
from model import build_model, get_config
from pipeline.cli import main
from pipeline.errors import UserInputError
from pipeline.weights import load_encoder
from pipeline.weights.fairseq import config_from_fairseq, import_checkpoint

# fairseq's dataclass defaults (Data2VecMultiConfig, D2vModalityConfig, D2vDecoderConfig and the modality configs)
MODEL_DEFAULTS = {
    "_name": "data2vec_multi", "loss_beta": 0.0, "loss_scale": None, "depth": 8, "start_drop_path_rate": 0.0,
    "end_drop_path_rate": 0.0, "num_heads": 12, "norm_eps": 1e-6, "norm_affine": True, "encoder_dropout": 0.1,
    "post_mlp_drop": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0, "dropout_input": 0.0, "layerdrop": 0.0,
    "embed_dim": 768, "mlp_ratio": 4.0, "layer_norm_first": False, "average_top_k_layers": 8,
    "end_of_block_targets": False, "clone_batch": 1, "layer_norm_target_layer": False, "batch_norm_target_layer": False,
    "instance_norm_target_layer": False, "instance_norm_targets": False, "layer_norm_targets": False,
    "ema_decay": 0.999, "ema_same_dtype": True, "log_norms": True, "ema_end_decay": 0.9999,
    "ema_anneal_end_step": 400000, "ema_encoder_only": True, "max_update": 400000, "shared_decoder": None,
    "min_target_var": 0.1, "min_pred_var": 0.01, "supported_modality": None, "mae_init": False, "seed": 1,
    "skip_ema": False, "cls_loss": 0.0, "recon_loss": 0.0, "d2v_loss": 1.0, "decoder_group": False,
}
MODALITY_DEFAULTS = {
    "prenet_depth": 4, "prenet_layerdrop": 0.0, "prenet_dropout": 0.0, "start_drop_path_rate": 0.0,
    "end_drop_path_rate": 0.0, "num_extra_tokens": 0, "init_extra_token_zero": True, "mask_noise_std": 0.01,
    "mask_prob_min": None, "mask_prob": 0.7, "inverse_mask": False, "mask_prob_adjust": 0.0, "keep_masked_pct": 0.0,
    "mask_length": 5, "add_masks": False, "remove_masks": False, "mask_dropout": 0.0, "encoder_zero_mask": True,
    "mask_channel_prob": 0.0, "mask_channel_length": 64, "ema_local_encoder": False, "local_grad_mult": 1.0,
    "use_alibi_encoder": False, "alibi_scale": 1.0, "learned_alibi": False, "alibi_max_pos": None,
    "learned_alibi_scale": False, "learned_alibi_scale_per_head": False, "learned_alibi_scale_per_layer": False,
    "num_alibi_heads": 12, "model_depth": 8,
    "decoder": {"decoder_dim": 384, "decoder_groups": 16, "decoder_kernel": 5, "decoder_layers": 5, "input_dropout": 0.1,
                "add_positions_masked": False, "add_positions_all": False, "decoder_residual": True,
                "projection_layers": 1, "projection_ratio": 2.0},
}
SECTION_DEFAULTS = {
    "image": {"type": "IMAGE", "input_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 768, "alibi_dims": 2,
              "alibi_distance": "manhattan", "fixed_positions": True, "transformer_decoder": False, "enc_dec_transformer": False},
    "audio": {"type": "AUDIO", "extractor_mode": "layer_norm",
              "feature_encoder_spec": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
              "conv_pos_width": 95, "conv_pos_groups": 16, "conv_pos_depth": 5, "conv_pos_pre_ln": False},
    "text": {"type": "TEXT", "max_source_positions": 512, "learned_pos": True, "dropout": 0.1, "no_scale_embedding": True,
             "layernorm_embedding": True, "no_token_positional_embeddings": False},
}
# the model sections of the released base_{images,audio,text}_only_task.yaml
RELEASED = {
    "image": ({"ema_decay": 0.9998, "ema_end_decay": 0.99999, "ema_anneal_end_step": 100000, "instance_norm_target_layer": True,
               "layer_norm_target_layer": False, "layer_norm_targets": True, "end_of_block_targets": False, "depth": 10,
               "average_top_k_layers": 10, "clone_batch": 16, "norm_eps": 1e-6, "min_target_var": 0, "min_pred_var": 0,
               "encoder_dropout": 0, "post_mlp_drop": 0, "attention_dropout": 0, "activation_dropout": 0,
               "supported_modality": "IMAGE", "cls_loss": 0.01, "ema_encoder_only": False},
              {"inverse_mask": True, "mask_prob": 0.8, "mask_prob_adjust": 0.07, "mask_length": 3, "mask_noise_std": 0.01,
               "prenet_depth": 2, "ema_local_encoder": True, "num_extra_tokens": 1, "init_extra_token_zero": False,
               "use_alibi_encoder": False,
               "decoder": {"decoder_dim": 768, "decoder_groups": 16, "decoder_kernel": 3, "decoder_layers": 6, "input_dropout": 0}}),
    "speech": ({"loss_beta": 0, "loss_scale": None, "depth": 12, "embed_dim": 768, "clone_batch": 8, "ema_decay": 0.999,
                "ema_end_decay": 0.99999, "ema_anneal_end_step": 75000, "ema_encoder_only": False, "average_top_k_layers": 8,
                "instance_norm_target_layer": True, "layer_norm_target_layer": False, "layer_norm_targets": False,
                "layerdrop": 0.05, "norm_eps": 1e-5, "supported_modality": "AUDIO"},
               {"feature_encoder_spec": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
                "conv_pos_depth": 5, "conv_pos_width": 95, "conv_pos_groups": 16, "prenet_depth": 0, "mask_prob": 0.5,
                "mask_prob_adjust": 0.05, "inverse_mask": False, "mask_length": 5, "mask_noise_std": 0.01,
                "mask_dropout": 0, "add_masks": False, "ema_local_encoder": False, "use_alibi_encoder": True,
                "prenet_layerdrop": 0.05, "prenet_dropout": 0.1, "learned_alibi_scale": True,
                "learned_alibi_scale_per_head": True,
                "decoder": {"input_dropout": 0.1, "decoder_dim": 384, "decoder_groups": 16, "decoder_kernel": 7, "decoder_layers": 4}}),
    "text": ({"loss_beta": 0, "loss_scale": 1, "depth": 12, "embed_dim": 768, "clone_batch": 8, "ema_decay": 0.9999,
              "ema_end_decay": 0.99999, "ema_anneal_end_step": 100000, "ema_encoder_only": True, "average_top_k_layers": 12,
              "layer_norm_target_layer": False, "instance_norm_target_layer": True, "batch_norm_target_layer": False,
              "instance_norm_targets": False, "layer_norm_targets": False, "layerdrop": 0, "norm_eps": 1e-5,
              "supported_modality": "TEXT"},
             {"mask_prob": 0.48, "mask_length": 1, "mask_noise_std": 0.01, "prenet_depth": 0,
              "decoder": {"input_dropout": 0.1, "decoder_dim": 768, "decoder_groups": 1, "decoder_kernel": 9, "decoder_layers": 5,
                          "decoder_residual": False, "projection_layers": 2, "projection_ratio": 2.0}}),
}
SECTION = {"image": "image", "speech": "audio", "text": "text"}
MOD = {"image": "IMAGE", "speech": "AUDIO", "text": "TEXT"}
# the tiny presets (model/presets.py) in fairseq's terms, on top of the released base sections
TINY = {
    "image": ({"depth": 3, "embed_dim": 128, "num_heads": 4, "average_top_k_layers": 3, "clone_batch": 4,
               "ema_decay": 0.999, "ema_end_decay": 0.9999, "ema_anneal_end_step": 2000},
              {"input_size": 28, "patch_size": 4, "embed_dim": 128, "prenet_depth": 1, "mask_prob": 0.75, "mask_prob_adjust": 0.1,
               "num_alibi_heads": 4, "decoder": {"decoder_dim": 128, "decoder_kernel": 3, "decoder_layers": 3, "decoder_groups": 8}}),
    "speech": ({"depth": 4, "embed_dim": 128, "num_heads": 4, "average_top_k_layers": 4, "clone_batch": 4, "layerdrop": 0.0,
                "ema_decay": 0.999, "ema_end_decay": 0.9999, "ema_anneal_end_step": 2000},
               {"feature_encoder_spec": "[(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64,2,2)] + [(64,2,2)]", "num_alibi_heads": 4,
                "decoder": {"decoder_dim": 64}}),
    "text": ({"depth": 4, "embed_dim": 128, "num_heads": 4, "average_top_k_layers": 4, "clone_batch": 4,
              "ema_decay": 0.999, "ema_end_decay": 0.9999, "ema_anneal_end_step": 2000},
             {"max_source_positions": 128, "num_alibi_heads": 4, "decoder": {"decoder_dim": 128, "decoder_layers": 3}}),
}


def merged(base: dict, *overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for override in overrides:
        for key, value in override.items():
            out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def fairseq_cfg(modality: str, tiny: bool = True) -> dict:
    """A resolved fairseq cfg (plain dict) for the released base config, shrunk to our tiny preset."""
    model_part, section_part = RELEASED[modality]
    model = merged(MODEL_DEFAULTS, model_part, TINY[modality][0] if tiny else {})
    section = merged(MODALITY_DEFAULTS, SECTION_DEFAULTS[SECTION[modality]], section_part, TINY[modality][1] if tiny else {})
    model["modalities"] = {SECTION[modality]: section}
    return {"_name": None, "common": {"seed": 1, "fp16": True}, "model": model,
            "task": {"_name": "audio_pretraining", "max_sample_size": 32000, "normalize": True} if modality == "speech" else {},
            "dataset": {"batch_size": 16}, "optimization": {"max_update": 400000, "lr": [0.001]}}


def fairseq_name(modality: str, ours: str) -> str:
    """fairseq `Data2VecMultiModel`'s name for our parameter (from fairseq's module structure)."""
    if ours.startswith(("blocks.", "norm.")):
        return ours
    prefix = f"modality_encoders.{MOD[modality]}."
    if modality == "image" and ours == "context_encoder.extra_tokens":
        return prefix + "extra_tokens"
    if modality == "speech":
        rules = [(r"local_encoder\.feature_extractor\.conv_layers\.(\d+)\.0\.weight", lambda m: f"local_encoder.conv_layers.{m[1]}.0.weight"),
                 (r"local_encoder\.feature_extractor\.conv_layers\.(\d+)\.2\.(\w+)", lambda m: f"local_encoder.conv_layers.{m[1]}.2.1.{m[2]}"),
                 (r"local_encoder\.layer_norm\.(\w+)", lambda m: f"project_features.1.{m[1]}"),
                 (r"local_encoder\.proj\.(\w+)", lambda m: f"project_features.2.{m[1]}"),
                 (r"context_encoder\.relative_positional_encoder\.(\d+)\.(\w+)",
                  lambda m: f"relative_positional_encoder.{int(m[1]) // 4 + 1}.0.{m[2]}"),
                 (r"context_encoder\.alibi_scale", lambda m: "alibi_scale")]
        for pattern, name in rules:
            m = re.fullmatch(pattern, ours)
            if m:
                return prefix + name(m)
    return prefix + ours


def to_fairseq_state(modality: str, state: dict, teacher_blocks_only: bool = False, half: bool = False) -> dict:
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach().clone()
        if name == "context_encoder.alibi_scale":
            tensor = tensor.reshape(1, 1, -1, 1, 1)
        out[name.removeprefix("blocks.") if teacher_blocks_only else fairseq_name(modality, name)] = (
            tensor.half() if half else tensor)
    return out


@contextlib.contextmanager
def fairseq_meters_module():
    """A stand-in for fairseq.logging.meters while the file is written; it is gone when the file is read."""
    names = ["fairseq", "fairseq.logging", "fairseq.logging.meters"]
    mods = {n: types.ModuleType(n) for n in names}

    class AverageMeter:
        def __init__(self):
            self.val, self.sum, self.count = 0.25, 1.0, 4

    AverageMeter.__module__, AverageMeter.__qualname__ = "fairseq.logging.meters", "AverageMeter"
    mods["fairseq.logging.meters"].AverageMeter = AverageMeter
    sys.modules.update(mods)
    try:
        yield AverageMeter
    finally:
        for n in names:
            sys.modules.pop(n, None)


def tiny_model(modality: str):
    torch.manual_seed(0)
    model = build_model(get_config(modality, "tiny"))
    with torch.no_grad():  # a teacher that differs from the student, as after training
        for p in model.teacher.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def write_fairseq(path: Path, modality: str, model, half: bool = False, cfg: dict | None = None) -> Path:
    state = to_fairseq_state(modality, model.state_dict(), half=half)
    blocks_only = model.cfg.ema_scope == "blocks"
    ema = to_fairseq_state(modality, model.teacher.state_dict(), teacher_blocks_only=blocks_only)
    if modality == "image":  # fairseq: a frozen nn.Parameter in the student and the teacher
        positions = model.context_encoder.positions.clone()
        state["modality_encoders.IMAGE.fixed_positional_encoder.positions"] = positions.half() if half else positions
        ema["modality_encoders.IMAGE.fixed_positional_encoder.positions"] = positions
    state["_ema"] = ema
    with fairseq_meters_module() as AverageMeter:
        torch.save({"args": None, "cfg": cfg or fairseq_cfg(modality), "model": state, "criterion": None,
                    "optimizer_history": [{"criterion_name": "ModelCriterion", "optimizer_name": "FairseqAdam",
                                           "lr_scheduler_state": {"best": None}, "num_updates": 1234}],
                    "task_state": {}, "extra_state": {"metrics": {"train": [("loss", AverageMeter())]},
                                                      "previous_training_time": 56.5}}, path)
    return path


def inputs(modality: str):
    g = torch.Generator().manual_seed(1)
    if modality == "image":
        return torch.rand(2, 3, 28, 28, generator=g), None
    if modality == "speech":
        return torch.randn(2, 4000, generator=g), None
    return torch.randint(5, 4096, (2, 20), generator=g), None


# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["image", "speech", "text"])
def test_released_base_configs_import_as_our_base_presets(modality):
    state = {"modality_encoders.TEXT.local_encoder.embed_tokens.weight": torch.empty(50265, 1)}
    cfg, report = config_from_fairseq(fairseq_cfg(modality, tiny=False), modality, state, Path("base.pt"))
    expected = get_config(modality, "base").to_dict()
    got = cfg.to_dict()
    # what fairseq's model section does not hold: the preset's name and seed, the per-GPU CLS rows, the crop length
    for key in ("preset", "seed", "cls_loss_reference_rows"):
        got.pop(key), expected.pop(key)
    if modality == "speech":
        assert got["speech"].pop("zero_padding_before_pos_conv") is False  # fairseq's audio encoder
        expected["speech"].pop("zero_padding_before_pos_conv")
        got["speech"].pop("max_sample_size"), expected["speech"].pop("max_sample_size")
    if modality == "text":  # fairseq's masked-LM task appends <mask> last to the dictionary
        assert got["text"].pop("mask_idx") == 50264
        expected["text"].pop("mask_idx")
    assert got == expected
    assert report["unknown_off"] == [] and "model.depth" in report["mapped"]


@pytest.mark.parametrize("modality", ["image", "speech", "text"])
def test_import_maps_every_tensor_and_reproduces_features_and_targets(modality, tmp_path):
    model = tiny_model(modality)
    path = write_fairseq(tmp_path / "fs.pt", modality, model)
    ckpt, report = import_checkpoint(path, modality)
    assert report["neutralised"] == ["fairseq.logging.meters.AverageMeter"]
    assert report["tensors"] == {"student": len(model.state_dict()), "teacher": len(model.teacher.state_dict())}
    assert ckpt["update"] == 1234 and ckpt["train_seconds"] == 56.5
    imported = build_model(__import__("model").config_from_dict(ckpt["config"]["model"]))
    imported.load_state_dict(ckpt["student"])
    imported.teacher.load_state_dict(ckpt["teacher"])
    imported.eval()
    x, _ = inputs(modality)
    with torch.no_grad():
        ours, theirs = model.extract_features(x), imported.extract_features(x)
        assert torch.equal(ours["x"], theirs["x"])
        local, padding = model.local_features(x)
        assert torch.equal(model.make_targets(x, local, padding), imported.make_targets(x, local, padding))


def test_fp16_student_is_upcast_and_every_leftover_name_is_listed(tmp_path):
    model = tiny_model("text")
    ckpt, report = import_checkpoint(write_fairseq(tmp_path / "half.pt", "text", model, half=True), "text")
    assert report["stored_dtypes"] == ["float16"] and {t.dtype for t in ckpt["student"].values()} == {torch.float32}
    assert torch.equal(ckpt["student"]["blocks.0.mlp.fc1.weight"], model.blocks[0].mlp.fc1.weight.half().float())
    # a tensor too many (another modality's encoder) and one too few: both named
    state = to_fairseq_state("text", model.state_dict())
    state.pop("blocks.1.norm2.bias")
    state["modality_encoders.AUDIO.alibi_scale"] = torch.ones(1, 1, 4, 1, 1)
    state["_ema"] = to_fairseq_state("text", model.teacher.state_dict(), teacher_blocks_only=True)
    torch.save({"cfg": fairseq_cfg("text"), "model": state}, tmp_path / "odd.pt")
    with pytest.raises(UserInputError, match=r"not in our model: modality_encoders\.AUDIO\.alibi_scale; "
                                             r"missing from the file: blocks\.1\.norm2\.bias"):
        import_checkpoint(tmp_path / "odd.pt", "text")


def test_settings_we_cannot_represent_are_refused_by_name(tmp_path):
    cfg = fairseq_cfg("speech")
    cfg["model"]["layer_norm_first"] = True
    cfg["model"]["modalities"]["audio"]["mask_channel_prob"] = 0.1
    cfg["model"]["modalities"]["audio"]["brand_new_switch"] = True
    cfg["model"]["modalities"]["audio"]["another_new_field"] = 0  # unknown but off: accepted, reported
    with pytest.raises(UserInputError) as e:
        config_from_fairseq(cfg, "speech", {}, Path("x.pt"))
    for name in ("model.layer_norm_first=True", "mod.mask_channel_prob=0.1", "mod.brand_new_switch=True"):
        assert name in str(e.value)
    cfg["model"]["layer_norm_first"] = False
    cfg["model"]["modalities"]["audio"]["mask_channel_prob"] = 0.0
    _, report = config_from_fairseq(cfg, "speech", {}, Path("x.pt"), ignore=("mod.brand_new_switch",))
    assert report["unknown_off"] == ["mod.another_new_field"] and report["ignored_on_request"] == ["mod.brand_new_switch"]
    cfg["model"]["modalities"]["audio"]["feature_encoder_spec"] = "__import__('os').system('true')"
    with pytest.raises(UserInputError, match="mod.feature_encoder_spec"):
        config_from_fairseq(cfg, "speech", {}, Path("x.pt"), ignore=("mod.brand_new_switch",))


def test_cli_import_export_load_encoder_round_trip_and_errors(tmp_path, capsys):
    model = tiny_model("speech")
    fs = write_fairseq(tmp_path / "fs.pt", "speech", model)
    assert main(["import-fairseq", str(fs), "--modality", "speech", "--out", str(tmp_path / "imp")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["neutralised"] == ["fairseq.logging.meters.AverageMeter"] and summary["update"] == 1234
    imported = tmp_path / "imp" / "imported.pt"
    for teacher in (False, True):
        out = tmp_path / ("teacher" if teacher else "student")
        assert main(["export", str(imported), "--out", str(out)] + (["--teacher"] if teacher else [])) == 0
        assert json.loads(capsys.readouterr().out)["weights"] == ("teacher" if teacher else "student")
        assert json.loads((out / "config.json").read_text())["model"]["speech"]["zero_padding_before_pos_conv"] is False
    audio = torch.randn(2, 4000, generator=torch.Generator().manual_seed(3))
    padding = torch.zeros(2, 4000, dtype=torch.bool)
    padding[1, 3000:] = True
    with torch.no_grad():
        for teacher in (False, True):
            direct = load_encoder(imported, teacher=teacher).extract_features(audio, padding)["x"]
            exported = load_encoder(tmp_path / ("teacher" if teacher else "student")).extract_features(audio, padding)["x"]
            assert torch.equal(direct, exported)
        student = load_encoder(imported).extract_features(audio)["x"]
        assert torch.equal(student, model.extract_features(audio)["x"])
        assert not torch.equal(student, load_encoder(imported, teacher=True).extract_features(audio)["x"])

    # unusable inputs: one line, exit 2
    (tmp_path / "cut.pt").write_bytes(fs.read_bytes()[: fs.stat().st_size // 2])
    cfg = fairseq_cfg("speech")
    cfg["model"]["_name"] = "wav2vec_ctc"
    torch.save({"cfg": cfg, "model": {}}, tmp_path / "ctc.pt")
    for path, message in ((tmp_path / "cut.pt", "truncated"), (tmp_path / "ctc.pt", "`wav2vec_ctc` checkpoint, not data2vec 2.0"),
                          (fs, "a AUDIO model")):
        modality = "image" if path == fs else "speech"
        assert main(["import-fairseq", str(path), "--modality", modality, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1



def test_a_missing_or_unusable_checkpoint_names_the_file_and_the_fix(tmp_path, capsys):
    from pipeline.weights.load import init_config

    run_dir, empty, missing = tmp_path / "run", tmp_path / "empty", tmp_path / "nope.pt"
    run_dir.mkdir()
    empty.mkdir()
    (run_dir / "last.pt").write_bytes(b"not a checkpoint")
    out = ["--out", str(tmp_path / "o")]
    cases = [(["export", str(missing), *out], f"{missing}: checkpoint not found; write one with `python -m pipeline pretrain"),
             (["export", str(run_dir), *out], f"{run_dir}: a folder, not a checkpoint file; pass {run_dir / 'last.pt'}\n"),
             (["export", str(empty), *out], f"{empty}: a folder, not a checkpoint file; pass a pretraining checkpoint"),
             (["export", str(run_dir / "last.pt"), *out], "not a loadable checkpoint"),
             (["import-fairseq", str(missing), "--modality", "image", *out],
              f"{missing}: checkpoint not found; pass the path of a downloaded fairseq data2vec 2.0"),
             (["import-fairseq", str(empty), "--modality", "image", *out], f"{empty}: a folder, not a checkpoint file")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
        assert argv[0] == "import-fairseq" or "import-fairseq FILE.pt --modality M" in err or "last.pt\n" in err
    with pytest.raises(UserInputError, match=r"nope.pt: checkpoint not found; write one with `python -m pipeline pretrain"):
        init_config(missing, "image", "data2vec2", None)  # pretrain --init

def test_finetune_and_continued_pretraining_run_on_an_imported_checkpoint(tmp_path, tiny_params):
    root = tmp_path / "work"
    root.mkdir()
    tiny_image_shards(root, tiny_params)
    fs = write_fairseq(tmp_path / "fs.pt", "image", tiny_model("image"), half=True)
    run([sys.executable, "-m", "pipeline", "import-fairseq", str(fs), "--modality", "image"], cwd=root)
    result = run([sys.executable, "-m", "pipeline", "finetune", "--modality", "image", "--task", "fashion_mnist",
                  "--checkpoint", "models/image/fairseq/import/imported.pt", "--workers", "0", "--no-progress",
                  "--max-updates", "2"], cwd=root)
    summary = json.loads(result.stdout)
    metrics = json.loads((root / summary["out"] / "metrics.json").read_text())
    assert metrics["pretrain_updates"] == 1234 and metrics["finetune_updates"] == 2 and 0 <= metrics["value"] <= 1

    # continued pretraining starts from the imported student and teacher (one update: EMA decay 0.999)
    run([sys.executable, "-m", "pipeline", "pretrain", "--modality", "image", "--init", "models/image/fairseq/import/imported.pt",
         "--out", "cont", "--max-updates", "1", "--workers", "0", "--no-progress"], cwd=root)
    imported = torch.load(root / "models/image/fairseq/import/imported.pt", weights_only=True)
    last = torch.load(root / "cont" / "last.pt", weights_only=True)
    assert last["update"] == 1 and last["config"]["model"] == {**imported["config"]["model"], "seed": 0}  # the run's seed
    moved = max((last["teacher"][k] - t).abs().max().item() for k, t in imported["teacher"].items())
    assert 0 < moved < 0.01
