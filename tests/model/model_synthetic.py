"""Structured synthetic inputs for the model tests (smooth images, tones, repeating token patterns)."""
from __future__ import annotations

import math

import torch


def smooth_images(batch_size: int, size: int = 28, seed: int = 0) -> torch.Tensor:
    """(B, 3, size, size) products of low-frequency sinusoids, roughly unit scale like normalized images."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    freq = torch.rand(batch_size, 3, 1, 1, generator=g) * 6 + 1
    phase = torch.rand(batch_size, 3, 1, 1, generator=g) * 6
    return torch.sin(freq * xx * 3 + phase) * torch.cos(freq * yy * 2 + phase)


def tones(batch_size: int, num_samples: int = 16000, seed: int = 0) -> torch.Tensor:
    """(B, S) amplitude-modulated harmonic tones at 16 kHz, normalized per utterance."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples) / 16000
    f0 = torch.rand(batch_size, 1, generator=g) * 400 + 100
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t)
    wave = (torch.sin(2 * math.pi * f0 * t) + 0.5 * torch.sin(4 * math.pi * f0 * t)) * envelope
    return (wave - wave.mean(1, keepdim=True)) / wave.std(1, keepdim=True)


def token_patterns(batch_size: int, seq_len: int = 64, vocab_size: int = 4096, period: int = 8, seed: int = 0):
    """(B, T) sequences repeating a random pattern of `period` ids (no specials: ids >= 5)."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.randint(5, vocab_size, (batch_size, period), generator=g)
    return pattern.repeat(1, seq_len // period + 1)[:, :seq_len]


def batch_for(modality: str, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    if modality == "image":
        return {"image": smooth_images(batch_size, seed=seed)}
    if modality == "speech":
        return {"audio": tones(batch_size, seed=seed)}
    return {"tokens": token_patterns(batch_size, seed=seed)}
