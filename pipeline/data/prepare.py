"""The `prepare` stage: materialize the embedded default data of a modality under data/raw/<modality>/.

The output uses the same layouts a user's own data would (so the `shard` stage has one code path):
  image   IDX files of Fashion-MNIST + classes.json
  speech  <split>.tsv manifests (path<TAB>transcript) + audio/<split>/*.flac + voices.tsv
  text    corpus/{train,valid}/*.txt (documents separated by blank lines) + tasks/<task>/{train,valid,test}.tsv
"""
from __future__ import annotations

import gzip
import json
import random
import shutil
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline import paths

from pipeline.data import fortunes

from pipeline.data import synthesis as speech_synthesis

from pipeline.data import wordnet
from pipeline.errors import UserInputError
from pipeline.data.image_source import read_idx
from pipeline.config import ImagePrepare, SpeechPrepare, TextPrepare
from pipeline.io import atomic_write_bytes

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _fresh_dir(out: Path) -> Path:
    """Prepare into `out.tmp` and swap it in at the end, so an interrupted run leaves the old output intact."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _swap_in(tmp: Path, out: Path) -> None:
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _write_idx_gz(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    # mtime=0 keeps the gzip bytes identical from run to run
    atomic_write_bytes(path, gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0))


def prepare_image(cfg: ImagePrepare, out: Path) -> dict[str, Any]:
    if not FASHION_MNIST_DIR.is_dir():
        raise UserInputError(f"{FASHION_MNIST_DIR}: Fashion-MNIST not found; install Debian's dataset-fashion-mnist (`make setup` does)")
    tmp = _fresh_dir(out)
    counts = {}
    for prefix, limit in (("train", cfg.train_limit), ("t10k", cfg.test_limit)):
        images = read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        if limit is not None:  # the first `limit` images: Fashion-MNIST's order is already class-balanced-random
            images, labels = images[:limit], labels[:limit]
        _write_idx_gz(tmp / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx_gz(tmp / f"{prefix}-labels-idx1-ubyte.gz", labels)
        counts["test" if prefix == "t10k" else "train"] = int(len(images))
    (tmp / "classes.json").write_text(json.dumps(FASHION_MNIST_CLASSES, indent=2) + "\n", encoding="utf-8")
    _swap_in(tmp, out)
    return {"counts": counts, "classes": FASHION_MNIST_CLASSES}


def prepare_speech(cfg: SpeechPrepare, seed: int, out: Path, progress: bool = True,
                   where: str = "params.yaml speech.prepare") -> dict[str, Any]:
    """`where`: the params block `cfg` comes from, as errors name it."""
    if cfg.sample_rate != 16000:
        raise UserInputError(f"{where}.sample_rate: only 16000 is supported (the model's rate)")
    speech_synthesis.check_synthesizers()
    utterances = speech_synthesis.plan(cfg.train_utterances, cfg.valid_utterances, cfg.test_utterances, seed)
    tmp = _fresh_dir(out)
    with tqdm(total=len(utterances), desc="synthesize speech", unit="utt", disable=not progress, file=sys.stderr) as bar:
        durations = speech_synthesis.synthesize(utterances, tmp, on_done=lambda: bar.update(1))
    counts, hours = {}, {}
    for split in ("train", "valid", "test"):
        rows = [u for u in utterances if u.split == split]
        manifest = "".join(f"audio/{split}/{u.uid}.flac\t{u.text}\n" for u in rows)
        (tmp / f"{split}.tsv").write_text(manifest, encoding="utf-8")
        counts[split] = len(rows)
        hours[split] = round(sum(durations[u.uid] for u in rows) / 3600, 4)
    voices = "path\tengine\tvoice\tspeed\tpitch\tseconds\n" + "".join(
        f"audio/{u.split}/{u.uid}.flac\t{u.engine}\t{u.voice}\t{u.speed}\t{u.pitch}\t{durations[u.uid]:.3f}\n" for u in utterances
    )
    (tmp / "voices.tsv").write_text(voices, encoding="utf-8")
    _swap_in(tmp, out)
    return {"counts": counts, "hours": hours}


def _one_document(text: str) -> str:
    """Drop blank lines inside an entry: in the corpus files a blank line separates documents."""
    return "\n".join(line for line in text.splitlines() if line.strip())


def _tsv(rows: list[tuple[str, str]]) -> str:
    return "sentence\tlabel\n" + "".join(f"{' '.join(text.split())}\t{label}\n" for text, label in rows)


def prepare_text(cfg: TextPrepare, seed: int, out: Path, where: str = "params.yaml text.prepare") -> dict[str, Any]:
    """`where`: the params block `cfg` comes from, as errors name it."""
    rng = random.Random(seed)
    synsets = list(wordnet.synsets())
    order = list(range(len(synsets)))
    rng.shuffle(order)
    n_test, n_valid, n_train = cfg.lexname_test, cfg.lexname_valid, cfg.lexname_train
    if n_test + n_valid + n_train > len(order):
        raise UserInputError(f"{where}: lexname splits ask for more than the {len(order)} synsets")
    lex_split = {"test": order[:n_test], "valid": order[n_test : n_test + n_valid], "train": order[n_test + n_valid : n_test + n_valid + n_train]}
    held_out_synsets = set(lex_split["test"]) | set(lex_split["valid"])

    fortune_split: dict[str, list[tuple[str, str]]] = {"train": [], "valid": [], "test": []}
    corpus_fortunes = []
    for category in fortunes.categories():
        entries = list(fortunes.fortunes(category))
        if len(entries) < cfg.fortune_min_per_category:
            corpus_fortunes += [_one_document(e) for e in entries]  # too few for a class; still good unlabeled text
            continue
        rng.shuffle(entries)
        n_te = round(len(entries) * cfg.fortune_test_fraction)
        n_va = round(len(entries) * cfg.fortune_valid_fraction)
        fortune_split["test"] += [(e, category) for e in entries[:n_te]]
        fortune_split["valid"] += [(e, category) for e in entries[n_te : n_te + n_va]]
        fortune_split["train"] += [(e, category) for e in entries[n_te + n_va :]]
        corpus_fortunes += [_one_document(e) for e in entries[n_te + n_va :]]

    # Unlabeled corpus: no valid/test input of either task leaks into pretraining.
    documents = [
        "; ".join((s.definition,) + s.examples) for i, s in enumerate(synsets) if i not in held_out_synsets
    ] + corpus_fortunes
    rng.shuffle(documents)
    documents = documents[: cfg.corpus_limit]
    n_corpus_valid = max(1, round(len(documents) * cfg.valid_fraction))
    tmp = _fresh_dir(out)
    for split, docs in (("valid", documents[:n_corpus_valid]), ("train", documents[n_corpus_valid:])):
        (tmp / "corpus" / split).mkdir(parents=True)
        (tmp / "corpus" / split / "wordnet_fortunes.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    for split, indices in lex_split.items():
        (tmp / "tasks" / "lexname").mkdir(parents=True, exist_ok=True)
        rows = [(synsets[i].definition, synsets[i].lexname) for i in indices]
        (tmp / "tasks" / "lexname" / f"{split}.tsv").write_text(_tsv(rows), encoding="utf-8")
    for split, rows in fortune_split.items():
        (tmp / "tasks" / "fortune").mkdir(parents=True, exist_ok=True)
        (tmp / "tasks" / "fortune" / f"{split}.tsv").write_text(_tsv(rows), encoding="utf-8")
    _swap_in(tmp, out)
    return {
        "corpus_documents": {"train": len(documents) - n_corpus_valid, "valid": n_corpus_valid},
        "lexname": {k: len(v) for k, v in lex_split.items()},
        "fortune": {k: len(v) for k, v in fortune_split.items()},
        "fortune_categories": sorted({c for _, c in fortune_split["train"]}),
    }


def prepare(modality: str, params: dict[str, Any], out: Path | None = None, progress: bool = True) -> dict[str, Any]:
    from pipeline import config as P

    out = out if out is not None else paths.raw_dir(modality)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = P.section(params, P.PREPARE[modality], modality, "prepare")
    where = f"{P.source(params)} {modality}.prepare"
    if modality == "image":
        return prepare_image(cfg, out)
    if modality == "speech":
        return prepare_speech(cfg, P.seed(params), out, progress, where)
    return prepare_text(cfg, P.seed(params), out, where)
