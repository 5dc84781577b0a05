"""Labeled batches for fine-tuning and evaluation, built in DataLoader workers.

Training batches use the pretraining machinery: `dataset[(update, ids)]` is this rank's part of global batch
`update` (pipeline/data/shard_reader.py RankBatchSampler via pipeline/pretrain/data.py make_loader), where ids are
positions in the labeled pool; augmentation, crops, mixup and the speech fine-tuning masks draw from
per-sample generators seeded with (seed, update, sample), so 1 and N processes, and a resumed run, see the
same batches. Evaluation batches are `dataset[(None, ids)]`: no augmentation, no masks.

  image   `image` (B, 3, S, S) normalized; `target` (B,) or (B, C) soft targets when mixup/cutmix is on
  speech  `audio` (B, S) per-utterance normalized, zero-padded; `padding_mask` (B, S) True = pad;
          `targets` (sum of lengths,) letter ids; `target_lengths` (B,); `time_mask` (B, T), `channel_mask` (B, D)
  text    `tokens` (B, T) <s> ... </s> truncated to the model's positions, padded with <pad>; `target` (B,)
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from model.heads import finetune_masks
from pipeline.errors import UserInputError
from pipeline.finetune.config import FinetuneConfig, ImageFinetune
from pipeline.pretrain.data import decode_image, normalize_waveform, random_resized_crop, sample_generator
from pipeline.data.shard_reader import IndexedShards
from pipeline.data.text_source import text_input


def _numpy_rng(seed: int, update: int, sample_id: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(update), int(sample_id), 0xF1E])


class LabeledBatches(torch.utils.data.Dataset):
    """One split of a task; `positions` maps pool positions (what the sampler hands out) to split samples."""

    def __init__(self, cfg: FinetuneConfig, model_cfg, shard_dir: Path, split: str, positions: list[int] | None = None,
                 tokenizer_path: Path | None = None, num_classes: int | None = None):
        self.cfg, self.model_cfg, self.modality = cfg, model_cfg, cfg.modality
        self.shards = IndexedShards(shard_dir, split)
        self.positions = list(range(len(self.shards))) if positions is None else list(positions)
        self.num_classes = num_classes
        self.tokenizer = None
        if self.modality in ("speech", "text"):
            from pipeline.data.tokenizer import load

            self.tokenizer = load(tokenizer_path)
            self.tokenizer.no_padding()
            if self.modality == "text":
                self.tokenizer.enable_truncation(model_cfg.text.max_positions)

    @property
    def num_samples(self) -> int:
        return len(self.positions)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, item: tuple[int | None, list[int]]) -> dict[str, Any]:
        update, ids = item
        samples = [self.shards[self.positions[i]] for i in ids]
        batch = getattr(self, f"_{self.modality}_batch")(update, [self.positions[i] for i in ids], samples)
        batch["ids"] = torch.tensor([self.positions[i] for i in ids])
        if update is not None:
            batch["update"] = torch.tensor(update)
        return batch

    def transcript(self, position: int) -> str:
        return self.shards[position]["txt"].decode("utf-8")

    # ------------------------------------------------------------------------------------------------

    def _image_batch(self, update: int | None, ids: list[int], samples: list[dict]) -> dict[str, Any]:
        cfg, aug, size = self.cfg, self.cfg.image, self.model_cfg.image.input_size
        mean = torch.tensor(aug.mean).view(3, 1, 1)
        std = torch.tensor(aug.std).view(3, 1, 1)
        images = []
        for i, sample in zip(ids, samples):
            with self.shards.decoding(i):
                img = decode_image(sample.get("png") or sample["jpg"])
            if update is None:
                img = center_crop(img, size, aug.eval_crop_ratio)
            else:
                gen = sample_generator(cfg.seed, update, i)
                img = random_resized_crop(img, size, aug.crop_scale, gen)
                if aug.hflip and torch.rand(1, generator=gen).item() < 0.5:
                    img = img.flip(-1)
            images.append((img - mean) / std)
        batch = {"image": torch.stack(images), "target": torch.tensor([int(s["cls"]) for s in samples])}
        if update is not None and (aug.mixup > 0 or aug.cutmix > 0):
            batch["image"], batch["target"] = mix_batch(batch["image"], batch["target"], self.num_classes, aug,
                                                        sample_generator(cfg.seed, update, 10**12 + ids[0]))
        return batch

    def _speech_batch(self, update: int | None, ids: list[int], samples: list[dict]) -> dict[str, Any]:
        cfg, ctc = self.cfg, self.cfg.speech
        waves = []
        for i, sample in zip(ids, samples):
            with self.shards.decoding(i):
                audio, rate = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
            if rate != 16000:
                raise UserInputError(f"speech sample {i} is {rate} Hz; shards must be 16 kHz (re-run `shard`)")
            wave = torch.from_numpy(audio)
            if update is not None and len(wave) > ctc.max_sample_size:
                start = int(torch.randint(0, len(wave) - ctc.max_sample_size + 1, (1,), generator=sample_generator(cfg.seed, update, i)))
                wave = wave[start : start + ctc.max_sample_size]
            waves.append(normalize_waveform(wave))
        longest = max(len(w) for w in waves)
        audio = torch.zeros(len(waves), longest)
        padding = torch.ones(len(waves), longest, dtype=torch.bool)
        for row, wave in enumerate(waves):
            audio[row, : len(wave)] = wave
            padding[row, : len(wave)] = False
        letters = [self.tokenizer.encode(s["txt"].decode("utf-8")).ids for s in samples]
        batch = {"audio": audio, "padding_mask": padding,
                 "targets": torch.tensor([t for ids_ in letters for t in ids_], dtype=torch.long),
                 "target_lengths": torch.tensor([len(t) for t in letters], dtype=torch.long)}
        if update is not None:
            speech, dim = self.model_cfg.speech, self.model_cfg.embed_dim
            frames = speech.num_frames(longest)
            time_masks, channel_masks = [], []
            for i, wave in zip(ids, waves):
                t, c = finetune_masks(_numpy_rng(cfg.seed, update, i), frames, speech.num_frames(len(wave)), dim,
                                      ctc.mask_prob, ctc.mask_length, ctc.mask_channel_prob, ctc.mask_channel_length)
                time_masks.append(t)
                channel_masks.append(c)
            batch["time_mask"] = torch.from_numpy(np.stack(time_masks))
            batch["channel_mask"] = torch.from_numpy(np.stack(channel_masks))
        return batch

    def _text_batch(self, update: int | None, ids: list[int], samples: list[dict]) -> dict[str, Any]:
        encodings = self.tokenizer.encode_batch([text_input(s) for s in samples])  # a sentence pair: (A, B)
        longest = max(len(e.ids) for e in encodings)
        tokens = torch.full((len(encodings), longest), self.model_cfg.text.pad_idx, dtype=torch.long)
        for row, enc in enumerate(encodings):
            tokens[row, : len(enc.ids)] = torch.tensor(enc.ids)
        return {"tokens": tokens, "target": torch.tensor([int(s["cls"]) for s in samples])}

    def tokens_per_sample(self, batch: dict[str, torch.Tensor]) -> float:
        """Encoder tokens per sample of a batch (patches, frames, or non-pad tokens) for throughput logs."""
        if self.modality == "image":
            return float(self.model_cfg.num_tokens())
        if self.modality == "speech":
            lengths = (~batch["padding_mask"]).sum(-1)
            return float(np.mean([self.model_cfg.speech.num_frames(int(n)) for n in lengths]))
        return float((batch["tokens"] != self.model_cfg.text.pad_idx).sum(-1).float().mean())


def center_crop(img: torch.Tensor, size: int, ratio: float) -> torch.Tensor:
    """Evaluation transform: resize the shorter side to size / ratio (bicubic), then the central size x size."""
    _, h, w = img.shape
    short = int(round(size / ratio))
    if (h, w) != (size, size) or ratio != 1.0:
        nh, nw = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
        img = F.interpolate(img[None], size=(nh, nw), mode="bicubic", align_corners=False)[0].clamp(0, 1)
        top, left = (nh - size) // 2, (nw - size) // 2
        img = img[:, top : top + size, left : left + size]
    return img


def mix_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: ImageFinetune,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """timm Mixup in batch mode: with probability mix_prob, mix every image with the batch flipped, by
    mixup (Beta(a, a) blend) or cutmix (a box of area 1 - lambda), choosing cutmix with switch_prob when both
    are on. Targets become label-smoothed one-hots mixed by the same lambda: (B, C)."""
    off = cfg.label_smoothing / num_classes
    onehot = torch.full((len(labels), num_classes), off).scatter_(1, labels[:, None], 1 - cfg.label_smoothing + off)
    if torch.rand(1, generator=gen).item() >= cfg.mix_prob:
        return images, onehot
    use_cutmix = cfg.cutmix > 0 and (cfg.mixup <= 0 or torch.rand(1, generator=gen).item() < cfg.switch_prob)
    alpha = cfg.cutmix if use_cutmix else cfg.mixup
    # Beta(alpha, alpha) from numpy, seeded by the explicit generator (torch's Beta takes no generator)
    lam = float(np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen))).beta(alpha, alpha))
    flipped = images.flip(0)
    if use_cutmix:
        _, _, h, w = images.shape
        cut = (1 - lam) ** 0.5
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(0, h, (1,), generator=gen)), int(torch.randint(0, w, (1,), generator=gen))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        images = images.clone()
        images[:, :, y0:y1, x0:x1] = flipped[:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the box's true area after clipping at the border
    else:
        images = images * lam + flipped * (1 - lam)
    return images, onehot * lam + onehot.flip(0) * (1 - lam)


def eval_batches(num_samples: int, batch_size: int, rank: int, world_size: int) -> list[tuple[None, list[int]]]:
    """Evaluation batches of consecutive samples, dealt round-robin to the ranks (results are gathered)."""
    chunks = [list(range(s, min(s + batch_size, num_samples))) for s in range(0, num_samples, batch_size)]
    return [(None, chunk) for chunk in chunks[rank::world_size]]


class _EvalItems(torch.utils.data.Dataset):
    def __init__(self, dataset: LabeledBatches, items: list[tuple[None, list[int]]]):
        self.dataset, self.items = dataset, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict[str, Any]:
        return self.dataset[self.items[k]]


def eval_loader(dataset: LabeledBatches, batch_size: int, rank: int, world_size: int, workers: int):
    """This rank's evaluation batches, in order."""
    items = _EvalItems(dataset, eval_batches(dataset.num_samples, batch_size, rank, world_size))
    return torch.utils.data.DataLoader(items, batch_size=None, shuffle=False, num_workers=workers,
                                       prefetch_factor=4 if workers > 0 else None)
