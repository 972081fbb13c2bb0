"""Each batched operation of selfsup.augment.ops against torchvision.transforms.v2.functional
applied image by image with the same parameters, on real CIFAR-10 images; and the distribution of
the random crop boxes against torchvision's RandomResizedCrop.

Tolerances (images in [0, 1]): the colour operations, grayscale, blur, solarization,
normalization and flips agree to float32 rounding (<= 1e-5, i.e. 0.003/255). The crop agrees to
5e-6 mean and 2e-5 max absolute error (0.005/255) whenever the output is at least as large as
the box (upscaling, the recipes' case) and also when downscaling against ``antialias=False``;
against torchvision's default ``antialias=True`` a downscaled crop differs by the antialiasing
filter only (measured: mean 3.9/255 on 32 -> 16 px), which is asserted as such below.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import v2

from selfsup.augment import ops
from selfsup.data import load_dataset

FLOAT_TOL = 1e-5


@pytest.fixture(scope="module")
def real(data_dir) -> torch.Tensor:
    """64 real CIFAR-10 training images as float (B, 3, 32, 32) in [0, 1]."""
    images = load_dataset("cifar10", "train", data_dir=data_dir, limit=64, seed=1).images
    return ops.to_float(images)


def per_image(fn, x: torch.Tensor, *params) -> torch.Tensor:
    """torchvision's function applied image by image with that image's parameters."""
    return torch.stack([fn(x[i], *(float(p[i]) for p in params)) for i in range(x.shape[0])])


def uniform(n: int, lo: float, hi: float, seed: int) -> torch.Tensor:
    return torch.empty(n).uniform_(lo, hi, generator=torch.Generator().manual_seed(seed))


def test_to_float_is_hwc_uint8_to_chw_unit_float() -> None:
    u8 = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    out = ops.to_float(u8)
    assert out.shape == (2, 3, 5, 7) and out.dtype == torch.float32
    assert (out - TF.to_dtype(u8.permute(0, 3, 1, 2), torch.float32, scale=True)).abs().max() <= 1e-7


@pytest.mark.parametrize(
    "name, ours, theirs, lo, hi",
    [
        ("brightness", ops.adjust_brightness, TF.adjust_brightness, 0.0, 2.0),
        ("contrast", ops.adjust_contrast, TF.adjust_contrast, 0.0, 2.0),
        ("saturation", ops.adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
        ("hue", ops.adjust_hue, TF.adjust_hue, -0.5, 0.5),
    ],
)
def test_colour_jitter_ops_match_torchvision(real, name, ours, theirs, lo, hi) -> None:
    factor = uniform(real.shape[0], lo, hi, seed=len(name))
    factor[:2] = torch.tensor([lo, hi])  # the ends of the range too
    got = ours(real.clone(), factor)
    want = per_image(theirs, real, factor)
    assert got.shape == real.shape
    assert (got - want).abs().max() <= FLOAT_TOL, name


def test_hue_handles_gray_and_saturated_pixels(real) -> None:
    # Gray pixels (no chroma), pure primaries and each channel-max branch of the HSV formula.
    special = torch.tensor(
        [[0.5, 0.5, 0.5], [0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0.2, 0.9, 0.9], [0.9, 0.9, 0.2]]
    )
    x = special.T.reshape(1, 3, 3, 3).expand(5, -1, -1, -1).contiguous()
    factor = torch.tensor([-0.5, -0.2, 0.0, 0.3, 0.5])
    got = ops.adjust_hue(x, factor)
    want = per_image(TF.adjust_hue, x, factor)
    assert (got - want).abs().max() <= FLOAT_TOL


def test_grayscale_matches_torchvision(real) -> None:
    got = ops.rgb_to_grayscale(real)
    want = torch.stack([TF.rgb_to_grayscale(img, num_output_channels=1) for img in real])
    assert got.shape == (real.shape[0], 1, 32, 32)
    assert (got - want).abs().max() <= FLOAT_TOL


@pytest.mark.parametrize("size, kernel", [(32, 3), (32, 5), (96, 9)])
def test_gaussian_blur_matches_torchvision(real, size: int, kernel: int) -> None:
    x = real[:16] if size == 32 else TF.resize(real[:16], [size, size], antialias=True).clamp(0, 1)
    sigma = uniform(16, 0.1, 2.0, seed=kernel)
    got = ops.gaussian_blur(x, kernel, sigma)
    want = torch.stack([TF.gaussian_blur(x[i], [kernel, kernel], [float(sigma[i])] * 2) for i in range(16)])
    assert (got - want).abs().max() <= FLOAT_TOL


def test_gaussian_kernel_size_is_a_tenth_of_the_side_and_odd() -> None:
    # SimCLR: "kernel size is 10% of the image height/width" -> 23 at 224 (torchvision's usual 23).
    assert ops.gaussian_kernel_size(224) == 23
    assert ops.gaussian_kernel_size(96) == 9
    assert ops.gaussian_kernel_size(32) == 3
    assert all(ops.gaussian_kernel_size(s) % 2 == 1 for s in range(1, 300))


def test_solarize_matches_torchvision(real) -> None:
    for threshold in (0.5, 0.25):
        got = ops.solarize(real, threshold)
        want = torch.stack([TF.solarize(img, threshold) for img in real])
        assert torch.equal(got, want)
    assert not torch.equal(ops.solarize(real, 0.5), real)


def test_normalize_matches_torchvision(real) -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = ops.normalize(real, mean, std)
    want = torch.stack([TF.normalize(img, list(mean), list(std)) for img in real])
    assert (got - want).abs().max() <= FLOAT_TOL


def test_hflip_matches_torchvision(real) -> None:
    mask = torch.arange(real.shape[0]) % 3 == 0
    got = ops.hflip(real, mask)
    want = torch.stack([TF.horizontal_flip(img) if m else img for img, m in zip(real, mask)])
    assert torch.equal(got, want)


def crop_reference(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    out = []
    for img, box, f in zip(x, boxes.round().long().tolist(), flip.tolist()):
        view = TF.resized_crop(img, *box, [size, size], antialias=antialias)
        out.append(TF.horizontal_flip(view) if f else view)
    return torch.stack(out)


@pytest.mark.parametrize(
    "size, scale",
    [(32, (0.08, 1.0)), (16, (0.05, 0.14)), (48, (0.08, 1.0))],  # SimCLR, multi-crop local, upscaled output
)
def test_resized_crop_with_flip_matches_torchvision_when_upscaling(real, size, scale) -> None:
    g = torch.Generator().manual_seed(size)
    boxes = ops.sample_crop_boxes(real.shape[0], 32, 32, scale, (3 / 4, 4 / 3), g)
    assert bool((boxes[:, 2] <= size).all() and (boxes[:, 3] <= size).all())  # really upscaling
    flip = torch.rand(real.shape[0], generator=g) < 0.5
    got = ops.resized_crop(real, boxes, size, flip)
    for antialias in (False, True):  # identical when upscaling: the filter only acts on downscaling
        err = (got - crop_reference(real, boxes, flip, size, antialias)).abs()
        assert err.mean() <= 5e-6 and err.max() <= 2e-5, (antialias, float(err.mean()), float(err.max()))


def test_resized_crop_when_downscaling_differs_only_by_antialiasing(real) -> None:
    g = torch.Generator().manual_seed(3)
    boxes = ops.sample_crop_boxes(real.shape[0], 32, 32, (0.5, 1.0), (3 / 4, 4 / 3), g)
    flip = torch.rand(real.shape[0], generator=g) < 0.5
    got = ops.resized_crop(real, boxes, 16, flip)
    exact = (got - crop_reference(real, boxes, flip, 16, antialias=False)).abs()
    assert exact.max() <= 1e-5
    filtered = (got - crop_reference(real, boxes, flip, 16, antialias=True)).abs()
    # The antialiasing filter of torchvision's default changes the result noticeably (3.9/255 mean
    # measured), but a downscaled crop is still the same picture (well under 8/255 on average).
    assert 1 / 255 < filtered.mean() < 8 / 255


def test_resized_crop_of_the_whole_image_is_the_identity(real) -> None:
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0]]).expand(real.shape[0], -1)
    assert (ops.resized_crop(real, boxes, 32) - real).abs().max() <= 1e-6


# -- the random crop boxes ---------------------------------------------------------------------


def within(count: float, n: int, p: float, sigmas: float = 5.0) -> bool:
    """``count`` successes of ``n`` Bernoulli(p) trials lie within ``sigmas`` standard deviations."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1e-9


def test_crop_area_and_log_aspect_are_uniform_when_no_attempt_fails() -> None:
    # On a large image with scale <= 0.5 every first attempt is valid, so the boxes show the raw
    # distributions: area fraction ~ U(scale), log aspect ratio ~ U(log ratio).
    n, side, scale, ratio = 40_000, 1000, (0.08, 0.5), (3 / 4, 4 / 3)
    boxes = ops.sample_crop_boxes(n, side, side, scale, ratio, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.T
    assert bool((top >= 0).all() and (left >= 0).all() and (top + h <= side).all() and (left + w <= side).all())
    area = h * w / side**2
    log_aspect = torch.log(w / h)
    # Rounding to whole pixels moves the area by < 0.2% and the log aspect by < 0.005 here.
    assert area.min() >= scale[0] - 2e-3 and area.max() <= scale[1] + 2e-3
    assert log_aspect.min() >= math.log(ratio[0]) - 5e-3 and log_aspect.max() <= math.log(ratio[1]) + 5e-3
    for values, (lo, hi) in ((area, scale), (log_aspect, (math.log(ratio[0]), math.log(ratio[1])))):
        counts = torch.histc(values.clamp(lo, hi), bins=10, min=lo, max=hi)
        assert all(within(float(c), n, 0.1) for c in counts), counts
    # The position is uniform over the valid range: top / (side - h) ~ U(0, 1).
    rel = top / (side - h)
    counts = torch.histc(rel, bins=10, min=0, max=1)
    assert all(within(float(c), n, 0.1) for c in counts), counts


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.9, 1.0)])  # rare and frequent fallbacks
def test_crop_boxes_follow_torchvision_random_resized_crop(scale) -> None:
    # Same distribution as torchvision's 10-attempt algorithm, fallback included: compare the
    # means of the box coordinates and the rate of the full-image box between the two samplers.
    n, ratio = 8000, (3 / 4, 4 / 3)
    ours = ops.sample_crop_boxes(n, 32, 32, scale, ratio, torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    transform = v2.RandomResizedCrop(32, scale=scale, ratio=ratio)
    probe = [torch.zeros(3, 32, 32)]
    theirs = torch.tensor(
        [[p["top"], p["left"], p["height"], p["width"]] for p in (transform.make_params(probe) for _ in range(n))],
        dtype=torch.float32,
    )
    for k in range(4):
        a, b = ours[:, k], theirs[:, k]
        se = math.sqrt(a.var() / n + b.var() / n)
        assert abs(a.mean() - b.mean()) <= 5 * se + 1e-6, (k, float(a.mean()), float(b.mean()))
    full_ours = float(((ours[:, 2] == 32) & (ours[:, 3] == 32)).float().mean())
    full_theirs = float(((theirs[:, 2] == 32) & (theirs[:, 3] == 32)).float().mean())
    p = (full_ours + full_theirs) / 2
    assert abs(full_ours - full_theirs) <= 5 * math.sqrt(2 * p * (1 - p) / n) + 1e-9
    if scale[0] == 0.9:
        assert full_theirs > 0.05  # this setting really exercises the fallback


def test_crop_fallback_is_torchvision_centre_crop() -> None:
    # A 8 x 32 image can never hold a box of >= 90% of its area with aspect in [3/4, 4/3]: all 10
    # attempts fail and both samplers return the centre crop with the aspect ratio clamped.
    ours = ops.sample_crop_boxes(50, 8, 32, (0.9, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    p = v2.RandomResizedCrop(8, scale=(0.9, 1.0)).make_params([torch.zeros(3, 8, 32)])
    assert ours.tolist() == [[p["top"], p["left"], p["height"], p["width"]]] * 50
    tall = ops.sample_crop_boxes(4, 40, 8, (0.9, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    p = v2.RandomResizedCrop(8, scale=(0.9, 1.0)).make_params([torch.zeros(3, 40, 8)])
    assert tall.tolist() == [[p["top"], p["left"], p["height"], p["width"]]] * 4


def test_crop_boxes_are_reproducible_from_the_generator() -> None:
    a = ops.sample_crop_boxes(100, 32, 32, (0.08, 1), (3 / 4, 4 / 3), torch.Generator().manual_seed(5))
    b = ops.sample_crop_boxes(100, 32, 32, (0.08, 1), (3 / 4, 4 / 3), torch.Generator().manual_seed(5))
    c = ops.sample_crop_boxes(100, 32, 32, (0.08, 1), (3 / 4, 4 / 3), torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# -- CIE Lab (CMC) ------------------------------------------------------------------------------


def test_rgb_to_lab_matches_skimage(real) -> None:
    from skimage.color import rgb2lab

    got = ops.rgb_to_lab(real)
    want = np.stack([rgb2lab(img.permute(1, 2, 0).double().numpy()) for img in real]).transpose(0, 3, 1, 2)
    # skimage's constants (0.008856, 7.787) round the CIE ones (216/24389, 24389/27/116): < 0.01.
    assert np.abs(got.double().numpy() - want).max() < 0.01
    assert 0 <= float(got[:, 0].min()) and float(got[:, 0].max()) <= 100


def test_lab_to_rgb_inverts_rgb_to_lab(real) -> None:
    assert (ops.lab_to_rgb(ops.rgb_to_lab(real)) - real).abs().max() < 1e-4


def test_ops_record_no_autograd_history_in_recipes() -> None:
    from selfsup.augment import create_recipe

    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    with torch.enable_grad():
        views = create_recipe("simclr", 32)(images, torch.Generator().manual_seed(0))
    assert all(not v.requires_grad and v.grad_fn is None for v in views)
