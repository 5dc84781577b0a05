"""Pretraining batches from the shards: decoding, augmentation, cropping, text packing and masks, all in
DataLoader workers and all a pure function of (seed, update, sample ids).

The loader (pipeline/train/loader.py) hands each worker `(update, ids)`: the update number and this rank's rows of
that global batch (pipeline/data/shard_reader.py). The dataset turns them into the model's batch dict, with the
clone-batch masks precomputed by `model.masking.make_mask` (so the model never draws them on the hot path).
"""
from __future__ import annotations

import functools
import io
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from model.masking import make_mask
from pipeline.errors import UserInputError
from pipeline.io import files_digest
from pipeline.data.shard_reader import IndexedShards
from pipeline.data.speech_source import MIN_SAMPLES
from pipeline.data.tokens import REBUILD, encode_split, read_split
from pipeline.pretrain.config import PretrainConfig


def sample_generator(seed: int, update: int, sample_id: int) -> torch.Generator:
    """Per-sample RNG for augmentation and crops: independent of worker count, rank and world size."""
    state = np.random.SeedSequence([seed, update, sample_id, 0xA06]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def random_resized_crop(img: torch.Tensor, size: int, scale: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop (ratio 3/4..4/3, bicubic) with an explicit generator: img (C, H, W)."""
    _, h, w = img.shape
    area = h * w
    log_ratio = torch.log(torch.tensor([3 / 4, 4 / 3]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=gen).item()
        ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0].item(), log_ratio[1].item(), generator=gen)).item()
        cw, ch = int(round((target * ratio) ** 0.5)), int(round((target / ratio) ** 0.5))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
            break
    else:  # fall back to the whole image
        top, left, ch, cw = 0, 0, h, w
    crop = img[:, top : top + ch, left : left + cw].unsqueeze(0)
    return F.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False).squeeze(0).clamp(0, 1)


def decode_image(data: bytes) -> torch.Tensor:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def normalize_waveform(audio: torch.Tensor) -> torch.Tensor:
    """Per-utterance zero mean, unit variance (fairseq `normalize: true`, F.layer_norm over the waveform)."""
    return F.layer_norm(audio, audio.shape[-1:])


class PretrainBatches(torch.utils.data.Dataset):
    """Map-style over (update, ids) pairs: `dataset[(update, ids)]` is one ready batch for this rank."""

    def __init__(self, cfg: PretrainConfig, model_cfg, shard_dir: Path, split: str = "train", tokenizer_path: Path | None = None):
        self.cfg, self.model_cfg = cfg, model_cfg
        self.modality = cfg.modality
        if self.modality == "text":
            self.blocks = pack_text_blocks(shard_dir, split, tokenizer_path, self.block_size)
            self.num_samples = len(self.blocks)
        else:
            self.shards = IndexedShards(shard_dir, split)
            self.num_samples = len(self.shards)

    @property
    def block_size(self) -> int:
        return self.cfg.text.block_size or self.model_cfg.text.max_positions

    @property
    def crop_samples(self) -> int:
        return self.cfg.speech.crop_samples or self.model_cfg.speech.max_sample_size

    def tokens_per_sample(self, batch: dict[str, torch.Tensor]) -> int:
        key = {"image": "image", "speech": "audio", "text": "tokens"}[self.modality]
        length = batch[key].shape[-1]
        return self.model_cfg.num_tokens(None if self.modality == "image" else length)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, item: tuple[int, list[int]]) -> dict[str, Any]:
        update, ids = item
        batch = getattr(self, f"_{self.modality}_batch")(update, ids)
        length = None if self.modality == "image" else batch["audio" if self.modality == "speech" else "tokens"].shape[-1]
        batch["mask"] = make_mask(self.model_cfg, self.cfg.seed, update, ids, input_length=length)
        batch["ids"] = torch.tensor(ids)
        batch["update"] = torch.tensor(update)
        return batch

    def _image_batch(self, update: int, ids: list[int]) -> dict[str, Any]:
        size = self.model_cfg.image.input_size
        mean = torch.tensor(self.cfg.image.mean).view(3, 1, 1)
        std = torch.tensor(self.cfg.image.std).view(3, 1, 1)
        images = []
        for i in ids:
            sample = self.shards[i]
            with self.shards.decoding(i):
                img = decode_image(sample.get("png") or sample["jpg"])
            gen = sample_generator(self.cfg.seed, update, i)
            img = random_resized_crop(img, size, self.cfg.image.crop_scale, gen)
            if torch.rand(1, generator=gen).item() < 0.5:
                img = img.flip(-1)
            images.append((img - mean) / std)
        return {"image": torch.stack(images)}

    def _speech_batch(self, update: int, ids: list[int]) -> dict[str, Any]:
        waves = []
        for i in ids:
            with self.shards.decoding(i):
                audio, rate = sf.read(io.BytesIO(self.shards[i]["flac"]), dtype="float32")
            if rate != 16000:
                raise UserInputError(f"speech sample {i} is {rate} Hz; shards must be 16 kHz (re-run `shard`)")
            waves.append(torch.from_numpy(audio))
        # Crop every utterance to the batch's shortest, at most crop_samples (no padding in pretraining, as
        # fairseq); the masks are then computed on the cropped length, so every row has the same count. Never
        # below MIN_SAMPLES: a shorter clip (shards written with a lower speech.shard.min_seconds) is repeated
        # to that length, so one tiny clip cannot starve the feature extractor of frames.
        length = min(self.crop_samples, max(MIN_SAMPLES, min(len(w) for w in waves)))
        crops = []
        for i, wave in zip(ids, waves):
            wave = wave.repeat(-(-length // len(wave)))  # the clip itself when it is long enough
            gen = sample_generator(self.cfg.seed, update, i)
            start = int(torch.randint(0, len(wave) - length + 1, (1,), generator=gen))
            crops.append(normalize_waveform(wave[start : start + length]))
        return {"audio": torch.stack(crops)}

    def _text_batch(self, update: int, ids: list[int]) -> dict[str, Any]:
        return {"tokens": torch.stack([self.blocks[i] for i in ids])}


def pack_text_blocks(shard_dir: Path, split: str, tokenizer_path: Path | None, block_size: int,
                     tokens_dir: Path | None = None) -> torch.Tensor:
    """The documents of `split` joined with </s> (fairseq `sample_break_mode: none`) and cut into blocks of
    `block_size`: <s> + block_size-1 tokens. Returns (num_blocks, block_size), to be read only.

    The token ids come from the `tokenize` stage's artifact in `tokens_dir` (default data/tokens/text,
    pipeline/data/tokens.py) when it was computed from these shards and this tokenizer; for other shards (a user's
    own --shards) the split is tokenized here, with a line on stderr. A stale artifact raises UserInputError. A
    process keeps the blocks of its latest calls (pretrain --benchmark builds a dataset per run)."""
    from pipeline import paths

    tokenizer_path = Path(tokenizer_path or paths.tokenizer_path("text"))
    tokens_dir = Path(tokens_dir or paths.tokens_dir("text"))
    return _pack_text_blocks(Path(shard_dir), split, tokenizer_path, block_size, tokens_dir,
                             files_digest([Path(shard_dir) / "index.json", tokenizer_path, tokens_dir / "index.json"]))


@functools.lru_cache(maxsize=2)
def _pack_text_blocks(shard_dir: Path, split: str, tokenizer_path: Path, block_size: int, tokens_dir: Path,
                      digest: str) -> torch.Tensor:
    """`digest` (of the files read) keys the process's cache, so a rebuilt input is read again."""
    found = read_split(tokens_dir, shard_dir, tokenizer_path, split)
    if found is None:
        if os.environ.get("RANK", "0") == "0":
            print(f"tokenizing split {split!r} of {shard_dir} with {tokenizer_path} ({tokens_dir} holds no token ids "
                  f"of them; `{REBUILD}` writes those of the default data)", file=sys.stderr)
        found = encode_split(shard_dir, split, tokenizer_path)
    stream, bos = found
    body = block_size - 1
    num_blocks = len(stream) // body
    if num_blocks == 0:
        raise UserInputError(f"{shard_dir}: split {split!r} has {len(stream)} tokens, fewer than one block of {block_size}")
    ids = torch.from_numpy(stream[: num_blocks * body].astype(np.int64)).view(num_blocks, body)
    return torch.cat([torch.full((num_blocks, 1), bos, dtype=torch.long), ids], dim=1)
