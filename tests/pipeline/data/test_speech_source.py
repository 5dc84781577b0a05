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


def test_too_short_utterances_are_skipped_at_shard_time(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rows = []
    for i in range(8):
        sf.write(src / f"long{i}.wav", tone(1.0, 16000), 16000)
        rows.append(f"long{i}.wav\tlong utterance {i}")
    sf.write(src / "click.wav", tone(0.005, 16000), 16000)  # 5 ms: shorter than one 25 ms receptive field
    sf.write(src / "blip.wav", tone(0.03, 16000), 16000)  # 30 ms: one frame
    (src / "train.tsv").write_text("\n".join(rows + ["click.wav\tclick", "blip.wav\tblip"]) + "\n")
    index = shard("speech", src, tmp_path / "out", Shard(), progress=False)
    assert index["splits"]["train"]["num_samples"] == 8 and index["min_seconds"] == 0.1
    reasons = {s["path"]: s["reason"] for s in index["skipped"]}
    assert reasons["click.wav"].startswith("too short: 0.0050 s, below speech.shard.min_seconds = 0.1 s")
    assert reasons["blip.wav"].startswith("too short: 0.0300 s")
    kept = shard("speech", src, tmp_path / "out2", Shard(min_seconds=0.001), progress=False)
    assert kept["splits"]["train"]["num_samples"] == 10 and kept["skipped"] == []


def _tiny_speech_pretraining(shards, batch_size=4):
    from model.presets import get_config
    from pipeline.pretrain import config as train_config
    from pipeline.pretrain.data import PretrainBatches

    cfg = train_config.build("speech", "data2vec2", {"pretrain": {"speech": {"preset": "tiny", "batch_size": batch_size}}})
    model_cfg = get_config("speech", "tiny", "data2vec2")
    return PretrainBatches(cfg, model_cfg, shards), model_cfg


def test_pretraining_crop_survives_a_clip_shorter_than_the_model_needs(tmp_path):
    """Shards written with a lower minimum (or before there was one) still hold a 5 ms clip: the batch it lands in
    is cropped to at least 0.1 s, the short clip repeated, and the model trains on it."""
    import torch

    from model import build_model
    from pipeline.data.speech_source import MIN_SAMPLES

    src = tmp_path / "src"
    src.mkdir()
    for i, seconds in enumerate((1.0, 1.0, 1.0, 0.005)):
        sf.write(src / f"{i}.wav", tone(seconds, 16000, freq=300 + 100 * i), 16000)
    (src / "train.tsv").write_text("".join(f"{i}.wav\tu {i}\n" for i in range(4)))
    shard("speech", src, tmp_path / "shards", Shard(min_seconds=0.0), progress=False)
    batches, model_cfg = _tiny_speech_pretraining(tmp_path / "shards")
    batch = batches[(0, [0, 1, 2, 3])]
    assert batch["audio"].shape == (4, MIN_SAMPLES) and torch.isfinite(batch["audio"]).all()
    torch.manual_seed(0)
    loss, _ = build_model(model_cfg)(batch)
    assert torch.isfinite(loss)


def test_librispeech_split_folders_beside_each_other(tmp_path):
    src = tmp_path / "LibriSpeech"
    for split, speaker in (("train-clean-100", "19"), ("dev-clean", "84"), ("dev-other", "116"), ("test-clean", "61")):
        chapter = src / split / speaker / "1"
        chapter.mkdir(parents=True)
        sf.write(chapter / f"{speaker}-1-0000.flac", tone(0.5, 16000), 16000)
        (chapter / f"{speaker}-1.trans.txt").write_text(f"{speaker}-1-0000 A WORD FROM {speaker}\n")
    (src / "README.TXT").write_text("LibriSpeech ASR corpus")
    (src / "SPEAKERS.TXT").write_text(";ID |SEX\n")
    (src / "train-clean-100" / "19" / "1" / "._19-1-0000.flac").write_bytes(b"\0\5\26\7")  # macOS AppleDouble
    index = shard("speech", src, tmp_path / "out", Shard(), progress=False)
    assert {k: v["num_samples"] for k, v in index["splits"].items()} == {"train": 1, "valid": 2, "test": 1}
    assert index["split_sources"] == {"test": ["test-clean"], "train": ["train-clean-100"], "valid": ["dev-clean", "dev-other"]}
    assert index["skipped"] == []
    assert {s["path"] for s in index["ignored"]} == {"README.TXT", "SPEAKERS.TXT", "train-clean-100/19/1/._19-1-0000.flac"}


def test_manifest_split_spellings_and_byte_order_marks(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b", "c"):
        sf.write(src / f"{name}.wav", tone(0.5, 16000), 16000)
    bom = "\ufeff".encode()
    (src / "training.tsv").write_bytes(bom + b"a.wav\tfirst line\nb.wav\tsecond line\n")
    (src / "validation.tsv").write_bytes(bom + b"c.wav\tthird\r\n")
    (src / "notes.tsv").write_text("not\ta manifest\n")
    index = shard("speech", src, tmp_path / "out", Shard(), progress=False)
    assert {k: v["num_samples"] for k, v in index["splits"].items()} == {"train": 2, "valid": 1}
    assert index["skipped"] == [] and [s["path"] for s in index["ignored"]] == ["notes.tsv"]
    chapter = tmp_path / "libri" / "1" / "2"
    chapter.mkdir(parents=True)
    sf.write(chapter / "1-2-0000.flac", tone(0.5, 16000), 16000)
    sf.write(chapter / "1-2-0001.flac", tone(0.5, 16000), 16000)
    (chapter / "1-2.trans.txt").write_bytes(bom + b"1-2-0000 FIRST LINE\n1-2-0001 SECOND LINE\n")
    index = shard("speech", tmp_path / "libri", tmp_path / "out2", Shard(), progress=False)
    assert index["splits"]["train"]["num_samples"] == 2 and index["skipped"] == []
    with tarfile.open(tmp_path / "out2" / "train-000000.tar") as tar:
        assert tar.extractfile("train_0000000.txt").read() == b"FIRST LINE"


def test_lossy_audio_conversions_are_recorded_and_nothing_is_clipped(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "stereo44k.wav", tone(0.5, 44100, channels=2), 44100)
    loud = np.concatenate([tone(0.5, 16000), [1.6, -1.2]]).astype(np.float32)  # a float WAV beyond full scale
    sf.write(src / "loud.wav", loud, 16000, subtype="FLOAT")
    sf.write(src / "deep.flac", tone(0.5, 16000), 16000, subtype="PCM_24")
    sf.write(src / "plain.flac", tone(0.5, 16000), 16000)  # already 16 kHz mono 16-bit: nothing to do
    names = ("stereo44k.wav", "loud.wav", "deep.flac", "plain.flac")
    (src / "train.tsv").write_text("".join(f"{n}\t{n}\n" for n in names))
    out = tmp_path / "out"
    index = shard("speech", src, out, Shard(), progress=False)
    assert index["num_samples"] == 4
    done = {c["path"]: c["changes"] for c in index["conversions"]}
    assert done == {
        "stereo44k.wav": ["2 channels averaged to mono", "resampled from 44100 Hz to 16000 Hz"],
        "loud.wav": ["FLOAT samples quantized to 16-bit PCM",
                     "scaled by 1/1.6 (peak 1.6 is beyond 16-bit full scale; scaled, not clipped)"],
        "deep.flac": ["PCM_24 samples quantized to 16-bit PCM"],
    }
    with tarfile.open(out / "train-000000.tar") as tar:
        audio, _ = sf.read(io.BytesIO(tar.extractfile("train_0000001.flac").read()))
    assert np.allclose(audio, loud / 1.6, atol=1e-4)  # the shape survives: -1.2 is not clipped to -1


def test_an_exception_while_decoding_one_file_is_a_counted_skip(tmp_path, monkeypatch):
    import torchaudio.functional as AF

    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "ok.wav", tone(0.5, 16000), 16000)
    sf.write(src / "odd.wav", tone(0.5, 11025), 11025)
    (src / "train.tsv").write_text("ok.wav\tfine\nodd.wav\tresampler fails\n")

    def failing_resample(*args, **kwargs):
        raise RuntimeError("cuFFT error: CUFFT_INTERNAL_ERROR")

    monkeypatch.setattr(AF, "resample", failing_resample)
    index = shard("speech", src, tmp_path / "out", Shard(), progress=False)
    assert index["num_samples"] == 1
    assert index["skipped"] == [{"path": "odd.wav", "reason": "cannot decode: RuntimeError: cuFFT error: CUFFT_INTERNAL_ERROR"}]
