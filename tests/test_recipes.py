"""The view pipeline (ViewSpec) against the equivalent torchvision sequence image by image, the
distributions of its random parameters, and every recipe's shapes and papers' parameters.

Statistical checks draw tens of thousands of samples from a seeded generator and accept a rate or
a bin count within 5 standard deviations of its expectation: a wrong probability or range (off by
a few percent) fails them, while a correct sampler passes with any seed (false alarm < 1e-5).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from selfsup.augment import Recipe, ViewSpec, available_recipes, create_recipe, ops, register_recipe
from selfsup.augment import recipes as recipes_module
from selfsup.data import load_dataset
from selfsup.errors import ConfigError

N = 40_000  # samples for the distribution checks


@pytest.fixture(scope="module")
def images(data_dir) -> torch.Tensor:
    """64 real CIFAR-10 training images, uint8 (B, 32, 32, 3)."""
    return load_dataset("cifar10", "train", data_dir=data_dir, limit=64, seed=2).images


def within(count: float, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1e-9


def assert_uniform(values: torch.Tensor, lo: float, hi: float, bins: int = 10) -> None:
    assert float(values.min()) >= lo and float(values.max()) <= hi, (float(values.min()), float(values.max()))
    counts = torch.histc(values.double(), bins=bins, min=lo, max=hi)
    assert all(within(float(c), values.numel(), 1 / bins) for c in counts), counts.tolist()


# -- the pipeline against torchvision -----------------------------------------------------------


def reference_view(spec: ViewSpec, image: torch.Tensor, p: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    """One image through torchvision.transforms.v2.functional, with sample ``i``'s parameters, in
    torchvision's order: RandomResizedCrop, RandomHorizontalFlip, RandomApply(ColorJitter) (its
    four operations in the drawn order), RandomGrayscale, GaussianBlur, RandomSolarize, Normalize;
    with ``grayscale_first``, RandomGrayscale before the jitter (InstDisc's and MoCo v1's order)."""
    top, left, height, width = (int(v) for v in p["box"][i].round().tolist())
    x = TF.resized_crop(image, top, left, height, width, [spec.size, spec.size], antialias=True)
    if p["flip"][i]:
        x = TF.horizontal_flip(x)
    if spec.grayscale_first and spec.grayscale_p > 0 and p["grayscale"][i]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if spec.jitter_p > 0 and p["jitter"][i]:
        ops_in_order = [
            (spec.brightness, TF.adjust_brightness, "brightness"),
            (spec.contrast, TF.adjust_contrast, "contrast"),
            (spec.saturation, TF.adjust_saturation, "saturation"),
            (spec.hue, TF.adjust_hue, "hue"),
        ]
        for op_index in p["order"][i].tolist():
            strength, fn, key = ops_in_order[op_index]
            if strength > 0:
                x = fn(x, float(p[key][i]))
    if not spec.grayscale_first and spec.grayscale_p > 0 and p["grayscale"][i]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if spec.blur_p > 0 and p["blur"][i]:
        k = ops.gaussian_kernel_size(spec.size, spec.blur_kernel_fraction)
        x = TF.gaussian_blur(x, [k, k], [float(p["sigma"][i])] * 2)
    if spec.solarize_p > 0 and p["solarize"][i]:
        x = TF.solarize(x, spec.solarize_threshold)
    if spec.normalize:
        x = TF.normalize(x, list(spec.mean), list(spec.std))
    return x


SPECS = {
    "simclr_cifar": create_recipe("simclr", 32).views[0],
    # Every operation switched on with probabilities that leave both branches populated.
    "all_ops": ViewSpec(size=32, jitter_p=0.7, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                        grayscale_p=0.3, blur_p=0.5, solarize_p=0.4),
    "byol_second_96": create_recipe("byol", 96).views[1],  # blur 0.1, solarize 0.2, 9 px kernel
    "local_16": ViewSpec(size=16, crop_scale=(0.05, 0.14), blur_p=0.5),  # multi-crop local view
    # MoCo v1 / InstDisc: grayscale, then ColorJitter(0.4, 0.4, 0.4, 0.4) always applied.
    "grayscale_first": ViewSpec(size=32, jitter_p=1.0, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.4,
                                grayscale_p=0.5, grayscale_first=True),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_view_pipeline_matches_torchvision_per_image(images, name: str) -> None:
    spec = SPECS[name]
    x = ops.to_float(images)
    if name.endswith("_96"):
        x = TF.resize(x, [96, 96], antialias=True).clamp(0, 1)
    params = spec.sample(x.shape[0], x.shape[2], x.shape[3], torch.Generator().manual_seed(7), x.device)
    got = spec.apply(x.clone(), params)
    want = torch.stack([reference_view(spec, x[i], params, i) for i in range(x.shape[0])])
    assert got.shape == want.shape == (x.shape[0], 3, spec.size, spec.size)
    # Same parameters, same operations: float32 rounding only (values are normalized, ~[-2, 2.7]).
    err = (got - want).abs()
    assert err.max() <= 1e-4, float(err.max())
    if name == "all_ops":  # both branches of every random choice were exercised
        for key in ("flip", "jitter", "grayscale", "blur", "solarize"):
            assert 0 < int(params[key].sum()) < x.shape[0], key


@pytest.mark.parametrize("name", sorted(SPECS))
def test_masked_rows_and_where_branches_agree(images, name: str, monkeypatch) -> None:
    # masked() computes only the selected rows on the CPU and uses torch.where on accelerators;
    # force each branch on the CPU and compare the whole pipeline.
    spec = SPECS[name]
    x = ops.to_float(images)
    if name.endswith("_96"):
        x = TF.resize(x, [96, 96], antialias=True).clamp(0, 1)
    params = spec.sample(x.shape[0], x.shape[2], x.shape[3], torch.Generator().manual_seed(8), x.device)
    monkeypatch.setattr(recipes_module, "MASK_ROWS", True)
    rows = spec.apply(x.clone(), params)
    monkeypatch.setattr(recipes_module, "MASK_ROWS", False)
    where = spec.apply(x.clone(), params)
    assert (rows - where).abs().max() <= 1e-5


def test_masked_handles_none_some_and_all_rows(monkeypatch) -> None:
    x = torch.rand(6, 3, 4, 4)
    factor = torch.linspace(0.5, 1.5, 6)
    for mask in (torch.zeros(6, dtype=torch.bool), torch.ones(6, dtype=torch.bool), torch.arange(6) % 2 == 0):
        want = torch.where(mask.view(-1, 1, 1, 1), ops.adjust_brightness(x, factor), x)
        for rows in (True, False):
            monkeypatch.setattr(recipes_module, "MASK_ROWS", rows)
            got = recipes_module.masked(mask, ops.adjust_brightness, x.clone(), factor)
            assert torch.equal(got, want), (mask.tolist(), rows)


# -- distributions of the random parameters ----------------------------------------------------


@pytest.fixture(scope="module")
def drawn() -> tuple[ViewSpec, dict[str, torch.Tensor]]:
    spec = ViewSpec(size=32, flip_p=0.3, jitter_p=0.7, brightness=0.6, contrast=0.3, saturation=1.5, hue=0.15,
                    grayscale_p=0.25, blur_p=0.4, blur_sigma=(0.2, 1.7), solarize_p=0.15)
    return spec, spec.sample(N, 32, 32, torch.Generator().manual_seed(11), torch.device("cpu"))


@pytest.mark.parametrize("key, field", [("flip", "flip_p"), ("jitter", "jitter_p"), ("grayscale", "grayscale_p"),
                                        ("blur", "blur_p"), ("solarize", "solarize_p")])
def test_coin_flips_happen_at_their_rate(drawn, key: str, field: str) -> None:
    spec, p = drawn
    assert p[key].dtype == torch.bool and p[key].shape == (N,)
    assert within(float(p[key].sum()), N, getattr(spec, field)), (key, float(p[key].float().mean()))


def test_coin_flips_are_independent_of_each_other(drawn) -> None:
    spec, p = drawn
    both = float((p["jitter"] & p["grayscale"]).sum())
    assert within(both, N, spec.jitter_p * spec.grayscale_p)


@pytest.mark.parametrize("key", ["brightness", "contrast", "saturation"])
def test_jitter_factors_are_uniform_in_one_plus_minus_strength(drawn, key: str) -> None:
    spec, p = drawn
    strength = getattr(spec, key)
    # torchvision clamps the lower end at 0 (saturation 1.5 here draws from [0, 2.5]).
    assert_uniform(p[key], max(0.0, 1 - strength), 1 + strength)


def test_hue_shift_is_uniform_in_plus_minus_hue(drawn) -> None:
    spec, p = drawn
    assert_uniform(p["hue"], -spec.hue, spec.hue)


def test_blur_sigma_is_uniform_in_its_range(drawn) -> None:
    spec, p = drawn
    assert_uniform(p["sigma"], *spec.blur_sigma)


def test_jitter_order_is_uniform_over_the_24_permutations(drawn) -> None:
    _, p = drawn
    order = p["order"]
    assert order.shape == (N, 4)
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(N, 4))  # each row a permutation
    counts = {perm: 0 for perm in itertools.permutations(range(4))}
    for row in map(tuple, order.tolist()):
        counts[row] += 1
    assert all(within(c, N, 1 / 24) for c in counts.values()), counts


def test_crop_boxes_of_a_view_lie_in_the_image_with_area_in_scale(drawn) -> None:
    spec, p = drawn
    top, left, h, w = p["box"].T
    assert bool((top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all())
    area = h * w / 32**2
    # Whole pixels on a 32 px image: a box's area can round to just below 8% (7/32 x 12/32 = 8.2%...).
    assert float(area.min()) >= 0.06 and float(area.max()) <= 1.0
    assert 0.45 < float(area.mean()) < 0.60  # U(0.08, 1) has mean 0.54; rejection lowers it slightly


def test_same_seed_same_views_other_seed_other_views(images) -> None:
    for name in available_recipes():
        recipe = create_recipe(name, 32)
        a = recipe(images[:8], torch.Generator().manual_seed(3))
        b = recipe(images[:8], torch.Generator().manual_seed(3))
        c = recipe(images[:8], torch.Generator().manual_seed(4))
        assert all(torch.equal(u, v) for u, v in zip(a, b)), name
        assert any(not torch.equal(u, v) for u, v in zip(a, c)), name


def test_views_of_one_call_differ_and_the_input_is_untouched(images) -> None:
    before = images.clone()
    views = create_recipe("simclr", 32)(images, torch.Generator().manual_seed(0))
    assert torch.equal(images, before)
    assert not torch.equal(views[0], views[1])
    # Independent parameters per sample: the per-image mean of a view varies around the original's.
    assert float((views[0] - views[1]).abs().mean()) > 0.1


# -- the recipes --------------------------------------------------------------------------------


def test_every_recipe_gives_float_views_on_the_input_device(images) -> None:
    for name in available_recipes():
        recipe = create_recipe(name, 32)
        views = recipe(images[:4], torch.Generator().manual_seed(0))
        assert len(views) >= 1, name
        for view in views:
            assert view.dtype == torch.float32 and view.device == images.device, name
            assert view.shape[0] == 4 and bool(torch.isfinite(view).all()), name


def test_simclr_cifar_and_imagenet_variants() -> None:
    # SimCLR appendix A / B.9: jitter strength s=1 on ImageNet (0.8, 0.8, 0.8, 0.2) and s=0.5 on
    # CIFAR-10, p=0.8; grayscale p=0.2; crop scale (0.08, 1), ratio (3/4, 4/3); flip;
    # Gaussian blur p=0.5, sigma in [0.1, 2], kernel 10% of the side on ImageNet only.
    small, large = create_recipe("simclr", 32), create_recipe("simclr", 224)
    assert small.num_views == large.num_views == 2
    for spec, s, blur in ((small.views[0], 0.5, 0.0), (large.views[0], 1.0, 0.5)):
        assert (spec.brightness, spec.contrast, spec.saturation, spec.hue) == pytest.approx((0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s))
        assert spec.jitter_p == 0.8 and spec.grayscale_p == 0.2 and spec.flip_p == 0.5
        assert spec.crop_scale == (0.08, 1.0) and spec.crop_ratio == pytest.approx((3 / 4, 4 / 3))
        assert spec.blur_p == blur and spec.blur_sigma == (0.1, 2.0) and spec.solarize_p == 0.0
    assert create_recipe("simclr", 64).views[0].blur_p == 0.0  # <= 64 px counts as small
    assert ops.gaussian_kernel_size(224, large.views[0].blur_kernel_fraction) == 23
    views = small(torch.zeros(3, 32, 32, 3, dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(3, 3, 32, 32)] * 2


def test_byol_views_are_asymmetric() -> None:
    # BYOL table 6: jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2, blur p=1.0 / 0.1,
    # solarization p=0.0 / 0.2.
    recipe = create_recipe("byol", 224)
    first, second = recipe.views
    assert recipe.num_views == 2 and first.count == second.count == 1
    for spec in (first, second):
        assert (spec.brightness, spec.contrast, spec.saturation, spec.hue) == (0.4, 0.4, 0.2, 0.1)
        assert spec.jitter_p == 0.8 and spec.grayscale_p == 0.2 and spec.crop_scale == (0.08, 1.0)
    assert (first.blur_p, second.blur_p) == (1.0, 0.1)
    assert (first.solarize_p, second.solarize_p) == (0.0, 0.2)
    small_first, small_second = create_recipe("byol", 32).views
    assert (small_first.blur_p, small_second.blur_p) == (0.0, 0.0)  # no blur on 32 px images
    assert (small_first.solarize_p, small_second.solarize_p) == (0.0, 0.2)
    # The drawn parameters follow each view's own rates.
    p1 = first.sample(N, 64, 64, torch.Generator().manual_seed(0), torch.device("cpu"))
    p2 = second.sample(N, 64, 64, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert bool(p1["blur"].all()) and not bool(p1["solarize"].any())
    assert within(float(p2["blur"].sum()), N, 0.1) and within(float(p2["solarize"].sum()), N, 0.2)


@pytest.mark.parametrize("size, local", [(32, 16), (224, 96)])
def test_multicrop_two_global_and_n_local_views(size: int, local: int) -> None:
    # SwAV: 2 x 224 px crops of scale (0.14, 1) and N x 96 px crops of scale (0.05, 0.14).
    recipe = create_recipe("multicrop", size, num_local=4)
    globals_, locals_ = recipe.views
    assert (globals_.count, globals_.size, globals_.crop_scale) == (2, size, (0.14, 1.0))
    assert (locals_.count, locals_.size, locals_.crop_scale) == (4, local, (0.05, 0.14))
    assert recipe.num_views == 6
    if size == 32:
        views = recipe(torch.zeros(2, 32, 32, 3, dtype=torch.uint8), torch.Generator().manual_seed(0))
        assert [tuple(v.shape) for v in views] == [(2, 3, 32, 32)] * 2 + [(2, 3, 16, 16)] * 4


@pytest.mark.parametrize("recipe", ["multicrop", "dino"])
def test_the_global_size_never_reaches_the_local_crops(recipe: str) -> None:
    """augment.size (or global_size) sets the global views' side; local views keep 96/224 of it,
    or local_size: ImageNet stored at 256 px gives SwAV's and DINO's 224 / 96 px crops."""
    views = create_recipe(recipe, 256, size=224).views
    assert views[0].size == 224 and views[-1].size == 96
    views = create_recipe(recipe, 256, global_size=224, local_size=112).views
    assert views[0].size == 224 and views[-1].size == 112
    with pytest.raises(ConfigError, match="disagree"):
        create_recipe(recipe, 256, size=224, global_size=192)


def test_cmc_lab_views_are_l_and_ab_of_one_crop(images) -> None:
    from skimage.color import rgb2lab

    recipe = create_recipe("cmc_lab", 32)
    (spec,) = recipe.views
    assert spec.crop_scale == (0.2, 1.0) and spec.jitter_p == 0.0 and not spec.normalize  # CMC's crop (0.2, 1)
    light, ab = recipe(images[:16], torch.Generator().manual_seed(5))
    assert light.shape == (16, 1, 32, 32) and ab.shape == (16, 2, 32, 32)
    # The same crop as RGB (same generator draws), converted by skimage and normalized as CMC's
    # official code does: L from [0, 100] and a, b from [-86.2, 98.2] and [-107.9, 94.5] to [-1, 1].
    rgb = Recipe("rgb", [spec])(images[:16], torch.Generator().manual_seed(5))[0]
    lab = np.stack([rgb2lab(img.permute(1, 2, 0).double().numpy()) for img in rgb]).transpose(0, 3, 1, 2)
    mean = np.array([50.0, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2]).reshape(1, 3, 1, 1)
    half = np.array([50.0, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2]).reshape(1, 3, 1, 1)
    want = (lab - mean) / half
    got = torch.cat((light, ab), dim=1).double().numpy()
    assert np.abs(got - want).max() < 1e-3
    assert -1.0 <= got[:, 0].min() and got[:, 0].max() <= 1.0


def test_cpc_patches_grid_of_overlapping_independently_augmented_patches(images) -> None:
    recipe = create_recipe("cpc_patches", 32)
    p, s = recipe.patch_size, recipe.stride
    assert (p, s) == (8, 4)  # a quarter of the side, 50% overlap: a 7 x 7 grid on 32 px (CPC)
    (view,) = recipe(images[:4], torch.Generator().manual_seed(0))
    assert view.shape == (4, 7, 7, 3, 8, 8) and view.dtype == torch.float32
    # With the per-patch augmentation reduced to brightness only (no crop, flip or normalization),
    # neighbouring patches agree on their 4 px overlap up to one brightness factor each: the ratio
    # of the overlaps is constant within a pair and differs between pairs.
    plain = dict(flip_p=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), grayscale_p=0.0, normalize=False,
                 channel_drop_p=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    (identity,) = create_recipe("cpc_patches", 32, jitter_p=0.0, **plain)(images[:4], torch.Generator().manual_seed(0))
    assert torch.equal(identity[:, :, :-1, :, :, s:], identity[:, :, 1:, :, :, :s])  # horizontal overlap
    assert torch.equal(identity[:, :-1, :, :, s:, :], identity[:, 1:, :, :, :s, :])  # vertical overlap
    (bright,) = create_recipe("cpc_patches", 32, jitter_p=1.0, brightness=0.4, **plain)(images[:4], torch.Generator().manual_seed(0))
    left, right = bright[:, :, :-1, :, :, s:], bright[:, :, 1:, :, :, :s]
    usable = (left > 0.05) & (right > 0.05) & (left < 0.95) & (right < 0.95)
    ratio = torch.where(usable, left / right.clamp_min(1e-6), torch.nan).flatten(3)
    per_pair = ratio.nanmean(dim=3)
    spread_within = (ratio - per_pair[..., None]).abs().nan_to_num(0).amax()
    assert float(spread_within) < 1e-4
    assert float(per_pair.nan_to_num(1.0).std()) > 0.05  # factors drawn in [0.6, 1.4], one per patch


def test_create_recipe_rejects_unknown_names_keys_and_values() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'simclr'"):
        create_recipe("simclrr", 32)
    with pytest.raises(ConfigError, match="Did you mean 'blur_p'"):
        create_recipe("simclr", 32, blur_pp=0.5)
    with pytest.raises(ConfigError, match="num_local"):
        create_recipe("simclr", 32, num_local=4)  # a multicrop parameter, not simclr's
    with pytest.raises(ConfigError, match="grayscale_p"):
        create_recipe("simclr", 32, grayscale_p=1.5)
    with pytest.raises(ConfigError, match="crop_scale"):
        create_recipe("byol", 32, crop_scale=(0.5, 0.2))
    assert create_recipe("simclr", 32, hue=0.0).views[0].hue == 0.0  # valid override
    assert create_recipe("multicrop", 32, num_local=2).num_views == 4


def test_recipes_reject_images_that_are_not_uint8_hwc() -> None:
    recipe = create_recipe("simclr", 32)
    with pytest.raises(ConfigError, match="uint8"):
        recipe(torch.rand(2, 32, 32, 3))
    with pytest.raises(ConfigError, match="uint8"):
        recipe(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_register_recipe_adds_a_named_builder() -> None:
    @register_recipe("test_only_gray")
    def gray(image_size: int, **overrides) -> Recipe:
        return Recipe("test_only_gray", [ViewSpec(size=image_size, grayscale_p=1.0, jitter_p=0.0, **overrides)])

    try:
        assert "test_only_gray" in available_recipes()
        (view,) = create_recipe("test_only_gray", 32, normalize=False)(torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8))
        assert torch.equal(view[:, 0], view[:, 1]) and torch.equal(view[:, 1], view[:, 2])
    finally:
        recipes_module.RECIPES.pop("test_only_gray")
