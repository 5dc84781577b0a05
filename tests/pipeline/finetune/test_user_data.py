"""Fine-tuning and evaluation on users' data shaped like real reports: a test split of clips too short for their
transcripts (CTC cannot align them), a validation folder whose files were all unusable, and a tokenizer other than
the one a checkpoint was trained with (same size, another vocabulary order).

Tiny inputs built here; each fine-tuning run is a couple of updates from scratch (or a 1-update pretraining)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import TINY_PARAMS, run, write_params
from pipeline.errors import UserInputError

PANGRAM = "the quick brown fox jumps over the lazy dog"


def _params(root):
    params = json.loads(json.dumps(TINY_PARAMS))
    params["finetune"]["image"]["valid_size"] = 8
    write_params(root / "params.yaml", params)
    return params


def _cli(root, *args):
    """`python -m pipeline ARGS` in `root`, whatever its exit status."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=root, capture_output=True, text=True, timeout=600)


def _last_line(text):
    return [line for line in text.splitlines() if line.strip()][-1]


def _reordered(tokenizer, out, a, b):
    """A copy of tokenizer.json with the ids of tokens `a` and `b` swapped: the same size, the same specials."""
    data = json.loads(tokenizer.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    out.write_text(json.dumps(data), encoding="utf-8")
    return out


# ----------------------------------------------------------------------------------------------------
# speech: infeasible CTC targets; a reordered character vocabulary


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory):
    """Manifests of 1 s noise clips (train, valid) and a test split of a 0.2 s and a 0.12 s clip whose transcripts
    have 43 and 31 characters (9 and 5 CTC frames); its shards, tokenizer, and a 3-update fine-tuning from scratch."""
    from pipeline.config import Shard
    from pipeline.data.shard import shard
    from pipeline.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("speech_user")
    params = _params(root)
    source = root / "source"
    source.mkdir()
    rng = np.random.default_rng(0)
    words = PANGRAM.split()
    clips = {"train": [(1.0, " ".join(words[i:i + 3])) for i in range(0, 8, 2)] + [(1.0, PANGRAM)],
             "valid": [(1.0, "the lazy dog"), (1.0, "quick brown fox")],
             "test": [(0.2, PANGRAM), (0.12, "jumps over the lazy dog quickly")]}
    for split, items in clips.items():
        lines = []
        for k, (seconds, text) in enumerate(items):
            name = f"{split}-{k}.wav"
            sf.write(source / name, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
            lines.append(f"{name}\t{text}")
        (source / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shards = root / "shards"
    index = shard("speech", source, shards, Shard(max_samples_per_shard=4), progress=False)
    assert index["splits"]["test"]["num_samples"] == 2 and not index["skipped"]
    tokenizer = root / "tokenizer.json"
    train_tokenizer("speech", params, shards, tokenizer)
    run([sys.executable, "-m", "pipeline", "finetune", "--modality", "speech", "--task", "mine", "--checkpoint", "none",
         "--shards", str(shards), "--tokenizer", str(tokenizer), "--out", "ft", "--workers", "0", "--no-progress"], cwd=root)
    return root


def test_infeasible_ctc_targets_are_counted_not_scored_as_zero(speech_run):
    metrics = json.loads((speech_run / "ft" / "metrics.json").read_text())["metrics"]
    # both test utterances have more letters than frames: CTC (zero_infinity) gives each a loss of 0, which is no score
    assert metrics["ctc_infeasible"] == 2
    assert "ctc_loss" not in metrics
    assert metrics["num_samples"] == 2 and metrics["wer"] >= 0 and metrics["cer"] >= 0  # still decoded and scored
    samples = json.loads((speech_run / "ft" / "samples.json").read_text())
    assert [s["ctc_feasible"] for s in samples] == [False, False] and samples[0]["reference"] == PANGRAM
    # validation (feasible 1 s clips) logs a real loss
    records = [json.loads(line) for line in (speech_run / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["valid_ctc_loss"] > 0 for r in records if "valid_wer" in r)


def test_ctc_loss_is_the_mean_over_feasible_utterances_only():
    from pipeline.finetune.evaluate import score
    from pipeline.finetune.metrics import ctc_feasible

    # frames 3, 2, 4: "ab" fits 3 frames; "aab" needs a blank between the a's (4 > 2); "abc" fits 4
    feasible = ctc_feasible([1, 2, 1, 1, 2, 1, 2, 3], [2, 3, 3], [3, 2, 4])
    assert feasible.tolist() == [True, False, True]
    outputs = {"ids": [0, 1, 2], "references": ["ab", "aab", "abc"], "hypotheses": ["ab", "b", "abc"],
               "ctc_losses": [1.0, 0.0, 3.0], "ctc_feasible": feasible.tolist()}
    metrics, samples = score("speech", outputs)
    assert metrics["ctc_loss"] == 2.0 and metrics["ctc_infeasible"] == 1  # not (1 + 0 + 3) / 3
    assert metrics["num_samples"] == 3 and metrics["wer"] == pytest.approx(1 / 3)  # the infeasible one is scored
    assert [s["ctc_feasible"] for s in samples] == [True, False, True]


def test_evaluate_refuses_a_reordered_character_vocabulary(speech_run, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.chdir(speech_run)
    reordered = _reordered(speech_run / "tokenizer.json", speech_run / "reordered.json", "t", "h")
    evaluate = ["evaluate", "--modality", "speech", "--task", "mine", "--checkpoint", "ft/best.pt", "--out", "eval"]
    assert main([*evaluate, "--tokenizer", str(reordered)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reordered.json: not the tokenizer ft/best.pt was trained with" in err
    assert "tokenizer.json" in err  # the file it was trained with, named
    assert not (speech_run / "eval").exists()
    assert main(evaluate) == 0  # the checkpoint's own tokenizer
    assert json.loads(capsys.readouterr().out)["metrics"]["ctc_infeasible"] == 2


def test_a_checkpoint_without_a_tokenizer_digest_still_evaluates(speech_run, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.chdir(speech_run)
    ckpt = torch.load(speech_run / "ft" / "best.pt", weights_only=True)
    del ckpt["config"]["tokenizer_vocab_sha256"]  # as written before the digest was stored
    torch.save(ckpt, speech_run / "old.pt")
    assert main(["evaluate", "--modality", "speech", "--task", "mine", "--checkpoint", "old.pt", "--out", "old"]) == 0
    err = capsys.readouterr().err
    assert "old.pt records no tokenizer digest" in err and "only the vocabulary size" in err


# ----------------------------------------------------------------------------------------------------
# image: an empty validation split


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """An ImageFolder tree whose valid/ holds only HTML pages saved as .jpg: `shard` writes valid: 0."""
    from PIL import Image

    from pipeline.config import Shard
    from pipeline.data.shard import shard

    root = tmp_path_factory.mktemp("image_user")
    _params(root)
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for label in ("cat", "dog"):
            folder = root / "source" / split / label
            folder.mkdir(parents=True)
            for k in range(count):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    for label in ("cat", "dog"):
        (root / "source" / "valid" / label).mkdir(parents=True)
        (root / "source" / "valid" / label / "page.jpg").write_text("<html><body>Not found</body></html>")
    index = shard("image", root / "source", root / "shards", Shard(max_samples_per_shard=40), progress=False)
    assert index["splits"]["valid"]["num_samples"] == 0 and len(index["skipped"]) == 2
    return root


def test_an_empty_validation_split_is_carved_from_train_and_said(image_folder):
    result = run([sys.executable, "-m", "pipeline", "finetune", "--modality", "image", "--task", "pets", "--checkpoint",
                  "none", "--shards", "shards", "--out", "ft", "--max-updates", "2", "--workers", "0", "--no-progress"],
                 cwd=image_folder)
    assert "split 'valid' has no samples" in result.stderr and "a validation set is carved from 'train'" in result.stderr
    config = json.loads((image_folder / "ft" / "config.json").read_text())
    assert config["task"]["valid"] == "train (carved: 8)" and config["labeled_samples"] == 16
    metrics = json.loads((image_folder / "ft" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["metrics"]["num_samples"] == 8
    records = [json.loads(line) for line in (image_folder / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert "valid_top1" in records[-1]


def test_an_empty_split_is_absent_and_an_empty_train_split_an_error(image_folder, tmp_path):
    from pipeline.finetune.tasks import resolve

    task = resolve("image", "pets", image_folder / "shards")
    assert (task.train, task.valid, task.test) == ("train", None, "test") and "'valid' has no samples" in task.notes[0]
    shards = tmp_path / "shards"
    shutil.copytree(image_folder / "shards", shards)
    index = json.loads((shards / "index.json").read_text())
    index["splits"]["test"] = {"num_samples": 0, "shards": []}
    (shards / "index.json").write_text(json.dumps(index))
    task = resolve("image", "pets", shards)
    assert task.test is None and task.eval_role == "valid" and len(task.notes) == 2
    index["splits"]["train"] = {"num_samples": 0, "shards": []}
    (shards / "index.json").write_text(json.dumps(index))
    with pytest.raises(UserInputError, match=r"index.json: split 'train' has no samples"):
        resolve("image", "pets", shards)


# ----------------------------------------------------------------------------------------------------
# text: a pretrained checkpoint and another tokenizer of the same size


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """The embedded text data (tiny), its tokenizer, and a 1-update data2vec 2.0 pretraining with it."""
    from pipeline.config import Shard
    from pipeline.data.prepare import prepare
    from pipeline.data.shard import shard
    from pipeline.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("text_user")
    params = _params(root)
    prepare("text", params, root / "data" / "raw" / "text", progress=False)
    shard("text", root / "data" / "raw" / "text", root / "data" / "shards" / "text", Shard(**params["text"]["shard"]),
          progress=False)
    train_tokenizer("text", params, root / "data" / "shards" / "text", root / "data" / "tokenizers" / "text" / "tokenizer.json")
    run([sys.executable, "-m", "pipeline", "pretrain", "--modality", "text", "--max-updates", "1", "--workers", "0",
         "--no-progress"], cwd=root)
    return root


def test_finetuning_with_another_vocabulary_of_the_same_size_is_refused(text_run):
    tokenizer = text_run / "data" / "tokenizers" / "text" / "tokenizer.json"
    vocab = json.loads(tokenizer.read_text())["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[-2:]  # two learned tokens; specials keep their ids
    other = _reordered(tokenizer, text_run / "other.json", a, b)
    checkpoint = "models/text/data2vec2/pretrain/last.pt"
    result = _cli(text_run, "finetune", "--modality", "text", "--task", "lexname", "--checkpoint", checkpoint,
                  "--tokenizer", str(other), "--workers", "0", "--no-progress")
    assert result.returncode == 2, result.stderr[-3000:]
    line = _last_line(result.stderr)
    assert line.startswith(f"error: {other}: not the tokenizer {checkpoint} was trained with (data/tokenizers/text/tokenizer.json)")
    assert "Traceback" not in result.stderr
    config = torch.load(text_run / checkpoint, weights_only=True)["config"]
    assert config["tokenizer"] == "data/tokenizers/text/tokenizer.json" and len(config["tokenizer_vocab_sha256"]) == 64


def test_a_pretraining_checkpoint_without_a_digest_falls_back_to_the_size_check(text_run, monkeypatch, capsys):
    from pipeline.finetune import config as finetune_config
    from pipeline.finetune.model import encoder_config, load_pretrained

    monkeypatch.chdir(text_run)
    ckpt = torch.load("models/text/data2vec2/pretrain/last.pt", weights_only=True)
    del ckpt["config"]["tokenizer_vocab_sha256"]
    torch.save(ckpt, "old.pt")
    cfg = finetune_config.build("text", "lexname", "finetune", json.loads(json.dumps(TINY_PARAMS)))
    tokenizer = text_run / "data" / "tokenizers" / "text" / "tokenizer.json"
    assert encoder_config("text", cfg, load_pretrained(text_run / "old.pt"), tokenizer).text.vocab_size == 400
    assert "old.pt records no tokenizer digest" in capsys.readouterr().err
    smaller = json.loads(tokenizer.read_text())
    smaller["model"]["vocab"].pop(max(smaller["model"]["vocab"], key=smaller["model"]["vocab"].get))
    smaller["model"]["merges"] = smaller["model"]["merges"][:-1]
    (text_run / "smaller.json").write_text(json.dumps(smaller))
    with pytest.raises(UserInputError, match="399 tokens and <pad> id 1, not the encoder's 400 and 1"):
        encoder_config("text", cfg, load_pretrained(text_run / "old.pt"), text_run / "smaller.json")
