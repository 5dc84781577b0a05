"""The one CLI: --help on every stage, JSON summaries, and user errors as one message with exit status 2 (also when
raised inside a DataLoader worker)."""
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
    assert json.loads(capsys.readouterr().out) == {"splits": {"train": 3}, "shards": 2, "skipped": 0, "ignored": 0,
                                                   "conversions": 0}


def test_shard_summary_counts_ignored_entries_and_conversions(tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    source = tmp_path / "speech"
    source.mkdir()
    sf.write(source / "a.wav", np.zeros(4000, dtype=np.float32), 8000)  # resampled to 16 kHz: a conversion
    (source / "train.tsv").write_text("a.wav\thello\n")
    (source / ".DS_Store").write_bytes(b"\0")
    (source / "__MACOSX").mkdir()
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    assert main(["shard", "--modality", "speech", "--source", str(source), "--out", str(tmp_path / "o"),
                 "--params", str(tmp_path / "params.yaml"), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    index = json.loads((tmp_path / "o" / "index.json").read_text())
    assert (summary["ignored"], summary["conversions"]) == (len(index["ignored"]), len(index["conversions"])) == (2, 1)


def test_unknown_modality_is_refused_by_argparse():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prepare", "--modality", "video"])


class _Refuses:
    """A dataset whose items are bad input."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        from pipeline.errors import UserInputError

        raise UserInputError(f"shard-000000.tar sample {i:06d}: cannot decode; re-run `shard`")


def test_an_error_in_a_dataloader_worker_prints_as_its_own_line(monkeypatch, capsys):
    import torch.utils.data

    from pipeline import cli

    def run(args, argv):
        next(iter(torch.utils.data.DataLoader(_Refuses(), num_workers=1)))

    monkeypatch.setattr(cli, "run", run)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert cli.main(["summary", "--modality", "image"]) == 2
    err = capsys.readouterr().err
    assert err == "error: shard-000000.tar sample 000000: cannot decode; re-run `shard`\n"


@pytest.mark.parametrize("stage, extra", [("pretrain", []), ("finetune", ["--task", "t", "--checkpoint", "none"]),
                                          ("probe", ["--method", "mae"]), ("throughput", []),
                                          ("evaluate", ["--task", "t", "--checkpoint", "c.pt"])])
def test_every_stage_reading_shards_takes_a_url_as_given(stage, extra):
    """A URL stays a string (a Path would collapse `//`), for main() to fetch into the shard cache; an unsupported
    scheme is refused by argparse."""
    args = build_parser().parse_args([stage, "--modality", "image", *extra, "--shards", "http://127.0.0.1:9/s"])
    assert args.shards == "http://127.0.0.1:9/s"
    with pytest.raises(SystemExit):
        build_parser().parse_args([stage, "--modality", "image", *extra, "--shards", "ftp://host/s"])
