"""Speech sources: a LibriSpeech-layout tree or TSV manifests; any sample rate and channel count in,
16 kHz mono 16-bit FLAC out (mixed down by averaging channels, resampled with torchaudio).

Layouts (checked in this order):
  * split folders `root/<split>/` (train/training, valid/val/validation/dev, test/testing, any case, and subsets
    such as dev-clean, test-other, train-clean-100; source.py `split_name`), each one of the layouts below;
  * `root/<split>.tsv` manifests (`path<TAB>transcript`, paths relative to the manifest, no header; other
    .tsv files are not manifests and are listed as ignored);
  * `root` itself a `.tsv` manifest (split `train`);
  * a LibriSpeech tree: `speaker/chapter/<id>.flac` + `speaker/chapter/<speaker>-<chapter>.trans.txt`
    whose lines are `<id> TRANSCRIPT` (split `train`).
Manifests and transcript files are UTF-8 (a leading byte-order mark is removed).

Conversions (each one done to a file is listed in index.json `conversions`): channels averaged to mono,
resampling to 16 kHz, quantization to 16-bit PCM of deeper or compressed sources, and, when a sample would
exceed full scale, scaling the whole utterance down by its peak (never clipping).
An utterance shorter than `speech.shard.min_seconds` (params.yaml) is skipped with its duration: the wav2vec 2.0
feature extractor needs 400 samples (25 ms) for one frame and the data2vec 2.0 targets and masks need several.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.config import Shard
from pipeline.errors import BadSample, UserInputError
from pipeline.data.source import (Item, Listing, Skip, group_splits, ignore_unused, read_text, relative, visible_children,
                                  walk_files)

TARGET_RATE = 16000
# Pretraining never crops a batch below this many samples (pipeline/pretrain/data.py): the default minimum.
MIN_SAMPLES = round(Shard.min_seconds * TARGET_RATE)
AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".mp3", ".opus")
# Source encodings whose every value a 16-bit PCM sample holds exactly (u-law and A-law expand to 14 bits).
EXACT_IN_16_BIT = {"PCM_16", "PCM_S8", "PCM_U8", "ULAW", "ALAW"}
POLICY = ("any rate/channels in; channels averaged to mono, resampled to 16 kHz with torchaudio, stored as 16-bit "
          "FLAC; scaled down by the peak instead of clipped; conversions listed per file")


def encode_audio(path: Path, conversions: list[str] | None = None) -> tuple[bytes, float, int]:
    """Read `path`, convert to 16 kHz mono, return (FLAC bytes, duration in seconds, original sample rate).
    Each lossy step taken is appended to `conversions`; raises BadSample for audio that cannot be used."""
    notes = conversions if conversions is not None else []
    try:
        with sf.SoundFile(str(path)) as f:
            subtype, rate, channels = f.subtype, f.samplerate, f.channels
            audio = f.read(dtype="float32", always_2d=True)  # [frames, channels]
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise BadSample(f"unreadable audio: {e}") from None
    if audio.shape[0] == 0:
        raise BadSample("zero-length audio (no frames)")
    if not np.isfinite(audio).all():
        raise BadSample("audio contains NaN or Inf samples")
    mono = audio.mean(axis=1)
    if channels > 1:
        notes.append(f"{channels} channels averaged to mono")
    if rate != TARGET_RATE:
        import torch
        import torchaudio.functional as AF

        mono = AF.resample(torch.from_numpy(mono), rate, TARGET_RATE).numpy()
        notes.append(f"resampled from {rate} Hz to {TARGET_RATE} Hz")
    if mono.shape[0] == 0:
        raise BadSample(f"audio too short to resample from {rate} Hz")
    if subtype not in EXACT_IN_16_BIT:
        notes.append(f"{subtype} samples quantized to 16-bit PCM")
    peak = float(np.abs(mono).max())
    if peak > 1.0:  # float sources and resampling overshoot can exceed full scale: scale, never clip
        mono = mono / peak
        notes.append(f"scaled by 1/{peak:.4g} (peak {peak:.4g} is beyond 16-bit full scale; scaled, not clipped)")
    buf = io.BytesIO()
    sf.write(buf, mono, TARGET_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue(), mono.shape[0] / TARGET_RATE, int(rate)


def _speech_item(audio_path: Path, transcript: str, root: Path, speaker: str | None, min_seconds: float) -> Item:
    rel = relative(audio_path, root)

    def load(conversions: list[str]) -> dict[str, bytes]:
        if not audio_path.is_file():
            raise BadSample(f"transcript line with no audio file ({audio_path.name} not found)")
        flac, duration, rate = encode_audio(audio_path, conversions)
        if duration < min_seconds:
            raise BadSample(f"too short: {duration:.4f} s, below speech.shard.min_seconds = {min_seconds} s "
                            "(the speech model needs several 20 ms frames; params.yaml)")
        meta = {"source": rel, "duration": round(duration, 4), "source_rate": rate, "speaker": speaker}
        return {"flac": flac, "txt": transcript.encode("utf-8"), "json": json.dumps(meta).encode()}

    return Item(rel, load, {"transcript": transcript, "speaker": speaker})


def list_source(root: Path, min_seconds: float | None = None) -> Listing:
    """Utterances per split; `min_seconds` (default: params.yaml's default) is the shortest duration kept."""
    if not root.exists():
        raise UserInputError(
            f"{root}: speech source does not exist; pass a LibriSpeech-layout folder or a TSV manifest (path<TAB>transcript)"
        )
    min_seconds = Shard.min_seconds if min_seconds is None else min_seconds
    listing = Listing(splits={}, info={"policy": POLICY, "min_seconds": min_seconds})
    if root.is_file():
        listing.info["layout"] = "tsv"
        listing.splits["train"] = _read_manifest(root, root.parent, listing, min_seconds)
        return listing
    children = visible_children(root, root, listing)
    folders = group_splits([c for c in children if c.is_dir()], root, listing)
    manifests = {} if folders else group_splits(
        [c for c in children if c.is_file() and c.suffix.lower() == ".tsv"], root, listing, name=lambda p: p.stem)
    if folders:
        for split, paths in folders.items():
            listing.splits[split] = [item for path in paths for item in _read_tree(path, root, listing, min_seconds)]
        listing.info["layout"] = "split folders"
        used, reason = {p for paths in folders.values() for p in paths}, "not a split folder (train, valid, test, ...)"
    elif manifests:
        for split, paths in manifests.items():
            listing.splits[split] = [item for path in paths for item in _read_manifest(path, root, listing, min_seconds)]
        listing.info["layout"] = "tsv"
        audio = [root / item.source for items in listing.splits.values() for item in items]
        used = {p for paths in manifests.values() for p in paths} | _top_level(audio, root)
        reason = "not a split manifest (train.tsv, valid.tsv, test.tsv, ...) and holds no audio a manifest names"
    else:
        listing.splits["train"] = _read_librispeech(root, root, listing, min_seconds)
        listing.info["layout"] = "librispeech"
        used = _top_level([root / item.source for item in listing.splits["train"]], root)
        used |= _top_level([root / s.path.split(":")[0] for s in listing.skipped], root)
        reason = "holds no *.trans.txt and no audio (a LibriSpeech tree is speaker/chapter/*.flac + *.trans.txt)"
    ignore_unused(children, used, root, listing, reason)
    if not any(listing.splits.values()):
        raise UserInputError(f"{root}: no utterances found (no *.trans.txt with audio, no *.tsv manifest)")
    return listing


def _top_level(paths: list[Path], root: Path) -> set[Path]:
    """The entries of `root` that `paths` lie under."""
    tops = set()
    for path in paths:
        try:
            tops.add(root / path.relative_to(root).parts[0])
        except (ValueError, IndexError):
            continue  # outside the root (an absolute path in a manifest)
    return tops


def _read_tree(split_root: Path, root: Path, listing: Listing, min_seconds: float) -> list[Item]:
    manifests = [p for p in visible_children(split_root, root, Listing(splits={})) if p.suffix.lower() == ".tsv"]
    if manifests:
        return [item for m in manifests for item in _read_manifest(m, root, listing, min_seconds)]
    return _read_librispeech(split_root, root, listing, min_seconds)


def _read_manifest(manifest: Path, root: Path, listing: Listing, min_seconds: float) -> list[Item]:
    items = []
    for lineno, line in enumerate(read_text(manifest, root).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{relative(manifest, root)}:{lineno}"
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip():
            listing.skipped.append(Skip(where, "expected `path<TAB>transcript`"))
            continue
        path_text, transcript = parts[0].strip(), parts[1].strip()
        if not transcript:
            listing.skipped.append(Skip(where, "empty transcript"))
            continue
        audio = Path(os.path.normpath(manifest.parent / path_text))  # absolute paths stay absolute
        items.append(_speech_item(audio, transcript, root, None, min_seconds))
    return items


def _read_librispeech(tree: Path, root: Path, listing: Listing, min_seconds: float) -> list[Item]:
    items = []
    transcribed: set[Path] = set()
    files = walk_files(tree, root, listing)
    for trans in (f for f in files if f.name.endswith(".trans.txt")):
        for lineno, line in enumerate(read_text(trans, root).splitlines(), start=1):
            if not line.strip():
                continue
            utt_id, _, transcript = line.strip().partition(" ")
            where = f"{relative(trans, root)}:{lineno}"
            if not transcript.strip():
                listing.skipped.append(Skip(where, "empty transcript"))
                continue
            audio = _find_audio(trans.parent, utt_id)
            if audio is None:
                listing.skipped.append(Skip(where, f"transcript line with no audio ({utt_id}.flac not found)"))
                continue
            transcribed.add(audio)
            items.append(_speech_item(audio, transcript.strip(), root, utt_id.split("-")[0], min_seconds))
    for audio in (f for f in files if f.suffix.lower() in AUDIO_EXTENSIONS):
        if audio not in transcribed:
            listing.skipped.append(Skip(relative(audio, root), "audio with no transcript line in a *.trans.txt"))
    return items


def _find_audio(folder: Path, utt_id: str) -> Path | None:
    for ext in AUDIO_EXTENSIONS:
        candidate = folder / f"{utt_id}{ext}"
        if candidate.is_file():
            return candidate
    return None
