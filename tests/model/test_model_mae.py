"""MAE baseline: patch order, normalized-pixel targets, masked-only MSE, the encoder sees visible patches only,
and 75% uniform random masks from make_mask."""
import math

import pytest
import torch

from model.build import build_model
from model.mae import mae_loss, patchify, pixel_targets
from model.masking import make_mask
from model.presets import get_config
from model_synthetic import batch_for


def _model():
    torch.manual_seed(0)
    return build_model(get_config("image", "tiny", "mae"))


def test_patchify_orders_patches_in_raster_order_and_pixels_row_column_channel():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    patches = patchify(images, 2)  # (2, 4 patches, 2*2*3)
    assert patches.shape == (2, 4, 12)
    # patch 1 is the top-right 2x2 block; its values are listed pixel by pixel, channels innermost (MAE)
    expected = images[1, :, 0:2, 2:4].permute(1, 2, 0).reshape(-1)
    torch.testing.assert_close(patches[1, 1], expected)
    torch.testing.assert_close(patches[0, 2], images[0, :, 2:4, 0:2].permute(1, 2, 0).reshape(-1))


def test_pixel_targets_are_normalized_per_patch_with_unbiased_variance():
    # one channel, 2x2 patches; the top-left patch holds 1, 2, 3, 4 (mean 2.5, unbiased variance 5/3)
    image = torch.tensor([[1.0, 2.0, 7.0, 7.0], [3.0, 4.0, 7.0, 7.0], [0.0, 0.0, 0.0, 2.0], [0.0, 0.0, 4.0, 6.0]])
    target = pixel_targets(image[None, None], patch_size=2, norm_pix_loss=True)  # (1, 4, 4)
    std = math.sqrt(5 / 3 + 1e-6)
    torch.testing.assert_close(target[0, 0], torch.tensor([-1.5, -0.5, 0.5, 1.5]) / std)
    torch.testing.assert_close(target[0, 1], torch.zeros(4))  # a constant patch: 0 / sqrt(eps)
    torch.testing.assert_close(target[0, 3], (torch.tensor([0.0, 2.0, 4.0, 6.0]) - 3) / math.sqrt(20 / 3 + 1e-6))
    raw = pixel_targets(image[None, None], patch_size=2, norm_pix_loss=False)
    torch.testing.assert_close(raw[0, 0], torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_loss_is_the_mse_of_masked_patches_only():
    target = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]]])  # (1, 3, 4)
    pred = torch.zeros(1, 3, 4)
    pred[0, 1] = 100.0  # a wild prediction at a visible patch does not count
    mask = torch.tensor([[True, False, True]])
    # patch 0: (1 + 4 + 9 + 16) / 4 = 7.5; patch 2: 4; mean over the two masked patches
    assert mae_loss(pred, target, mask).item() == pytest.approx((7.5 + 4.0) / 2)


def test_model_loss_equals_the_masked_mse_against_normalized_pixels():
    model = _model().eval()
    images = batch_for("image", 2)["image"]
    mask = make_mask(model.cfg, 0, 0, [0, 1])
    captured = {}

    def keep_grad(module, inputs, output):
        output.retain_grad()
        captured["pred"] = output

    model.decoder.register_forward_hook(keep_grad)
    loss, stats = model({"image": images, "mask": mask})
    pred = captured["pred"]
    assert pred.shape == (2, 49, 4 * 4 * 3)
    target = patchify(images, 4)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    expected = ((pred - target) ** 2).mean(-1)[mask].mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(stats["loss_reconstruction"], expected.detach())
    loss.backward()
    grad = pred.grad.abs().sum(-1)
    assert (grad[~mask] == 0).all() and (grad[mask] > 0).all()


def test_encoder_sees_only_the_visible_patches_and_cls():
    model = _model().eval()
    images = batch_for("image", 2)["image"]
    mask = make_mask(model.cfg, 0, 0, [0, 1])
    seen = []
    model.decoder.register_forward_hook(lambda m, inputs, o: seen.append(inputs[0]))
    model({"image": images, "mask": mask})
    assert seen[0].shape == (2, 1 + 12, 128)  # CLS + 12 of 49 patches visible
    pixel_mask = mask.reshape(2, 7, 7).repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None]  # (2, 1, 28, 28)
    model({"image": images + 5 * torch.randn_like(images) * pixel_mask, "mask": mask})
    torch.testing.assert_close(seen[1], seen[0])  # masked pixels changed, the encoder output did not
    model({"image": images + ~pixel_mask * 1.0, "mask": mask})
    assert not torch.allclose(seen[2], seen[0])


def test_masks_are_75_percent_uniform_random_like_mae_random_masking():
    cfg = get_config("image", "tiny", "mae")
    masks = make_mask(cfg, seed=0, step=0, ids=range(1000))  # (1000, 49)
    assert masks.shape == (1000, 49) and (masks.sum(1) == 49 - int(49 * 0.25)).all()  # 37 masked, 12 visible
    frequency = masks.float().mean(0)
    assert (frequency - 37 / 49).abs().max() < 0.06  # every patch equally likely
    # no block structure: two horizontally adjacent patches are masked together as often as any two patches
    grid = masks.reshape(-1, 7, 7).float()
    together = (grid[:, :, 1:] * grid[:, :, :-1]).mean().item()
    assert together == pytest.approx(37 / 49 * 36 / 48, abs=0.02)
    assert make_mask(get_config("image", "base", "mae"), 0, 0, [0]).sum().item() == 196 - 49


def test_decoder_sizes_follow_mae():
    base, tiny = get_config("image", "base", "mae").mae, get_config("image", "tiny", "mae").mae
    assert (base.decoder_depth, base.decoder_embed_dim, base.decoder_num_heads) == (8, 512, 16) and base.norm_pix_loss
    assert (tiny.decoder_depth, tiny.decoder_embed_dim) == (2, 64)
    with torch.device("meta"):
        model = build_model(get_config("image", "base", "mae"))
    block = 4 * 512 * 512 + 4 * 512 + 2 * 512 * 2048 + 2048 + 512 + 4 * 512  # attention, MLP, two LayerNorms
    # embed 768 -> 512, mask token, 8 blocks, final norm, prediction 512 -> 16 * 16 * 3 pixels
    expected = (768 * 512 + 512) + 512 + 8 * block + 2 * 512 + (512 * 768 + 768)
    assert sum(p.numel() for p in model.decoder.parameters()) == expected == 26_008_320
