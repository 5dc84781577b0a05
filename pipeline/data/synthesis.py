"""The embedded default speech data: WordNet example sentences spoken by offline synthesizers.

Train utterances come from espeak-ng (8 English accents x ~60 human-like voice variants, random speed and
pitch); validation and test come from flite voices never used in training (valid: awb + kal16, test: rms +
slt), on sentences disjoint from each other and from train. The transcript is exactly the input text.
Everything is a deterministic function of the seed (synthesizer output for a fixed voice/text is fixed).
"""
from __future__ import annotations

import dataclasses
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.data import wordnet
from pipeline.errors import UserInputError

ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
# Human-sounding variants only: espeak-ng's voices/!v variants minus robots, whispers and croaks.
ESPEAK_VARIANTS = (
    "male1 male2 male3 male4 male5 male6 male7 male8 female1 female2 female3 female4 female5 klatt klatt2 klatt3 "
    "klatt4 Adam Alex Alicia Andrea Andy Annie Antonio Auntie Belinda Benjamin Boris Caleb David Denis Diogo Ed "
    "Edward Gene Gustave Henrique Hugo Iven Jacky John Lee Linda Marcelo Marco Mario Max Michael Michel Miguel "
    "Mike Nguyen Pablo Paul Pedro Quincy Rob Robert Steph Storm Zac anika grandma grandpa norbert sandro shelby "
    "travis victor"
).split()
FLITE_VOICES = {"valid": ("awb", "kal16"), "test": ("rms", "slt")}
_CLEAN = re.compile(r"[^a-z' ]+")


@dataclasses.dataclass(frozen=True)
class Utterance:
    split: str
    uid: str
    text: str
    engine: str
    voice: str
    speed: float  # espeak-ng words per minute, or flite duration stretch
    pitch: int  # espeak-ng 0-99; 0 for flite


def normalize_transcript(text: str) -> str:
    """Lower-case, keep [a-z' ] (a 28-symbol CTC alphabet with the space), collapse spaces."""
    return " ".join(_CLEAN.sub(" ", text.lower().replace("`", "'")).split())


def sentences(min_words: int = 3, max_words: int = 16) -> list[str]:
    """WordNet example sentences, normalized and de-duplicated, in a fixed order."""
    seen: dict[str, None] = {}
    for synset in wordnet.synsets():
        for example in synset.examples:
            text = normalize_transcript(example)
            if min_words <= len(text.split()) <= max_words:
                seen.setdefault(text, None)
    return list(seen)


def plan(train: int, valid: int, test: int, seed: int) -> list[Utterance]:
    """Choose sentences and voices for every utterance; sentence sets of the splits are disjoint."""
    pool = sentences()
    if train + valid + test > len(pool):
        raise UserInputError(f"asked for {train + valid + test} utterances but only {len(pool)} distinct sentences exist")
    rng = random.Random(seed)
    rng.shuffle(pool)
    utterances = []
    for i, text in enumerate(pool[:train]):
        accent, variant = rng.choice(ESPEAK_ACCENTS), rng.choice(ESPEAK_VARIANTS)
        voice = f"{accent}+{variant}"
        utterances.append(Utterance("train", f"train{i:06d}", text, "espeak-ng", voice, rng.randint(130, 210), rng.randint(25, 75)))
    offset = train
    for split, count in (("valid", valid), ("test", test)):
        for i, text in enumerate(pool[offset : offset + count]):
            voice = FLITE_VOICES[split][i % len(FLITE_VOICES[split])]
            stretch = round(rng.uniform(0.85, 1.2), 3)
            utterances.append(Utterance(split, f"{split}{i:06d}", text, "flite", voice, stretch, 0))
        offset += count
    return utterances


def _command(u: Utterance, wav: Path) -> list[str]:
    if u.engine == "espeak-ng":
        return ["espeak-ng", "-v", u.voice, "-s", str(int(u.speed)), "-p", str(u.pitch), "-w", str(wav), u.text]
    return ["flite", "-voice", u.voice, "--setf", f"duration_stretch={u.speed}", "-t", u.text, "-o", str(wav)]


def check_synthesizers() -> None:
    missing = [tool for tool in ("espeak-ng", "flite") if shutil.which(tool) is None]
    if missing:
        raise UserInputError(f"speech synthesizers not found: {missing}; install Debian's espeak-ng and flite (`make setup` does)")


def synthesize(utterances: list[Utterance], out_dir: Path, workers: int = 2, on_done: Callable[[], None] | None = None) -> dict[str, float]:
    """Write `out_dir/audio/<split>/<uid>.flac` (16 kHz mono) for every utterance; returns {uid: seconds}."""
    from pipeline.data.speech_source import encode_audio

    check_synthesizers()
    durations: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:

        def one(u: Utterance) -> None:
            wav = Path(tmp) / f"{u.uid}.wav"
            result = subprocess.run(_command(u, wav), capture_output=True, text=True)
            if result.returncode != 0 or not wav.exists():
                raise RuntimeError(f"{u.engine} failed for {u.uid} ({u.voice}): {result.stderr.strip()}")
            flac, seconds, _ = encode_audio(wav)
            target = out_dir / "audio" / u.split / f"{u.uid}.flac"
            target.write_bytes(flac)
            wav.unlink()
            durations[u.uid] = seconds
            if on_done:
                on_done()

        for split in {u.split for u in utterances}:
            (out_dir / "audio" / split).mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, utterances))
    return durations
