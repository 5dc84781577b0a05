"""The `tokenizer` stage, with HF `tokenizers`, trained on the training split of the shards.

  text    byte-level BPE with RoBERTa specials: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4; encodings are wrapped
          as `<s> ... </s>`.
  speech  a character vocabulary for CTC: <pad>=0 (the CTC blank) <s>=1 </s>=2 <unk>=3, then `|` for the
          word boundary (fairseq's letter dictionary convention) and every character of the training transcripts.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from pipeline import paths
from pipeline.errors import UserInputError
from pipeline.config import SpeechTokenizer, TextTokenizer
from pipeline.io import atomic_write_bytes

TEXT_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
SPEECH_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
WORD_BOUNDARY = "|"


def iter_shard_texts(shard_dir: Path, split: str) -> Iterator[str]:
    """The `.txt` member of every sample of `split`, in index order (one seek and read per sample)."""
    from pipeline.data.shard_reader import IndexedShards

    samples = IndexedShards(shard_dir, split)  # names a missing index.json or split
    for i in range(len(samples)):
        text = samples.member(i, "txt")
        if text is not None:
            yield text.decode("utf-8")


def train_text_tokenizer(texts: Iterator[str], cfg: TextTokenizer) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=TEXT_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte has a token: no <unk> ever
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # RobertaProcessing takes (sep, cls) positionally (its `cls` keyword is really `cls_token`)
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
    return tok


def speech_normalizer(cfg: SpeechTokenizer) -> normalizers.Normalizer:
    steps = [normalizers.Strip(), normalizers.Replace(Regex(r"\s+"), WORD_BOUNDARY)]
    return normalizers.Sequence(([normalizers.Lowercase()] if cfg.lowercase else []) + steps)


def train_speech_tokenizer(transcripts: Iterator[str], cfg: SpeechTokenizer) -> Tokenizer:
    """Specials, then `|`, then every character of the normalized transcripts, most frequent first."""
    normalizer = speech_normalizer(cfg)
    counts: Counter[str] = Counter()
    for text in transcripts:
        counts.update(normalizer.normalize_str(text))
    chars = sorted((c for c in counts if c != WORD_BOUNDARY), key=lambda c: (-counts[c], c))
    vocab = {token: i for i, token in enumerate(SPEECH_SPECIALS + [WORD_BOUNDARY] + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    # decode: characters are joined without spaces, then the boundary symbol becomes a space
    tok.decoder = decoders.Sequence([decoders.Fuse(), decoders.Replace(WORD_BOUNDARY, " ")])
    return tok


def train_tokenizer(modality: str, params: dict[str, Any], shard_dir: Path | None = None, out: Path | None = None) -> dict[str, Any]:
    from pipeline import config as P

    if modality not in P.TOKENIZER:
        raise UserInputError(f"no tokenizer for modality {modality!r}; choose text or speech")
    shard_dir = shard_dir if shard_dir is not None else paths.shards_dir(modality)
    out = out if out is not None else paths.tokenizer_path(modality)
    cfg = P.section(params, P.TOKENIZER[modality], modality, "tokenizer")
    texts = iter_shard_texts(shard_dir, "train")
    tok = train_text_tokenizer(texts, cfg) if modality == "text" else train_speech_tokenizer(texts, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, tok.to_str(pretty=True).encode("utf-8"))
    specials = TEXT_SPECIALS if modality == "text" else SPEECH_SPECIALS
    return {"path": str(out), "vocab_size": tok.get_vocab_size(), "specials": {s: tok.token_to_id(s) for s in specials}}


def load(path: Path) -> Tokenizer:
    if not path.exists():
        raise UserInputError(f"{path}: tokenizer not found; run `python -m pipeline tokenizer` first")
    return Tokenizer.from_file(str(path))


def roundtrip_failures(tok: Tokenizer, texts: list[str], normalize=lambda s: s) -> list[tuple[str, str]]:
    """(original, decoded) pairs where decode(encode(text)) does not give the text back."""
    failures = []
    for text in texts:
        decoded = tok.decode(tok.encode(text).ids)
        if decoded != normalize(text):
            failures.append((text, decoded))
    return failures
