"""The `tokenizer` stage, with HF `tokenizers`, trained on the training split of the shards.

  text    byte-level BPE with RoBERTa specials: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4; encodings are wrapped
          as `<s> ... </s>` (a sentence pair as `<s> A </s></s> B </s>`). Only the pipeline produces special ids:
          `<s>`, `<mask>`, ... written in user text are encoded as the plain characters they are (see `load`).
  speech  a character vocabulary for CTC: <pad>=0 (the CTC blank) <s>=1 </s>=2 <unk>=3, then `|` for the
          word boundary (fairseq's letter dictionary convention) and every character of the training transcripts.
"""
from __future__ import annotations

import copyreg
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
    """The `.txt` member (and the second sentence of a pair) of every sample of `split`, in index order."""
    from pipeline.data.shard_reader import IndexedShards
    from pipeline.data.text_source import PAIR_MEMBER

    samples = IndexedShards(shard_dir, split)  # names a missing index.json or split
    for i in range(len(samples)):
        for member in ("txt", PAIR_MEMBER):
            text = samples.member(i, member)
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
    tok.encode_special_tokens = True
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
    """The tokenizer at `path`, set to encode special-token strings in text (`<s>`, `<mask>`, ...) as plain
    characters: the specials are added tokens, which HF tokenizers otherwise match anywhere in raw text, so a
    user's "<s>20</s>" would become control ids and vanish on decode. The pipeline adds the real specials by id
    (the post-processor, the text packing). Load every tokenizer through here: the setting is not stored in
    tokenizer.json (huggingface/tokenizers#1839)."""
    if not path.exists():
        raise UserInputError(f"{path}: tokenizer not found; run `python -m pipeline tokenizer` first")
    tok = Tokenizer.from_file(str(path))
    tok.encode_special_tokens = True
    return tok


def vocab_digest(tok: Tokenizer) -> str:
    """The tokenizer's identity: sha256 of its vocabulary (token -> id, added tokens included) as sorted JSON.
    Equal digests map every id to the same string. Checkpoints store it so that fine-tuning and evaluation refuse
    another tokenizer (pipeline/finetune/model.py check_tokenizer)."""
    import hashlib
    import json

    items = sorted(tok.get_vocab(with_added_tokens=True).items())
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()


def _from_state(serialized: str, encode_special_tokens: bool) -> Tokenizer:
    tok = Tokenizer.from_str(serialized)
    tok.encode_special_tokens = encode_special_tokens
    return tok


# Pickling (DataLoader workers under spawn, copy.deepcopy) drops `encode_special_tokens` as well: keep it.
copyreg.pickle(Tokenizer, lambda tok: (_from_state, (tok.to_str(), tok.encode_special_tokens)))


def roundtrip_failures(tok: Tokenizer, texts: list[str], normalize=lambda s: s) -> list[tuple[str, str]]:
    """(original, decoded) pairs where decode(encode(text)) does not give the text back."""
    failures = []
    for text in texts:
        decoded = tok.decode(tok.encode(text).ids)
        if decoded != normalize(text):
            failures.append((text, decoded))
    return failures
