"""Invariants of the seeded mask functions (model/masking.py)."""
import numpy as np
import pytest
import torch

from model.masking import (
    MaskInfo,
    image_block_mask,
    make_mask,
    num_masked,
    speech_block_mask,
    text_random_mask,
)
from model.presets import get_config

IMAGE_BASE = dict(grid_h=14, grid_w=14, mask_prob=0.8, mask_length=3, mask_prob_adjust=0.07)


def test_image_inverse_block_mask_keeps_exactly_39_of_196():
    mask = image_block_mask(seed=1, step=5, ids=[0, 1, 2, 3], num_clones=16, **IMAGE_BASE)
    assert mask.dtype == torch.bool and mask.shape == (64, 196)
    assert ((~mask).sum(1) == 39).all()  # base_images_only_task.yaml: int(196 * 0.2) visible, 157 masked


def test_image_mask_exact_counts_on_tiny_grid_and_large_setting():
    tiny = image_block_mask(0, 0, range(10), 4, 7, 7, mask_prob=0.75, mask_length=3, mask_prob_adjust=0.1)
    assert ((~tiny).sum(1) == 12).all()
    large = image_block_mask(0, 0, range(10), 4, 14, 14, mask_prob=0.75, mask_length=3, mask_prob_adjust=0.1)
    assert ((~large).sum(1) == 49).all()


@pytest.mark.parametrize("num_frames", [999, 99, 150, 37])
def test_speech_span_mask_masks_exactly_int_t_times_r(num_frames):
    mask = speech_block_mask(3, 7, [5, 9], 8, num_frames, mask_prob=0.5, mask_length=5, mask_prob_adjust=0.05)
    assert mask.shape == (16, num_frames)
    assert (mask.sum(1) == int(num_frames * 0.5)).all()


def test_text_random_mask_keeps_266_of_512():
    mask = text_random_mask(0, 0, [0, 1, 2], 8, 512, mask_prob=0.48)
    assert mask.shape == (24, 512)
    assert ((~mask).sum(1) == 266).all()


@pytest.mark.parametrize("fn", ["image", "speech", "text"])
def test_masks_are_deterministic_and_depend_on_seed_step_and_id(fn):
    def draw(seed, step, ids):
        if fn == "image":
            return image_block_mask(seed, step, ids, 4, **IMAGE_BASE)
        if fn == "speech":
            return speech_block_mask(seed, step, ids, 4, 200, 0.5, 5, 0.05)
        return text_random_mask(seed, step, ids, 4, 128, 0.48)

    reference = draw(1, 10, [3])
    assert torch.equal(reference, draw(1, 10, [3]))
    assert not torch.equal(reference, draw(2, 10, [3]))
    assert not torch.equal(reference, draw(1, 11, [3]))
    assert not torch.equal(reference, draw(1, 10, [4]))
    # a sample's masks do not depend on the batch it sits in; rows are sample-major (clone index fastest)
    batch = draw(1, 10, [7, 3])
    assert torch.equal(batch[4:8], reference)
    # the clones of one sample differ from each other
    assert len({tuple(row.tolist()) for row in reference}) == 4


def test_mask_functions_leave_global_rngs_alone():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    image_block_mask(0, 0, [1, 2], 4, **IMAGE_BASE)
    speech_block_mask(0, 0, [1, 2], 4, 99, 0.5, 5, 0.05)
    text_random_mask(0, 0, [1, 2], 4, 64, 0.5)
    assert torch.equal(torch_state, torch.get_rng_state())
    np_after = np.random.get_state()
    assert np.array_equal(np_state[1], np_after[1]) and np_state[2] == np_after[2]


def _fraction_with_same_neighbour(cells: torch.Tensor, h: int, w: int) -> float:
    """Fraction of True cells with at least one True 4-neighbour, over all rows of (N, h*w)."""
    grid = cells.reshape(-1, h, w)
    padded = torch.nn.functional.pad(grid.float(), (1, 1, 1, 1))
    neighbours = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    return float(((neighbours > 0) & grid).sum() / grid.sum())


def test_inverse_image_mask_keeps_blocks_not_scattered_patches():
    visible = ~image_block_mask(0, 0, range(50), 4, **IMAGE_BASE)
    g = torch.Generator().manual_seed(0)
    scattered = torch.zeros_like(visible)
    scattered[torch.arange(len(visible))[:, None], torch.rand(visible.shape, generator=g).argsort(1)[:, :39]] = True
    assert _fraction_with_same_neighbour(visible, 14, 14) > 0.9
    assert _fraction_with_same_neighbour(scattered, 14, 14) < 0.6


def test_inverse_means_the_blocks_mark_the_visible_patches():
    args = dict(grid_h=14, grid_w=14, mask_length=3, mask_prob_adjust=0.07)
    inverse = image_block_mask(4, 2, [0, 1], 8, mask_prob=0.8, inverse=True, **args)
    plain = image_block_mask(4, 2, [0, 1], 8, mask_prob=0.2, inverse=False, **args)
    # same draws: blocks covering 20% are visible in one and masked in the other
    assert torch.equal(inverse, ~plain)
    assert (plain.sum(1) == 39).all()


def test_speech_mask_is_made_of_spans():
    mask = speech_block_mask(0, 0, range(20), 8, 999, 0.5, 5, 0.05)
    starts = mask[:, 1:] & ~mask[:, :-1]
    runs = starts.sum() + mask[:, 0].sum()
    mean_run = float(mask.sum() / runs)
    assert mean_run > 4  # spans of 5 (merged when they overlap); a uniform 50% mask has mean run length 2


def test_block_squares_are_clamped_at_the_grid_edge():
    # one centre per row (n_c = int(36 * 0.25 / 9) = 1) on a 6x6 grid: the kept cells must contain the 3x3 square
    # around some cell, clamped to the grid (edge squares shrink; random extra cells then restore the count)
    mask = image_block_mask(0, 0, range(40), 4, 6, 6, mask_prob=0.75, mask_length=3, inverse=True)
    kept = (~mask).reshape(-1, 6, 6)

    def contains_clamped_square(row):
        for i in range(6):
            for j in range(6):
                if row[max(i - 1, 0): i + 2, max(j - 1, 0): j + 2].all():
                    return True
        return False

    assert all(contains_clamped_square(row) for row in kept)
    squares = [row.sum() == 9 and row.nonzero()[:, 0].unique().numel() == 3 for row in kept]
    assert not all(squares)  # some centres fell on the edge and their square shrank


@pytest.mark.parametrize("modality,preset,expected_masked", [
    ("image", "base", 157), ("image", "tiny", 37), ("speech", "base", 499), ("speech", "tiny", 49),
    ("text", "base", 246), ("text", "tiny", 62),
])
def test_make_mask_follows_the_preset(modality, preset, expected_masked):
    cfg = get_config(modality, preset)
    mask = make_mask(cfg, seed=0, step=3, ids=[11, 12])
    tokens = cfg.num_tokens()
    assert mask.shape == (2 * cfg.mask.clone_batch, tokens)
    assert (mask.sum(1) == expected_masked).all()
    assert num_masked(cfg.mask, tokens) == expected_masked


def test_make_mask_uses_the_cropped_length_for_speech():
    cfg = get_config("speech", "tiny")
    mask = make_mask(cfg, 0, 0, [0], input_length=16000)
    assert mask.shape == (4, 49) and (mask.sum(1) == 24).all()


def test_mask_info_indexes_visible_tokens_and_restores_order():
    mask = text_random_mask(0, 0, [0, 1], 3, 20, 0.5)
    info = MaskInfo.from_mask(mask, 10)
    assert info.num_keep == 10
    assert (~torch.gather(mask, 1, info.ids_keep)).all()
    assert (info.ids_keep.diff(dim=1) > 0).all()  # ascending positions
    masked_positions = torch.stack([row.nonzero().flatten() for row in mask])
    order = torch.cat([info.ids_keep, masked_positions], dim=1)  # [visible..., masked...]
    assert torch.equal(torch.gather(order, 1, info.ids_restore), torch.arange(20).expand(6, 20))


def test_mask_info_rejects_unequal_counts():
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, :5] = True
    mask[1, :4] = True
    with pytest.raises(ValueError, match="masked tokens"):
        MaskInfo.from_mask(mask, 5)
