"""The one CLI: --help on every stage, JSON summaries, and user errors as one message with exit status 2."""
import json
import subprocess
import sys

import pytest

from pipeline.cli import build_parser, main

STAGES = ("prepare", "shard", "tokenizer", "summary", "finetune", "evaluate")


def test_every_stage_has_help():
    for stage in STAGES:
        out = subprocess.run([sys.executable, "-m", "pipeline", stage, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "--modality" in out.stdout, stage
    top = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True).stdout
    assert all(stage in top for stage in STAGES)


def test_missing_source_is_one_clear_message(tmp_path, capsys):
    code = main(["shard", "--modality", "image", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_unprepared_default_says_which_command_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    assert main(["shard", "--modality", "text"]) == 2
    assert "run `python -m pipeline prepare --modality text`" in capsys.readouterr().err


def test_shard_prints_a_json_summary(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("a\n\nb\n\nc\n")
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    code = main(["shard", "--modality", "text", "--source", str(tmp_path / "c.txt"), "--out", str(tmp_path / "o"),
                 "--params", str(tmp_path / "params.yaml"), "--max-samples-per-shard", "2", "--no-progress"])
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"splits": {"train": 3}, "shards": 2, "skipped": 0}


def test_unknown_modality_is_refused_by_argparse():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prepare", "--modality", "video"])
