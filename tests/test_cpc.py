"""CPC: the loss against its formula, the causal context, the patch grid, the probe representation
(van den Oord et al. 2018, arXiv 1807.03748; Hénaff et al. 2019, arXiv 1905.09272)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup import methods
from selfsup.augment import create_recipe
from selfsup.augment.recipes import IMAGENET_MEAN, IMAGENET_STD, cpc_geometry, drop_channels
from selfsup.engine import TrainConfig
from selfsup.errors import ConfigError
from selfsup.losses import cpc_loss
from selfsup.nn.context import orient
from selfsup.nn import create_backbone

from .learning import assert_learns


def cpc_reference(predictions: torch.Tensor, targets: torch.Tensor, offset: int) -> float:
    """The InfoNCE of CPC (v1 eq. 4, v2 eq. 3), loop by loop in float64: for every context (b, i, j)
    and step k with a target inside the grid, -log of the softmax of the dot product with the
    feature k rows below among the dot products with every feature of the batch; the mean."""
    p, z = predictions.double(), targets.double()
    batch, steps, _, height, width = p.shape
    everything = [(n, u, v) for n in range(z.shape[0]) for u in range(height) for v in range(width)]
    terms = []
    for b in range(batch):
        for k in range(1, steps + 1):
            for i in range(height - k):
                for j in range(width):
                    pred = p[b, k - 1, :, i, j]
                    positive = math.exp(float(pred @ z[offset + b, :, i + k, j]))
                    total = sum(math.exp(float(pred @ z[n, :, u, v])) for n, u, v in everything)
                    terms.append(-math.log(positive / total))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("offset", [0, 1])
def test_cpc_loss_matches_formula_on_fixed_inputs(offset: int) -> None:
    g = torch.Generator().manual_seed(0)
    targets = torch.randn(3, 4, 5, 3, generator=g)  # N=3 images, D=4, a 5x3 grid
    predictions = 0.7 * torch.randn(2, 3, 4, 5, 3, generator=g)  # the 2 images at offset, K=3
    expected = cpc_reference(predictions, targets, offset)
    assert float(cpc_loss(predictions, targets, offset)) == pytest.approx(expected, rel=1e-5)


def _orthonormal_grid(n: int, height: int, width: int) -> torch.Tensor:
    """Features that are distinct unit vectors: z[n, :, u, v] = e_{(n*H + u)*W + v}."""
    dim = n * height * width
    return torch.eye(dim).view(n, height, width, dim).permute(0, 3, 1, 2).contiguous()


def test_cpc_loss_scores_step_k_against_the_feature_k_rows_below() -> None:
    batch, steps, height, width = 2, 2, 4, 3
    z = _orthonormal_grid(batch, height, width)
    right = torch.zeros(batch, steps, z.shape[1], height, width)
    for k in range(1, steps + 1):
        right[:, k - 1, :, : height - k] = 20 * z[:, :, k:]  # each prediction is its target, scaled
    # Positive logit 20, every other logit 0: the loss is log(1 + 23 exp(-20)).
    assert float(cpc_loss(right, z)) == pytest.approx(math.log1p(23 * math.exp(-20)), abs=1e-6)
    # The same predictions filed under the wrong step: each now points at a negative (-> loss 20).
    assert float(cpc_loss(right.flip(1), z)) > 10
    # Predicting the context's own row instead of a row below is as wrong.
    own_row = torch.zeros_like(right)
    own_row[:, 0] = 20 * z
    own_row[:, 1] = 20 * z
    assert float(cpc_loss(own_row, z)) > 15


def test_cpc_loss_negatives_include_other_positions_and_other_images() -> None:
    z = _orthonormal_grid(2, 3, 2)
    for n, u, v in [(0, 0, 1), (0, 2, 0), (1, 1, 1)]:  # other position same image, other images
        pred = torch.zeros(1, 1, z.shape[1], 3, 2)
        pred[0, 0, :, 0, 0] = 10 * z[0, :, 1, 0]  # context (0, 0, 0) predicts its target...
        pred[0, 0, :, 0, 0] += 10 * z[n, :, u, v]  # ...and as strongly one other feature
        pred[0, 0, :, 1, :] = 10 * z[0, :, 2, :]
        pred[0, 0, :, 0, 1] = 10 * z[0, :, 1, 1]
        # The tie between the positive and that negative costs log 2 on one of the 4 terms.
        assert float(cpc_loss(pred, z)) == pytest.approx(math.log(2) / 4, abs=1e-3)


def test_cpc_loss_slices_average_to_the_whole_batch_and_compute_in_float32() -> None:
    # The distributed form: each rank's predictions against the gathered features, averaged.
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 6, 4, 4, generator=g)
    p = torch.randn(4, 2, 6, 4, 4, generator=g)
    whole = cpc_loss(p, z)
    halves = [cpc_loss(p[i : i + 2], z, i) for i in (0, 2)]
    assert float(sum(halves) / 2) == pytest.approx(float(whole), rel=1e-6)
    assert cpc_loss(p.bfloat16(), z.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError):
        cpc_loss(torch.randn(1, 4, 6, 4, 4), z)  # 4 steps on a 4-row grid leave nothing to predict


def _method(norm: str = "ln", **config) -> methods.Method:
    torch.manual_seed(0)
    return methods.create("cpc", backbone=create_backbone("tiny", 32, width=8, norm=norm), **config)


@pytest.mark.parametrize("row", [0, 2, 5])
def test_context_at_row_r_does_not_depend_on_rows_below(row: int) -> None:
    method = _method()
    z = torch.randn(2, method.feature_dim, 7, 5, requires_grad=True)
    context = method.context["down"](z)
    (context[:, :, row] * torch.randn_like(context[:, :, row])).sum().backward()
    grad = z.grad.abs().sum(dim=(0, 1, 3))  # per row
    assert torch.all(grad[row + 1 :] == 0), grad
    # ...while it does see its own row and every row above (5 blocks reach 5 rows up).
    assert torch.all(grad[max(0, row - 5) : row + 1] > 0), grad


def test_predictions_do_not_see_patches_below_with_layer_norm_but_do_with_batch_norm() -> None:
    # CPC v2 (section 4.1): batch statistics connect patches, a path around the causal mask.
    for norm, leaks in (("ln", False), ("bn", True)):
        method = _method(norm).train()
        torch.nn.init.normal_(method.predictors["down"].weight)  # near zero at init: make the paths visible
        patches = torch.randn(3, 6, 4, 3, 8, 8, requires_grad=True)
        z = method.encode(patches)
        predictions = method.predictors["down"](method.context["down"](z))
        predictions[:, :, 2].sum().backward()
        below = float(patches.grad[:, 3:].abs().sum())
        assert (below > 0) == leaks, (norm, below)
        assert float(patches.grad[:, :3].abs().sum()) > 0


def test_other_directions_read_the_grid_from_their_own_side() -> None:
    method = _method(directions=("down", "up", "right", "left"))
    z = torch.randn(2, method.feature_dim, 5, 5, requires_grad=True)
    # In original coordinates, the context at row/column 2 may only see rows/columns on its side.
    sees = {"down": (slice(0, 3), slice(None)), "up": (slice(2, 5), slice(None)),
            "right": (slice(None), slice(0, 3)), "left": (slice(None), slice(2, 5))}
    for direction, (rows, cols) in sees.items():
        z.grad = None
        method.context[direction](orient(z, direction))[:, :, 2].sum().backward()
        outside = z.grad.clone()
        outside[:, :, rows, cols] = 0
        assert float(outside.abs().sum()) == 0 and float(z.grad.abs().sum()) > 0, direction
    views = create_views(method, torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8))
    assert math.isfinite(float(method(views)["loss"]))


def create_views(method: methods.Method, images: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    choice = method.default_recipe(images.shape[1])
    return create_recipe(choice.name, images.shape[1], **choice.overrides)(images, torch.Generator().manual_seed(seed))


def test_patch_grid_geometry_follows_the_papers() -> None:
    assert cpc_geometry(32) == (8, 4, 7)  # CIFAR: CPC v1's quarter-size patches, 50% overlap (Bolts: same)
    assert cpc_geometry(64) == (16, 8, 7)
    assert cpc_geometry(260) == (80, 36, 6)  # CPC v2: 80 px patches every 36 px of a 260 px crop
    assert cpc_geometry(224) == (69, 31, 6)
    assert cpc_geometry(32, 8, 8) == (8, 8, 4)
    with pytest.raises(ConfigError):
        cpc_geometry(32, 40)


def test_recipe_views_and_parameters() -> None:
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    recipe = create_recipe("cpc_patches", 32)
    (view,) = recipe(images, torch.Generator().manual_seed(0))
    assert view.shape == (3, 7, 7, 3, 8, 8) and recipe.grid_shape() == (7, 7)
    whole, patch = recipe.views
    assert whole.crop_scale == pytest.approx(((260 / 300) ** 2,) * 2) and whole.crop_ratio == (1.0, 1.0)
    assert not whole.normalize and whole.jitter_p == 0
    assert (patch.crop_scale, patch.jitter_p, patch.grayscale_p, patch.flip_p) == ((0.6, 1.0), 0.8, 0.25, 0.5)
    assert recipe.channel_drop_p == 0.5
    (up,) = create_recipe("cpc_patches", 32, size=16)(images)
    assert up.shape == (3, 7, 7, 3, 16, 16)  # patches upsampled for a backbone that needs more pixels
    # Same seed, same views (one generator drives every random choice).
    again = recipe(images, torch.Generator().manual_seed(0))[0]
    assert torch.equal(view, again)


def test_colour_dropping_keeps_one_channel_and_silences_the_others() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=g)
    assert torch.equal(drop_channels(x, 0.0, 0.01, g), x)
    out = drop_channels(x, 1.0, 0.01, g)
    same = (out == x).flatten(2).all(dim=2)  # (N, 3): which channels are untouched
    assert torch.all(same.sum(dim=1) == 1)
    assert len(set(same.float().argmax(dim=1).tolist())) == 3  # the kept channel is random
    dropped = out[~same]
    assert float(dropped.abs().max()) < 0.1  # noise of 1% of the kept channel's std (about 1)


def test_eval_transform_cuts_the_training_grid_without_augmentation() -> None:
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    method = _method()
    grid = method.eval_transform(images)
    assert grid.shape == (2, 7, 7, 3, 8, 8)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    whole = (images.permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert torch.allclose(grid[1, 2, 5], whole[1, :, 8:16, 20:28], atol=1e-6)
    upsampled = _method(patch_input_size=16).eval_transform(images)
    assert upsampled.shape == (2, 7, 7, 3, 16, 16)
    expected = F.interpolate(whole[:, :, 8:16, 20:28], size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(upsampled[:, 2, 5], expected, atol=1e-6)


def test_representation_is_the_mean_pooled_patch_grid() -> None:
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    method = _method().eval()
    grid = method.eval_transform(images)
    features = method.representation(grid)
    assert features.shape == (3, method.feature_dim)
    assert torch.allclose(features, method.encode(grid).mean(dim=(2, 3)))
    single = method.backbone(grid[:, 3, 4])  # each cell is the backbone's vector of one patch
    assert torch.allclose(method.encode(grid)[:, :, 3, 4], single, atol=1e-6)
    # Whole normalized images are cut into the same grid first.
    whole = (images.permute(0, 3, 1, 2).float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(method.representation(whole), features, atol=1e-6)


def test_engine_gives_cpc_layer_norm_and_its_paper_optimizer() -> None:
    config = TrainConfig(method="cpc", backbone="tiny", data="digits").resolve()
    assert config.backbone_args == {"norm": "ln"}
    assert (config.optimizer, config.lr, config.weight_decay) == ("adamw", 2e-4, 0.0)
    explicit = TrainConfig(method="cpc", backbone="tiny", data="digits", backbone_args={"norm": "bn"}).resolve()
    assert explicit.backbone_args == {"norm": "bn"}  # the user's choice wins
    assert TrainConfig(method="simclr", backbone="tiny", data="digits").resolve().backbone_args == {}
    with pytest.raises(ConfigError):
        create_backbone("vit_tiny", 32, norm="bn")


def test_cpc_refuses_views_its_probes_would_not_cut() -> None:
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    method = _method()
    method.default_recipe(32)
    other = create_recipe("cpc_patches", 32, patch_size=8, stride=8)(images)  # augment.stride=8 behind its back
    with pytest.raises(ConfigError, match="method.patch_size"):
        method(other)
    with pytest.raises(ConfigError, match="cpc_patches"):
        method([torch.randn(2, 3, 32, 32)])
    too_far = _method(prediction_steps=7)
    with pytest.raises(ConfigError, match="prediction_steps"):
        too_far(create_views(too_far, images))
    with pytest.raises(ConfigError):
        _method(directions=("down", "diagonal"))


@pytest.mark.slow
def test_cpc_beats_random_init_on_cifar10(tmp_path) -> None:
    # Tiny backbone (layer norm, the method's default), the default 7x7 grid of 8 px patches, K=5,
    # 3 epochs of 5,000 training images in batches of 64 (234 steps); kNN of the mean-pooled patch
    # grid on 2,000 test images. CPC costs 2-3x SimCLR per image on this CPU (49 patches per image,
    # and a (64*49*20) x (64*49) score matrix per step), so the batch is 64 rather than SimCLR's
    # 256: at 256 the score matrix (35,840 x 12,544) costs more than the encoder. Learning rate:
    # AdamW 5e-4 (base 2e-3 per 256 under linear scaling) instead of the paper's 2e-4 per 256,
    # which would be 5e-5 at batch 64 and learn too little in 234 steps; at base 4e-3 the float32
    # gains were +4.35 and +2.1 (more spread, closer to the lr at which the features collapsed).
    # A run whose encoder collapsed (random predictors at init, docs/cpc.md) measured -4.6 points.
    # Pinned: top-down prediction only (CPC v1's), the default when the margin was first measured;
    # the method now defaults to v2's four directions (four times the context and score cost).
    assert_learns("cpc", tmp_path)  # seeds, gains, spread, margin: EVIDENCE["cpc"] (tests/learning.py)
