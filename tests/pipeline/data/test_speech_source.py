"""Speech sources: LibriSpeech trees and TSV manifests, any rate/channels -> 16 kHz mono FLAC; bad inputs reported."""
import io
import tarfile

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from pipeline.errors import UserInputError
from pipeline.config import Shard
from pipeline.data.shard import shard
from pipeline.data.speech_source import list_source


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def librispeech_tree(root):
    chapter = root / "19" / "198"
    chapter.mkdir(parents=True)
    sf.write(chapter / "19-198-0000.flac", tone(1.0, 44100, channels=2), 44100)
    sf.write(chapter / "19-198-0001.flac", tone(0.5, 8000), 8000)
    sf.write(chapter / "19-198-0002.flac", tone(0.5, 16000), 16000)  # no transcript line
    sf.write(chapter / "19-198-0003.wav", np.zeros((0,)), 16000)  # zero-length
    (chapter / "19-198-0004.flac").write_bytes(b"not audio at all")  # unreadable
    (chapter / "19-198.trans.txt").write_text(
        "19-198-0000 HELLO WORLD\n19-198-0001 SECOND ONE\n19-198-0003 EMPTY AUDIO\n"
        "19-198-0004 BROKEN AUDIO\n19-198-0009 NO SUCH FILE\n"
    )


def test_librispeech_tree_converts_and_reports(tmp_path):
    librispeech_tree(tmp_path / "src")
    out = tmp_path / "out"
    index = shard("speech", tmp_path / "src", out, Shard(max_samples_per_shard=10), progress=False)
    assert index["splits"]["train"]["num_samples"] == 2
    reasons = {s["path"]: s["reason"] for s in index["skipped"]}
    assert "no audio" in reasons["19/198/19-198.trans.txt:5"]
    assert "no transcript" in reasons["19/198/19-198-0002.flac"]
    assert "zero-length" in reasons["19/198/19-198-0003.wav"]
    assert "unreadable audio" in reasons["19/198/19-198-0004.flac"]
    assert len(reasons) == 4
    name = index["splits"]["train"]["shards"][0]["name"]
    with tarfile.open(out / name) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    audio, rate = sf.read(io.BytesIO(members["train_0000000.flac"]))
    assert rate == 16000 and audio.ndim == 1 and abs(len(audio) - 16000) <= 1  # 1 s of 44.1 kHz stereo
    assert members["train_0000000.txt"] == b"HELLO WORLD"
    audio, rate = sf.read(io.BytesIO(members["train_0000001.flac"]))
    assert rate == 16000 and abs(len(audio) - 8000) <= 1  # 0.5 s upsampled from 8 kHz
    # and webdataset reads the same shard
    rows = list(wds.WebDataset(str(out / name), shardshuffle=False).to_tuple("flac", "txt"))
    assert [t.decode() for _, t in rows] == ["HELLO WORLD", "SECOND ONE"]


def test_resampled_tone_keeps_its_frequency(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "a.wav", tone(1.0, 22050, freq=1000.0), 22050)
    (src / "train.tsv").write_text("a.wav\thello\n")
    out = tmp_path / "out"
    shard("speech", src, out, Shard(), progress=False)
    with tarfile.open(out / "train-000000.tar") as tar:
        data = tar.extractfile("train_0000000.flac").read()
    audio, rate = sf.read(io.BytesIO(data))
    peak_hz = np.argmax(np.abs(np.fft.rfft(audio))) * rate / len(audio)
    assert abs(peak_hz - 1000.0) < 5


def test_manifest_splits_and_bad_rows(tmp_path):
    src = tmp_path / "src"
    (src / "wav").mkdir(parents=True)
    for i in range(3):
        sf.write(src / "wav" / f"{i}.wav", tone(0.2, 16000), 16000)
    (src / "train.tsv").write_text("wav/0.wav\tzero\nwav/1.wav\tone\nwav/missing.wav\tghost\nno tab here\nwav/2.wav\t\n")
    (src / "dev.tsv").write_text("wav/2.wav\ttwo\n")
    index = shard("speech", src, tmp_path / "out", Shard(), progress=False)
    assert {k: v["num_samples"] for k, v in index["splits"].items()} == {"train": 2, "valid": 1}
    reasons = {s["path"]: s["reason"] for s in index["skipped"]}
    assert "no audio" in reasons[str((src / "wav" / "missing.wav").relative_to(src))]
    assert "path<TAB>transcript" in reasons["train.tsv:4"]
    assert reasons["train.tsv:5"] == "empty transcript"


def test_missing_source_is_rejected(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        list_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="no utterances"):
        list_source(tmp_path / "empty")


def test_non_utf8_transcripts_are_rejected_with_the_file_named(tmp_path):
    chapter = tmp_path / "src" / "1" / "2"
    chapter.mkdir(parents=True)
    sf.write(chapter / "1-2-0.flac", tone(0.2, 16000), 16000)
    (chapter / "1-2.trans.txt").write_bytes("1-2-0 CAF\xc9\n".encode("latin-1"))
    with pytest.raises(UserInputError, match=r"1-2.trans.txt: not valid UTF-8"):
        list_source(tmp_path / "src")
