"""Masks for data2vec 2.0 as pure functions of (seed, step, sample id), and the `MaskInfo` the model uses.

Every mask function returns a BoolTensor of shape (len(ids) * num_clones, num_tokens), True = masked, with
rows ordered sample-major (sample0-clone0, sample0-clone1, ..., sample1-clone0, ...), the order of fairseq's
`repeat_interleave` clone batch. Each sample draws from its own numpy Generator seeded with
(seed, step, id), so a sample's masks do not depend on which other samples share its batch, the global torch and
numpy RNGs are never touched, and the functions are safe to call in data-loader workers.

Every row has exactly the same number of masked tokens (`num_masked`), so the student input is a dense
(B*M, T_visible, D) tensor:
  * image: inverse 2-D block masking (`compute_block_mask_2d` with inverse_mask=True): pick B x B blocks to keep,
    then make the kept count exactly int(L * (1 - R)); everything else is masked.
  * speech: 1-D span masking (`compute_block_mask_1d`): spans of B frames, count made exactly int(T * R).
  * text: uniform random masking (MAE `random_masking`): exactly int(T * (1 - R)) tokens kept.

Change from the official code: fairseq computes audio masks over each utterance's full length and the collater
then crops them, so rows of a batch can end up with different masked counts; the model then keeps row 0's count
for every row and silently leaks or drops a few frames. Here speech masks are computed for the cropped length,
so every row has exactly int(T * R) masked frames.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

Ids = Sequence[int] | np.ndarray | torch.Tensor


def _sample_rng(seed: int, step: int, sample_id: int) -> np.random.Generator:
    # SeedSequence hashes the whole tuple, so (seed, step, id) triples give independent streams.
    return np.random.default_rng([int(seed), int(step), int(sample_id)])


def _as_id_list(ids: Ids) -> list[int]:
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    out = [int(i) for i in ids]
    if any(i < 0 for i in out):
        raise ValueError("sample ids must be non-negative")
    return out


def _exact_count(marked: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Make every row of `marked` (M, L) have exactly `target` True cells.

    Rows with too many marked cells lose a uniformly random subset of them; rows with too few gain a uniformly
    random subset of the unmarked cells (fairseq's multinomial fix-up with `expand_adjacent=False`). Sorting on
    (not marked) + uniform noise puts the marked cells first in random order, then the unmarked ones.
    """
    order = np.argsort((~marked) * 2.0 + rng.random(marked.shape), axis=1, kind="stable")[:, :target]
    out = np.zeros_like(marked)
    np.put_along_axis(out, order, True, axis=1)
    return out


def _block_mask_1d(rng: np.random.Generator, rows: int, length: int, p: float, block: int, adjust: float):
    """(rows, length) bool with exactly int(length * p) marked cells, grown from spans of `block` cells."""
    num_centres = int(length * (p + adjust) / block)
    marked = np.zeros((rows, length), dtype=bool)
    if num_centres > 0:
        centres = rng.integers(0, length, size=(rows, num_centres))  # with replacement, like fairseq
        offsets = np.arange(block) - block // 2
        cells = np.clip(centres[:, :, None] + offsets, 0, length - 1).reshape(rows, -1)
        np.put_along_axis(marked, cells, True, axis=1)
    return _exact_count(marked, int(length * p), rng)


def _block_mask_2d(rng: np.random.Generator, rows: int, h: int, w: int, p: float, block: int, adjust: float):
    """(rows, h*w) bool with exactly int(h*w * p) marked cells, grown from block x block squares.

    Squares are clamped at the grid edge, so edge blocks shrink and overlapping blocks merge (as in fairseq).
    """
    length = h * w
    num_centres = int(length * (p + adjust) / block**2)
    marked = np.zeros((rows, length), dtype=bool)
    if num_centres > 0:
        centres = rng.integers(0, length, size=(rows, num_centres))
        offsets = np.arange(block) - block // 2
        ci = np.clip((centres // w)[:, :, None, None] + offsets[:, None], 0, h - 1)  # (rows, n, block, 1)
        cj = np.clip((centres % w)[:, :, None, None] + offsets[None, :], 0, w - 1)  # (rows, n, 1, block)
        cells = (ci * w + cj).reshape(rows, -1)
        np.put_along_axis(marked, cells, True, axis=1)
    return _exact_count(marked, int(length * p), rng)


def image_block_mask(
    seed: int,
    step: int,
    ids: Ids,
    num_clones: int,
    grid_h: int,
    grid_w: int,
    mask_prob: float,
    mask_length: int,
    mask_prob_adjust: float = 0.0,
    inverse: bool = True,
) -> torch.Tensor:
    """2-D block masks, (len(ids) * num_clones, grid_h * grid_w) bool, True = masked, patches in raster order.

    inverse=True (data2vec 2.0): blocks mark the *visible* patches; exactly int(L * (1 - mask_prob)) stay
    visible. inverse=False: blocks mark the masked patches; exactly int(L * mask_prob) are masked.
    """
    p = 1 - mask_prob if inverse else mask_prob
    rows = []
    for sample_id in _as_id_list(ids):
        marked = _block_mask_2d(_sample_rng(seed, step, sample_id), num_clones, grid_h, grid_w, p, mask_length,
                                mask_prob_adjust)
        rows.append(~marked if inverse else marked)
    return torch.from_numpy(np.concatenate(rows) if rows else np.zeros((0, grid_h * grid_w), dtype=bool))


def speech_block_mask(
    seed: int,
    step: int,
    ids: Ids,
    num_clones: int,
    num_frames: int,
    mask_prob: float,
    mask_length: int,
    mask_prob_adjust: float = 0.0,
    inverse: bool = False,
) -> torch.Tensor:
    """1-D span masks over the frames of the *cropped* utterance, (len(ids) * num_clones, num_frames) bool.

    inverse=False (data2vec 2.0 audio): spans of `mask_length` frames are masked, exactly int(T * mask_prob).
    inverse=True: spans mark the visible frames, exactly int(T * (1 - mask_prob)) visible.
    """
    p = 1 - mask_prob if inverse else mask_prob
    rows = []
    for sample_id in _as_id_list(ids):
        marked = _block_mask_1d(_sample_rng(seed, step, sample_id), num_clones, num_frames, p, mask_length,
                                mask_prob_adjust)
        rows.append(~marked if inverse else marked)
    return torch.from_numpy(np.concatenate(rows) if rows else np.zeros((0, num_frames), dtype=bool))


def text_random_mask(seed: int, step: int, ids: Ids, num_clones: int, seq_len: int, mask_prob: float) -> torch.Tensor:
    """Uniform random masks, (len(ids) * num_clones, seq_len) bool; exactly int(T * (1 - mask_prob)) kept.

    Positions holding padding are masked or kept like any other (as in fairseq); the model drops padded
    positions from attention and from the loss, so the counts per row stay equal.
    """
    keep = int(seq_len * (1 - mask_prob))
    rows = []
    for sample_id in _as_id_list(ids):
        noise = _sample_rng(seed, step, sample_id).random((num_clones, seq_len))
        kept = np.argsort(noise, axis=1, kind="stable")[:, :keep]  # small noise is kept
        masked = np.ones((num_clones, seq_len), dtype=bool)
        np.put_along_axis(masked, kept, False, axis=1)
        rows.append(masked)
    return torch.from_numpy(np.concatenate(rows) if rows else np.zeros((0, seq_len), dtype=bool))


def num_masked(mask_cfg, num_tokens: int) -> int:
    """Masked tokens per row for a MaskConfig over `num_tokens` tokens (the same for every row)."""
    if mask_cfg.mask_length == 1:
        return num_tokens - int(num_tokens * (1 - mask_cfg.mask_prob))
    if mask_cfg.inverse_mask:
        return num_tokens - int(num_tokens * (1 - mask_cfg.mask_prob))
    return int(num_tokens * mask_cfg.mask_prob)


def make_mask(cfg, seed: int, step: int, ids: Ids, input_length: int | None = None) -> torch.Tensor:
    """The masks a Data2Vec2Config asks for, (len(ids) * clone_batch, T) bool, True = masked.

    For the data pipeline to call in loader workers and pass to the model as batch["mask"].
    input_length: samples per audio crop (speech) or tokens per sequence (text); ignored for images.
    """
    m = cfg.mask
    if cfg.modality == "image":
        grid = cfg.image.grid_size
        return image_block_mask(seed, step, ids, m.clone_batch, grid, grid, m.mask_prob, m.mask_length,
                                m.mask_prob_adjust, m.inverse_mask)
    num_tokens = cfg.num_tokens(input_length)
    if m.mask_length == 1:
        return text_random_mask(seed, step, ids, m.clone_batch, num_tokens, m.mask_prob)
    return speech_block_mask(seed, step, ids, m.clone_batch, num_tokens, m.mask_prob, m.mask_length,
                             m.mask_prob_adjust, m.inverse_mask)


def check_mask_counts(mask: torch.Tensor, num_masked_per_row: int) -> None:
    """Every row of `mask` (N, T) must hold `num_masked_per_row` True cells (the student input is dense).

    Without a host sync: on the CPU, outside torch.compile, a ValueError naming the counts found; on an
    accelerator, or inside a compiled graph, an asynchronous device assert (`torch._assert_async`), so neither
    the GPU stream stalls nor the graph breaks on a `Tensor.item()`. Meta tensors are not checked.
    """
    if mask.is_meta or mask.shape[0] == 0:
        return
    ok = (mask.sum(1) == num_masked_per_row).all()
    if mask.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(ok):
            counts = sorted(set(mask.sum(1).tolist()))
            raise ValueError(f"every mask row must have {num_masked_per_row} masked tokens, got {counts}")
    else:
        torch._assert_async(ok, f"every mask row must have {num_masked_per_row} masked tokens")


@dataclass
class MaskInfo:
    """Index form of a batch of masks with equal counts per row.

    mask:        (N, T) bool, True = masked
    ids_keep:    (N, T_keep) positions of the visible tokens, ascending
    ids_restore: (N, T) where each position sits in [visible..., masked...] order (argsort of the shuffle)
    """

    mask: torch.Tensor
    ids_keep: torch.Tensor
    ids_restore: torch.Tensor

    @classmethod
    def from_mask(cls, mask: torch.Tensor, num_masked_per_row: int) -> "MaskInfo":
        mask = mask.bool()
        check_mask_counts(mask, num_masked_per_row)
        # stable sort: visible tokens first in their original order, then the masked ones
        ids_shuffle = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        num_keep = mask.shape[1] - num_masked_per_row
        return cls(mask=mask, ids_keep=ids_shuffle[:, :num_keep], ids_restore=ids_restore)

    @property
    def num_keep(self) -> int:
        return self.ids_keep.shape[1]


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (N, T, ...) -> (N, len(ids[0]), ...) at positions ids (N, T')."""
    index = ids.reshape(ids.shape + (1,) * (x.ndim - 2)).expand(ids.shape + x.shape[2:])
    return torch.gather(x, 1, index)


def masked_positions(selected: torch.Tensor, count: int) -> torch.Tensor:
    """(B, count) positions of the selected tokens of each row, ascending, selected (B, T) bool.

    Rows with fewer than `count` selected tokens are filled with unselected positions (give them weight 0).
    A static `count` keeps the shapes independent of the data (torch.compile, the meta device).
    """
    return torch.argsort((~selected).to(torch.int8), dim=1, stable=True)[:, :count]
