"""Fine-tuning: layer-decay groups, schedules, label fractions, heads and masks as units; then the CLI end to end
for every modality from a tiny pretrained checkpoint (3 pretraining updates, a few fine-tuning updates).

Whether pretraining beats scratch is not asserted here (the benchmark report shows it)."""
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

from helpers import TINY_PARAMS, run, write_params
from model import build_model, get_config
from model.heads import (ImageClassifier, SpeechCTC, TextClassifier, encoder_blocks, finetune_masks, set_drop_path,
                         span_mask)
from pipeline.finetune import config as finetune_config
from pipeline.errors import UserInputError
from pipeline.finetune.tasks import carve_validation, random_subset, stratified_subset
from pipeline.train.optim import layer_decay_param_groups, polynomial_factor, tri_stage_factor


def _encoder(modality):
    torch.manual_seed(0)
    cfg = get_config(modality, "tiny")
    if modality == "text":
        cfg.text.vocab_size = 50
    encoder = build_model(cfg)
    encoder.remove_pretraining_modules()
    return encoder


# ----------------------------------------------------------------------------------------------------
# optimizer groups and schedules


def test_layer_decay_groups_scale_blocks_top_down_and_keep_embeddings_and_head():
    encoder = _encoder("image")
    model = ImageClassifier(encoder, 10)
    blocks = encoder_blocks(encoder)
    assert len(blocks) == 4 and blocks[0] is encoder.context_encoder.blocks[0]  # 1 prenet + 3 main, bottom-up
    groups = layer_decay_param_groups(model, blocks, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    group_of = {id(p): g for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(group_of) == sum(len(g["params"]) for g in groups) == len(names)  # every parameter exactly once
    for name, p in names.items():
        g = group_of[id(p)]
        block = next((i for i, b in enumerate(blocks) if any(q is p for q in b.parameters())), None)
        expected_scale = 0.5 ** (4 - block) if block is not None else 1.0
        assert g["lr_scale"] == pytest.approx(expected_scale), name
        assert g["lr"] == pytest.approx(1e-3 * expected_scale), name
        assert g["weight_decay"] == (0.0 if p.ndim <= 1 or name.endswith(".bias") else 0.05), name
    # top block x decay, bottom block x decay^4; patch embedding, CLS and head untouched
    assert group_of[id(encoder.blocks[-1].mlp.fc1.weight)]["lr_scale"] == 0.5
    assert group_of[id(encoder.context_encoder.blocks[0].attn.qkv.weight)]["lr_scale"] == 0.5**4
    for p in (encoder.local_encoder.proj.weight, encoder.context_encoder.extra_tokens, model.head.weight):
        assert group_of[id(p)]["lr_scale"] == 1.0
    # no decay: one scale for everything; a linear probe optimizes the head only
    assert {g["lr_scale"] for g in layer_decay_param_groups(model, blocks, 1e-3, 0.05, 1.0)} == {1.0}
    probe = ImageClassifier(_encoder("image"), 10, linear_probe=True)
    probe_params = [p for g in layer_decay_param_groups(probe, encoder_blocks(probe.encoder), 1e-3, 0.0, 0.5) for p in g["params"]]
    assert {id(p) for p in probe_params} == {id(probe.head.weight), id(probe.head.bias)}


def test_tri_stage_and_polynomial_schedules():
    total = 100  # tri-stage: 10 warmup (from 0.01), 40 hold, 50 exponential decay to 0.05
    assert tri_stage_factor(0, total) == pytest.approx(0.01)
    assert tri_stage_factor(5, total) == pytest.approx(0.01 + 0.99 * 0.5)
    assert tri_stage_factor(10, total) == tri_stage_factor(49, total) == 1.0
    assert tri_stage_factor(75, total) == pytest.approx(math.sqrt(0.05))
    assert tri_stage_factor(100, total) == pytest.approx(0.05)
    assert polynomial_factor(0, 10, 110) == pytest.approx(0.1) and polynomial_factor(9, 10, 110) == 1.0
    assert polynomial_factor(60, 10, 110) == pytest.approx(0.5) and polynomial_factor(110, 10, 110) == 0.0


# ----------------------------------------------------------------------------------------------------
# labeled subsets


def test_label_fractions_are_deterministic_stratified_and_nested():
    rng = np.random.default_rng(1)
    labels = rng.permutation([0] * 200 + [1] * 50 + [2] * 10 + [3] * 1)
    small = stratified_subset(labels, 0.1, seed=0)
    assert small == stratified_subset(labels, 0.1, seed=0)  # deterministic
    assert small != stratified_subset(labels, 0.1, seed=1)  # the seed matters
    counts = np.bincount(labels[small], minlength=4).tolist()
    assert counts == [20, 5, 1, 1]  # the same fraction of every class, at least one sample each
    large = stratified_subset(labels, 0.5, seed=0)
    assert np.bincount(labels[large], minlength=4).tolist() == [100, 25, 5, 1]
    assert set(small) <= set(large)  # a smaller budget is a subset of a larger one
    assert stratified_subset(labels, 1.0, seed=0) == list(range(len(labels)))
    # speech: utterances, no classes
    utterances = random_subset(1000, 0.01, seed=0)
    assert len(utterances) == 10 and utterances == random_subset(1000, 0.01, seed=0)
    assert set(utterances) <= set(random_subset(1000, 0.1, seed=0))


def test_carved_validation_is_disjoint_stratified_and_fixed():
    labels = [i % 4 for i in range(400)]
    train, valid = carve_validation(labels, 400, 40, seed=0)
    assert len(valid) == 40 and not set(train) & set(valid) and sorted(train + valid) == list(range(400))
    assert np.bincount(np.array(labels)[valid]).tolist() == [10, 10, 10, 10]
    assert (train, valid) == carve_validation(labels, 400, 40, seed=0)
    with pytest.raises(UserInputError):
        carve_validation(labels, 400, 400, seed=0)


# ----------------------------------------------------------------------------------------------------
# heads and masks


def test_heads_train_and_predict():
    images = torch.randn(3, 3, 28, 28)
    model = ImageClassifier(_encoder("image"), 10, label_smoothing=0.1)
    loss, stats = model({"image": images, "target": torch.tensor([1, 2, 3])})
    loss.backward()
    assert torch.isfinite(loss) and model.logits(images).shape == (3, 10) and 0 <= stats["accuracy"] <= 1
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None
    soft = torch.full((3, 10), 0.1)  # mixed soft targets are accepted as well
    assert torch.isfinite(model({"image": images, "target": soft})[0])

    probe = ImageClassifier(_encoder("image"), 10, linear_probe=True).train()
    assert not probe.encoder.training and probe.head.training  # frozen features: no drop path in the encoder
    probe({"image": images, "target": torch.tensor([1, 2, 3])})[0].backward()
    assert all(p.grad is None for p in probe.encoder.parameters()) and probe.head.weight.grad is not None

    text = TextClassifier(_encoder("text"), 5)
    tokens = torch.tensor([[0, 7, 8, 9, 2], [0, 10, 2, 1, 1]])  # second row padded with <pad>=1
    loss, _ = text({"tokens": tokens, "target": torch.tensor([0, 4])})
    loss.backward()
    assert text.logits(tokens).shape == (2, 5) and text.dense.weight.grad is not None

    speech = SpeechCTC(_encoder("speech"), vocab_size=12)
    audio = torch.randn(2, 8000)
    padding = torch.zeros(2, 8000, dtype=torch.bool)
    padding[1, 5000:] = True
    frames = speech.encoder.cfg.speech.num_frames(8000)
    batch = {"audio": audio, "padding_mask": padding, "targets": torch.tensor([5, 6, 7, 8, 9]),
             "target_lengths": torch.tensor([3, 2]), "time_mask": torch.zeros(2, frames, dtype=torch.bool),
             "channel_mask": torch.zeros(2, 128, dtype=torch.bool)}
    batch["time_mask"][:, 3:8] = True
    batch["channel_mask"][:, :16] = True
    loss, _ = speech.train()(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in speech.encoder.local_encoder.feature_extractor.parameters())  # frozen CNN
    assert speech.encoder.local_encoder.proj.weight.grad is not None  # its projection trains
    log_probs, lengths = speech.eval().log_probs(batch)
    assert log_probs.shape == (2, frames, 12) and lengths.tolist() == [frames, speech.encoder.cfg.speech.num_frames(5000)]
    # an utterance with more letters than frames contributes 0, not inf (zero_infinity)
    long = {**batch, "targets": torch.arange(1, 1 + 2 * 100) % 11 + 1, "target_lengths": torch.tensor([100, 100])}
    assert torch.isfinite(speech.train()(long)[0])


def test_drop_path_ramps_over_prenet_and_main_blocks():
    encoder = _encoder("image")
    set_drop_path(encoder, 0.3)
    assert [b.drop_path.drop_prob for b in encoder_blocks(encoder)] == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_speech_finetune_masks():
    def masks(seed):
        return finetune_masks(np.random.default_rng(seed), frames=200, valid_frames=150, channels=128, mask_prob=0.3,
                              mask_length=10, channel_prob=0.25, channel_length=16)

    time, channel = masks(0)
    assert time.shape == (200,) and channel.shape == (128,)
    assert not time[150:].any()  # never on padding frames
    assert time.sum() >= 10 and channel.any()
    assert all((a == b).all() for a, b in zip(masks(0), masks(0)))  # a pure function of the generator
    assert span_mask(np.random.default_rng(0), 50, 0.0, 10).sum() == 0
    assert span_mask(np.random.default_rng(0), 4, 0.5, 10, min_spans=2).all()  # a span longer than the row


def test_config_layers_and_errors():
    params = {"seed": 3, "finetune": {"image": {"lr": 0.5, "linear_probe": {"lr": 0.25, "weight_decay": 0.0}}}}
    cfg = finetune_config.build("image", "fashion_mnist", "finetune", params)
    assert (cfg.lr, cfg.weight_decay, cfg.layer_decay, cfg.seed, cfg.metric) == (0.5, 0.05, 0.65, 3, "top1")
    probe = finetune_config.build("image", "fashion_mnist", "linear_probe", params, {"max_updates": 7})
    assert (probe.lr, probe.weight_decay, probe.max_updates) == (0.25, 0.0, 7)
    assert finetune_config.build("speech", "synth", "finetune", {}).schedule == "tri_stage"
    with pytest.raises(UserInputError, match="unknown key"):
        finetune_config.build("text", "lexname", "finetune", {"finetune": {"text": {"lrr": 1}}})
    with pytest.raises(UserInputError, match="linear_probe"):
        finetune_config.build("speech", "synth", "linear_probe", {})
    with pytest.raises(UserInputError, match="label-fraction"):
        finetune_config.build("text", "lexname", "finetune", {}, {"label_fraction": 0.0})


# ----------------------------------------------------------------------------------------------------
# the CLI end to end


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Tiny shards of all three modalities, tokenizers, and a 3-update data2vec 2.0 pretraining of each."""
    from pipeline.config import Shard
    from pipeline.data.prepare import prepare
    from pipeline.data.shard import shard
    from pipeline.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("finetune")
    params = json.loads(json.dumps(TINY_PARAMS))
    write_params(root / "params.yaml", params)
    for modality in ("image", "speech", "text"):
        raw = root / "data" / "raw" / modality
        prepare(modality, params, raw, progress=False)
        shard(modality, raw, root / "data" / "shards" / modality,
              Shard(**params[modality]["shard"]), progress=False)
    for modality in ("speech", "text"):
        train_tokenizer(modality, params, root / "data" / "shards" / modality, root / "data" / "tokenizers" / modality / "tokenizer.json")
    for modality in ("image", "speech", "text"):
        run([sys.executable, "-m", "pipeline", "pretrain", "--modality", modality, "--workers", "0", "--no-progress"], cwd=root)
    return root


def finetune(root, modality, task, *extra):
    result = run([sys.executable, "-m", "pipeline", "finetune", "--modality", modality, "--task", task, "--workers", "0",
                  "--checkpoint", f"models/{modality}/data2vec2/pretrain/last.pt", "--no-progress", *extra], cwd=root)
    return json.loads(result.stdout)


SCHEMA = {"modality", "method", "task", "mode", "label_fraction", "metric", "value", "split", "metrics", "checkpoint",
          "pretrain_updates", "pretrain_seconds", "finetune_updates", "finetune_seconds", "world_size", "device"}


def test_image_finetune_then_evaluate(workdir, monkeypatch, capsys):
    summary = finetune(workdir, "image", "fashion_mnist", "--label-fraction", "0.5")
    out = workdir / "models/image/data2vec2/finetune/fashion_mnist-f0.5"
    assert summary["out"] == str(out.relative_to(workdir))
    metrics = json.loads((out / "metrics.json").read_text())
    assert SCHEMA <= set(metrics)
    assert (metrics["method"], metrics["mode"], metrics["metric"], metrics["split"]) == ("data2vec2", "finetune", "top1", "test")
    assert metrics["checkpoint"] == "models/image/data2vec2/pretrain/last.pt"
    assert metrics["pretrain_updates"] == 3 and metrics["pretrain_seconds"] > 0 and metrics["finetune_updates"] == 4
    assert metrics["labeled_samples"] == 24  # 64 train - 16 carved for validation, half of it, stratified
    assert 0 <= metrics["value"] <= 1 and metrics["value"] == metrics["metrics"]["top1"]
    assert {"top5", "macro_f1", "mcc"} <= set(metrics["metrics"]) and metrics["metrics"]["num_samples"] == 16
    assert np.array(metrics["metrics"]["confusion_matrix"]).sum() == 16
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert {"last.pt", "best.pt"} <= {p.name for p in out.glob("*.pt")}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in records] == [1, 2, 3, 4] and "valid_top1" in records[1] and "valid_top1" in records[3]

    # the evaluate stage on the same split reproduces the final metric from best.pt
    from pipeline.cli import main

    monkeypatch.chdir(workdir)
    assert main(["evaluate", "--modality", "image", "--checkpoint", str(out / "best.pt"), "--task", "fashion_mnist"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["value"] == pytest.approx(metrics["value"]) and evaluated["split"] == "test"
    assert json.loads((out / "eval-test.json").read_text())["metrics"]["top1"] == pytest.approx(metrics["value"])
    assert main(["evaluate", "--modality", "image", "--checkpoint", str(out / "best.pt"), "--task", "lexname"]) == 2


def test_speech_ctc_finetune(workdir):
    finetune(workdir, "speech", "synth")
    out = workdir / "models/speech/data2vec2/finetune/synth"
    metrics = json.loads((out / "metrics.json").read_text())
    assert SCHEMA <= set(metrics) and metrics["metric"] == "wer" and metrics["value"] == metrics["metrics"]["wer"]
    assert metrics["value"] >= 0 and metrics["metrics"]["cer"] >= 0 and metrics["metrics"]["num_samples"] == 2
    samples = json.loads((out / "samples.json").read_text())
    assert len(samples) == 2 and all(s["reference"] and isinstance(s["hypothesis"], str) for s in samples)
    assert not (out / "confusion_matrix.png").exists()


def test_text_finetune_on_two_processes_and_resume_guard(workdir):
    summary = finetune(workdir, "text", "lexname", "--nproc", "2")
    out = workdir / "models/text/data2vec2/finetune/lexname"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["metric"] == "accuracy" and summary["updates"] == 4
    assert {"accuracy", "macro_f1", "mcc"} <= set(metrics["metrics"]) and metrics["metrics"]["num_samples"] == 20
    # same command again: last.pt is this run's and complete, so nothing trains; the result is evaluated again
    again = finetune(workdir, "text", "lexname", "--nproc", "2")
    assert again["updates"] == 4 and len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert again["result"]["value"] == metrics["value"]
    # another run into the same folder (scratch) does not resume the pretrained one's last.pt: it starts over
    result = run([sys.executable, "-m", "pipeline", "finetune", "--modality", "text", "--task", "lexname", "--checkpoint",
                  "none", "--out", str(out), "--workers", "0", "--no-progress", "--max-updates", "2"], cwd=workdir)
    assert "starting fresh" in result.stderr
    rerun = json.loads((out / "metrics.json").read_text())
    assert (rerun["method"], rerun["checkpoint"], rerun["finetune_updates"]) == ("scratch", "none", 2)


def test_mistakes_are_one_message_before_torchrun_starts(workdir, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.chdir(workdir)
    assert main(["finetune", "--modality", "image", "--checkpoint", "none", "--task", "cifar10"]) == 2
    assert "unknown image task 'cifar10'" in capsys.readouterr().err
    assert main(["finetune", "--modality", "text", "--checkpoint", "models/text/nope/last.pt", "--task", "lexname"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["finetune", "--modality", "speech", "--checkpoint", "none", "--task", "synth", "--shards", "elsewhere"]) == 2
    assert "elsewhere/index.json: no shards" in capsys.readouterr().err


def test_one_process_finetunes_here_and_more_under_torchrun(monkeypatch, capsys):
    from pipeline.cli import main
    from pipeline.finetune import stage
    from pipeline.train import launch

    launched = []
    monkeypatch.setattr(stage, "preflight", lambda args: None)
    monkeypatch.setattr(stage, "train", lambda args: {"trained_in": os.getpid()})
    monkeypatch.setattr(launch, "launch", lambda args, argv: launched.append(args.nproc))
    argv = ["finetune", "--modality", "image", "--checkpoint", "none", "--task", "fashion_mnist"]
    assert main(argv) == 0 and launched == []  # --nproc 1 (the default): no torchrun re-exec
    assert json.loads(capsys.readouterr().out) == {"trained_in": os.getpid()}
    assert main([*argv, "--nproc", "2"]) == 0 and launched == [2]
