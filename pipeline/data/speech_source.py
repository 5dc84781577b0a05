"""Speech sources: a LibriSpeech-layout tree or TSV manifests; any sample rate and channel count in,
16 kHz mono 16-bit FLAC out (mixed down by averaging channels, resampled with torchaudio).

Layouts (checked in this order):
  * `root/{train,valid|val|dev,test}/` split folders, each one of the layouts below;
  * `root/{train,valid|val|dev,test}.tsv` manifests (`path<TAB>transcript`, paths relative to the manifest,
    no header; other .tsv files are not manifests);
  * `root` itself a `.tsv` manifest (split `train`);
  * a LibriSpeech tree: `speaker/chapter/<id>.flac` + `speaker/chapter/<speaker>-<chapter>.trans.txt`
    whose lines are `<id> TRANSCRIPT` (split `train`).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.errors import BadSample, UserInputError
from pipeline.data.source import SPLIT_DIRS, Item, Listing, Skip, relative, split_subdirs

TARGET_RATE = 16000
AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".mp3", ".opus")
POLICY = "any rate/channels in; channels averaged to mono, resampled to 16 kHz with torchaudio, stored as 16-bit FLAC"


def encode_audio(path: Path) -> tuple[bytes, float, int]:
    """Read `path`, convert to 16 kHz mono, return (FLAC bytes, duration in seconds, original sample rate)."""
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)  # [frames, channels]
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise BadSample(f"unreadable audio: {e}") from None
    if audio.shape[0] == 0:
        raise BadSample("zero-length audio (no frames)")
    if not np.isfinite(audio).all():
        raise BadSample("audio contains NaN or Inf samples")
    mono = audio.mean(axis=1)
    if rate != TARGET_RATE:
        import torch
        import torchaudio.functional as AF

        mono = AF.resample(torch.from_numpy(mono), rate, TARGET_RATE).numpy()
    if mono.shape[0] == 0:
        raise BadSample(f"audio too short to resample from {rate} Hz")
    buf = io.BytesIO()
    sf.write(buf, np.clip(mono, -1.0, 1.0), TARGET_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue(), mono.shape[0] / TARGET_RATE, int(rate)


def _speech_item(audio_path: Path, transcript: str, root: Path, speaker: str | None) -> Item:
    rel = relative(audio_path, root)

    def load() -> dict[str, bytes]:
        if not audio_path.is_file():
            raise BadSample(f"transcript line with no audio file ({audio_path.name} not found)")
        flac, duration, rate = encode_audio(audio_path)
        meta = {"source": rel, "duration": round(duration, 4), "source_rate": rate, "speaker": speaker}
        return {"flac": flac, "txt": transcript.encode("utf-8"), "json": json.dumps(meta).encode()}

    return Item(rel, load, {"transcript": transcript, "speaker": speaker})


def list_source(root: Path) -> Listing:
    if not root.exists():
        raise UserInputError(
            f"{root}: speech source does not exist; pass a LibriSpeech-layout folder or a TSV manifest (path<TAB>transcript)"
        )
    listing = Listing(splits={}, info={"policy": POLICY})
    if root.is_file():
        listing.info["layout"] = "tsv"
        listing.splits["train"] = _read_manifest(root, root.parent, listing)
        return listing
    splits = split_subdirs(root)
    manifests = {SPLIT_DIRS[p.stem.lower()]: p for p in sorted(root.glob("*.tsv")) if p.stem.lower() in SPLIT_DIRS}
    if splits:
        for split, split_root in splits.items():
            listing.splits[split] = _read_tree(split_root, root, listing)
        listing.info["layout"] = "split folders"
    elif manifests:
        for split, manifest in manifests.items():
            listing.splits[split] = _read_manifest(manifest, root, listing)
        listing.info["layout"] = "tsv"
    else:
        listing.splits["train"] = _read_librispeech(root, root, listing)
        listing.info["layout"] = "librispeech"
    if not any(listing.splits.values()):
        raise UserInputError(f"{root}: no utterances found (no *.trans.txt with audio, no *.tsv manifest)")
    return listing


def _read_tree(split_root: Path, root: Path, listing: Listing) -> list[Item]:
    manifests = sorted(split_root.glob("*.tsv"))
    if manifests:
        return [item for m in manifests for item in _read_manifest(m, root, listing)]
    return _read_librispeech(split_root, root, listing)


def _read_text(path: Path, root: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserInputError(f"{relative(path, root)}: not valid UTF-8 (byte {e.start}); re-save it as UTF-8") from None


def _read_manifest(manifest: Path, root: Path, listing: Listing) -> list[Item]:
    items = []
    for lineno, line in enumerate(_read_text(manifest, root).splitlines(), start=1):
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
        items.append(_speech_item(audio, transcript, root, None))
    return items


def _read_librispeech(tree: Path, root: Path, listing: Listing) -> list[Item]:
    items = []
    transcribed: set[Path] = set()
    for trans in sorted(tree.rglob("*.trans.txt")):
        for lineno, line in enumerate(_read_text(trans, root).splitlines(), start=1):
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
            items.append(_speech_item(audio, transcript.strip(), root, utt_id.split("-")[0]))
    for audio in sorted(p for p in tree.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS):
        if audio not in transcribed:
            listing.skipped.append(Skip(relative(audio, root), "audio with no transcript line in a *.trans.txt"))
    return items


def _find_audio(folder: Path, utt_id: str) -> Path | None:
    for ext in AUDIO_EXTENSIONS:
        candidate = folder / f"{utt_id}{ext}"
        if candidate.is_file():
            return candidate
    return None
