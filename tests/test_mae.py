"""MAE (He et al. 2021, arXiv 2111.06377): the loss against its formula, the masking, an encoder
that sees only the visible patches, the fixed position embeddings, and the report's reconstructions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfsup import methods
from selfsup.errors import ConfigError
from selfsup.losses import mae_loss
from selfsup.nn import create_backbone
from selfsup.nn.masking import encode_visible, patchify, random_masking, sincos_pos_embed_2d, unpatchify

SMALL = {"depth": 2, "embed_dim": 48, "num_heads": 3}
DECODER = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}


def small_mae(**config) -> methods.Method:  # noqa: ANN003
    torch.manual_seed(0)
    return methods.create("mae", backbone=create_backbone("vit_tiny", 32, **SMALL), **{**DECODER, **config})


def mae_loss_reference(prediction: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor, normalize: bool) -> float:
    """The official forward_loss, patch by patch in float64."""
    total, count = 0.0, 0
    for n in range(patches.shape[0]):
        for l in range(patches.shape[1]):
            if not mask[n, l]:
                continue
            x = patches[n, l].double().tolist()
            if normalize:
                mean = sum(x) / len(x)
                var = sum((v - mean) ** 2 for v in x) / (len(x) - 1)
                x = [(v - mean) / math.sqrt(var + 1e-6) for v in x]
            p = prediction[n, l].double().tolist()
            total += sum((a - b) ** 2 for a, b in zip(p, x)) / len(x)
            count += 1
    return total / count


@pytest.mark.parametrize("normalize", [True, False])
def test_mae_loss_matches_the_formula_on_masked_patches_only(normalize: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    patches = 3 * torch.randn(3, 8, 12, generator=generator) + 1
    prediction = torch.randn(3, 8, 12, generator=generator)
    mask = (torch.rand(3, 8, generator=generator) < 0.75).float()
    expected = mae_loss_reference(prediction, patches, mask, normalize)
    assert float(mae_loss(prediction, patches, mask, normalize)) == pytest.approx(expected, rel=1e-5)
    # The visible patches do not count: changing their prediction changes nothing.
    changed = prediction + 5 * (1 - mask).unsqueeze(-1)
    assert float(mae_loss(changed, patches, mask, normalize)) == pytest.approx(expected, rel=1e-5)


def test_patchify_orders_patches_row_major_and_pixels_row_column_channel() -> None:
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = patchify(images, 4)
    assert patches.shape == (2, 4, 48)
    # Patch 1 is the top-right one; its 6th value is row 0, column 2, channel 0 (2 * 3 + 0).
    assert float(patches[1, 1, 6]) == float(images[1, 0, 0, 4 + 2])
    assert float(patches[0, 2, 3 * (4 * 1 + 3) + 2]) == float(images[0, 2, 4 + 1, 3])
    assert torch.equal(unpatchify(patches, 4), images)
    with pytest.raises(ConfigError, match="do not split"):
        patchify(torch.zeros(1, 3, 10, 10), 4)


def test_random_masking_keeps_the_lowest_noise_patches_of_each_sample() -> None:
    noise = torch.rand(5, 64, generator=torch.Generator().manual_seed(1))
    ids_keep, mask, ids_restore = random_masking(noise, 0.75)
    assert ids_keep.shape == (5, 16) and mask.shape == (5, 64)
    assert torch.equal(mask.sum(dim=1), torch.full((5,), 48.0))
    for n in range(5):
        kept = set(ids_keep[n].tolist())
        assert kept == set(noise[n].argsort()[:16].tolist())
        assert all(mask[n, i] == (0 if i in kept else 1) for i in range(64))
    # ids_restore undoes the shuffle: the [visible; masked] sequence back in patch order.
    shuffled = torch.argsort(noise, dim=1)
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), torch.arange(64).expand(5, 64))
    assert len({tuple(ids_keep[n].sort().values.tolist()) for n in range(5)}) == 5  # per-sample masks


def test_sincos_pos_embed_matches_the_official_formula() -> None:
    dim, grid = 16, 3
    table = sincos_pos_embed_2d(dim, grid)
    assert table.shape == (1 + grid * grid, dim) and torch.equal(table[0], torch.zeros(dim))  # [CLS]: zeros
    for row in range(grid):
        for col in range(grid):
            expected = []
            for position in (col, row):  # get_2d_sincos_pos_embed: meshgrid(w, h), the column first
                omegas = [1.0 / 10000 ** (k / (dim / 4)) for k in range(dim // 4)]
                expected += [math.sin(position * w) for w in omegas] + [math.cos(position * w) for w in omegas]
            assert table[1 + row * grid + col].tolist() == pytest.approx(expected, abs=1e-6)


def test_encoder_on_all_patches_is_the_vits_own_forward_and_ignores_masked_pixels() -> None:
    method = small_mae().eval()
    body = method.backbone.body
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        everything = encode_visible(body, images, torch.arange(64).expand(4, 64))
        assert torch.allclose(everything, body.forward_features(images), atol=1e-5)
        # [CLS] after the final norm is what the probes read: the backbone's normal forward.
        assert torch.allclose(method.representation(images), everything[:, 0], atol=1e-5)
        # The encoder sees the visible 25% only: repainting the masked patches changes nothing.
        ids_keep, mask, _ = random_masking(torch.rand(4, 64, generator=torch.Generator().manual_seed(3)), 0.75)
        latent = encode_visible(body, images, ids_keep)
        assert latent.shape == (4, 1 + 16, 48)
        repainted = unpatchify(patchify(images, 4) + 10 * mask.unsqueeze(-1), 4)
        assert torch.allclose(encode_visible(body, repainted, ids_keep), latent, atol=1e-5)
        assert not torch.allclose(encode_visible(body, repainted, torch.arange(16).expand(4, 16)), latent, atol=1e-2)


def test_position_embeddings_are_fixed_sincos_and_the_decoder_predicts_pixels() -> None:
    method = small_mae()
    body = method.backbone.body
    assert not body.pos_embed.requires_grad
    assert torch.allclose(body.pos_embed[0], sincos_pos_embed_2d(48, 8))
    assert method.decoder.predict.out_features == 4 * 4 * 3
    learned = small_mae(sincos_pos_embed=False).backbone.body.pos_embed
    assert learned.requires_grad and not torch.allclose(learned[0], sincos_pos_embed_2d(48, 8))
    # Only trainable parameters are optimized: the fixed table is not among them.
    trainable = {id(p) for group in method.param_groups() for p in group["params"]}
    assert id(body.pos_embed) not in trainable


def test_training_steps_lower_the_reconstruction_loss() -> None:
    method = small_mae()
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    noise = torch.rand(16, 64, generator=torch.Generator().manual_seed(5))
    first = None
    for _ in range(15):
        loss, _, _ = method.masked_forward(images, noise)
        first = float(loss) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(method.masked_forward(images, noise)[0]) < 0.8 * first


def test_mae_refuses_a_backbone_without_patch_tokens_and_bad_settings() -> None:
    with pytest.raises(ConfigError, match="ViT"):
        methods.create("mae", backbone=create_backbone("tiny", 32))
    for bad in ({"mask_ratio": 1.0}, {"decoder_dim": 30}, {"decoder_heads": 0}):
        with pytest.raises(ConfigError):
            small_mae(**bad)
    with pytest.raises(ConfigError, match="global_pool"):
        methods.create("mae", backbone=create_backbone("vit_tiny", 32, **SMALL, global_pool="avg"), **DECODER)


def test_mae_defaults_to_a_vit_and_adamw_with_its_betas(tmp_path, data_dir) -> None:
    from selfsup.engine import TrainConfig, Trainer

    resolved = TrainConfig(method="mae", data="cifar10").resolve()
    assert resolved.backbone == "vit_small" and resolved.optimizer == "adamw"
    assert tuple(resolved.adamw_betas) == (0.9, 0.95) and resolved.lr == pytest.approx(1.5e-4)
    assert tuple(TrainConfig(method="dino", data="cifar10").resolve().adamw_betas) == (0.9, 0.999)
    with pytest.raises(ConfigError, match="adamw_betas"):
        TrainConfig(method="mae", adamw_betas=(0.9, 1.5)).resolve()
    trainer = Trainer(TrainConfig(
        method="mae", method_args=DECODER, backbone="vit_tiny", backbone_args=SMALL, data="cifar10", data_dir=str(data_dir),
        train_subset=16, batch_size=16, epochs=1, run_dir=str(tmp_path), name="betas", progress=False, device="cpu",
    ))
    try:
        assert {tuple(group["betas"]) for group in trainer.optimizer.param_groups} == {(0.9, 0.95)}
    finally:
        trainer.close()


def test_report_images_show_the_masked_input_its_reconstruction_and_the_original() -> None:
    method = small_mae().eval()
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    title, columns = method.report_images(images)
    assert "75%" in title and list(columns) == ["masked input", "reconstruction", "original"]
    masked, reconstruction, original = (columns[k].int() for k in columns)
    assert torch.equal(original, images.int())
    # Per 4x4 patch: visible patches are the original's in both pictures (up to rounding through
    # the normalization); masked ones are grey in the input and predicted in the reconstruction.
    grey = torch.tensor([round(0.5 * 255)] * 3)
    patch_masked = (masked.reshape(3, 8, 4, 8, 4, 3) == grey).all(dim=(2, 4, 5))
    visible = (masked - original).abs().reshape(3, 8, 4, 8, 4, 3).amax(dim=(2, 4, 5)) <= 1
    assert int(patch_masked.sum()) == 3 * 48 and bool((patch_masked ^ visible).all())
    same = (reconstruction - original).abs().reshape(3, 8, 4, 8, 4, 3).amax(dim=(2, 4, 5)) <= 1
    assert bool(same[visible].all()) and not bool(same[patch_masked].all())


def test_selfsup_report_of_an_mae_run_draws_reconstructions(tmp_path, data_dir) -> None:
    from selfsup.cli import main
    from selfsup.engine import TrainConfig, train

    config = TrainConfig(
        method="mae", method_args=DECODER, backbone="vit_tiny", backbone_args=SMALL, data="cifar10",
        data_dir=str(data_dir), train_subset=32, test_subset=16, batch_size=16, epochs=1, eval_every=0,
        run_dir=str(tmp_path), name="mae", progress=False, device="cpu",
    )
    summary = train(config)
    assert summary["steps"] == 2
    run = tmp_path / "mae"
    assert main(["report", str(run), "--train-subset", "16", "--test-subset", "16", "--map", "pca", "--device", "cpu"]) == 0
    text = (run / "report" / "index.html").read_text()
    assert "Reconstructions (75% of the patches masked)" in text
    assert "columns: masked input, reconstruction, original" in text
    from PIL import Image

    grid = np.asarray(Image.open(run / "report" / "method_images.png"))
    assert grid.shape[0] > 6 * 64 and grid.shape[1] > 3 * 64  # six rows of three 64 px tiles


@pytest.mark.slow
def test_mae_learns_on_cifar10(tmp_path) -> None:
    """MAE on the tiny ViT: the trained ViTs' mean kNN on the [CLS] token beats ten random-init ViTs' by its margin (2,000
    CIFAR-10 test images) exceeds its margin, and in every run its decoder predicts the masked
    patches better than each patch's own mean (a normalized-target loss of about 0.98).

    Tiny ViT (tests/learning.py TINY_VIT: 4 blocks of 96 channels, patch 4), a 64-d 2-block decoder,
    5,000 images x 4 epochs at batch 64 (312 steps), AdamW at lr 4e-3 per 256 images (1e-3 at
    batch 64), betas (0.9, 0.95), weight decay 0.05. Steps matter more than images here: at batch
    256, 6 epochs (120 steps, lr 2e-3) measured -2.45 points, and batch 64 with lr 2e-3 per 256
    +1.35 in 3 epochs and +4.0 in 6. Seeds, gains, spread and margin: EVIDENCE["mae"] in
    tests/learning.py; the last logged loss was 0.63-0.65 on every seed (1.35-1.51 at the start),
    so the 0.8 bound sits half way to the 0.98 of predicting each patch's mean."""
    from selfsup.runs import read_metrics

    from .learning import assert_learns

    for seed, summary in enumerate(assert_learns("mae", tmp_path)):
        losses = [r["loss"] for r in read_metrics(summary["run_dir"]) if "loss" in r]
        assert losses[-1] < 0.8, (seed, losses)
