"""Barlow Twins (arXiv 2103.03230) and VICReg (arXiv 2105.04906) as methods: what they log, the
projector widths they pick, and the statistics of the whole batch their losses are built on."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from selfsup import methods
from selfsup.errors import ConfigError
from selfsup.losses import barlow_twins, vicreg_terms
from selfsup.methods.barlow_twins import projector_width
from selfsup.nn import create_backbone

from .learning import assert_learns, output_std


def small(name: str, **config) -> methods.Method:  # noqa: ANN003
    torch.manual_seed(0)
    config = {"proj_hidden_dim": 64, "proj_output_dim": 32, **config}
    return methods.create(name, backbone=create_backbone("tiny", 32, width=8), **config)


def views(seed: int = 0, batch: int = 12) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32, generator=generator)
    return [x + 0.1 * torch.randn(x.shape, generator=generator), x + 0.1 * torch.randn(x.shape, generator=generator)]


def test_vicreg_logs_its_three_terms_and_the_loss_is_their_weighted_sum() -> None:
    method = small("vicreg", invariance_weight=2.0, variance_weight=3.0, covariance_weight=0.5)
    out = method(views())
    assert {"invariance", "variance", "covariance", "output_std"} <= set(out)
    expected = 2.0 * out["invariance"] + 3.0 * out["variance"] + 0.5 * out["covariance"]
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-6)
    # The terms are those of the pure loss on the projections of the two views.
    z1, z2 = (method.projector(method.backbone(v)) for v in views())
    for name, value in zip(("invariance", "variance", "covariance"), vicreg_terms(z1, z2)):
        assert float(out[name]) == pytest.approx(float(value), rel=1e-5)
    assert all(not out[k].requires_grad for k in ("invariance", "variance", "covariance"))


def test_barlow_twins_loss_is_the_pure_loss_scaled_and_logs_output_std() -> None:
    method = small("barlow_twins", scale_loss=0.1, lambda_=0.01)
    out = method(views(1))
    z1, z2 = (method.projector(method.backbone(v)) for v in views(1))
    assert float(out["loss"]) == pytest.approx(0.1 * float(barlow_twins(z1, z2, 0.01)), rel=1e-5)
    # Spread outputs: the std of the normalized projection is of the order of 1/sqrt(d).
    assert 0.2 / math.sqrt(32) < float(out["output_std"]) < 2.0 / math.sqrt(32)


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg"])
def test_output_std_reads_zero_for_a_collapsed_projection(name: str) -> None:
    method = small(name)
    with torch.no_grad():
        for module in method.projector.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.fill_(1.0)
    assert float(method(views(2))["output_std"]) == pytest.approx(0.0, abs=1e-6)


def test_projector_width_is_the_papers_8192_above_64_px_and_solo_learns_2048_on_cifar() -> None:
    cifar, imagenet = SimpleNamespace(build_args={"image_size": 32}), SimpleNamespace(build_args={"image_size": 224})
    assert projector_width(None, cifar) == 2048 and projector_width(None, imagenet) == 8192
    assert projector_width(512, imagenet) == 512
    method = methods.create("vicreg", backbone=create_backbone("tiny", 32, width=8))
    linears = [m for m in method.projector if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [2048, 2048, 2048]  # three layers, as the official expander


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg"])
def test_the_loss_of_two_halves_is_not_the_loss_of_the_batch(name: str) -> None:
    """Why the methods gather every process's projections: both losses are statistics of the
    batch, so averaging the losses of two halves is a different objective from the loss of the
    whole batch (the two-process test in test_distributed.py checks the engine gives the latter)."""
    generator = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(16, 8, generator=generator), torch.randn(16, 8, generator=generator)
    loss = barlow_twins if name == "barlow_twins" else (lambda a, b: sum(vicreg_terms(a, b)))
    halves = (loss(z1[:8], z2[:8]) + loss(z1[8:], z2[8:])) / 2
    assert abs(float(halves) - float(loss(z1, z2))) > 0.05 * abs(float(loss(z1, z2)))


@pytest.mark.parametrize("name, bad", [
    ("barlow_twins", {"lambda_": -1.0}), ("barlow_twins", {"proj_output_dim": 0}), ("barlow_twins", {"scale_loss": 0.0}),
    ("vicreg", {"variance_weight": -1.0}), ("vicreg", {"invariance_weight": 0.0, "variance_weight": 0.0, "covariance_weight": 0.0}),
    ("vicreg", {"variance_eps": 0.0}), ("vicreg", {"proj_layers": 0}),
])
def test_bad_settings_are_config_errors(name: str, bad: dict) -> None:
    with pytest.raises(ConfigError):
        small(name, **bad)


@pytest.mark.slow
def test_barlow_twins_learns_on_cifar10(tmp_path) -> None:
    """Barlow Twins' trained backbones' mean kNN (2,000 CIFAR-10 test images) beats the mean of ten random-init backbones by
    its margin and in every run its projection does not collapse (std of the normalized
    outputs > 0.5 / sqrt(d)).

    Tiny backbone, 5,000 images x 6 epochs at batch 256 (114 steps), the default 2048-d projector
    at 32 px, solo-learn's CIFAR loss scale 0.1, LARS at lr 1.0 per 256 images and crops of scale
    (0.2, 1): the paper's lr 0.2 and solo-learn's crops from 0.08 moved the tiny network less in
    114 steps (seed 0: +3.65 at lr 0.2 and +4.35 at lr 1.0 with a 1024-d projector; seed 1: +2.55
    with 1024-d and crops from 0.2, +5.05 with 2048-d). Seeds, gains, spread and margin:
    EVIDENCE["barlow_twins"] in tests/learning.py; std x sqrt(d) was 0.77-0.80 on every seed."""
    for seed, summary in enumerate(assert_learns("barlow_twins", tmp_path)):
        std, dim = output_std(summary)
        assert std > 0.5 / math.sqrt(dim), (seed, std * math.sqrt(dim))


@pytest.mark.slow
def test_vicreg_learns_on_cifar10(tmp_path) -> None:
    """VICReg's trained backbones' mean kNN (2,000 CIFAR-10 test images) beats the mean of ten random-init backbones
    by its margin; in every run its embedding does not collapse (std of the normalized outputs >
    0.5 / sqrt(d)) and its variance term falls, ending well below its collapsed value
    2 (1 - sqrt(1e-4)) = 1.98 (seed 0: 1.26 at step 20, 1.07 at the end; the bound 1.5).

    Tiny backbone, 5,000 images x 6 epochs at batch 256 (114 steps), a 1024-d expander (half the
    2048 of solo-learn's CIFAR recipe, for a shorter CPU run), the method's defaults otherwise
    (LARS lr 0.2, weights 25/25/1, solo-learn's CIFAR views). Seeds, gains, spread and margin:
    EVIDENCE["vicreg"] in tests/learning.py; std x sqrt(d) was 0.81-0.82 on every seed."""
    from selfsup.runs import read_metrics

    for seed, summary in enumerate(assert_learns("vicreg", tmp_path)):
        std, dim = output_std(summary)
        assert std > 0.5 / math.sqrt(dim), (seed, std * math.sqrt(dim))
        variance = [r["variance"] for r in read_metrics(summary["run_dir"]) if "variance" in r]
        assert variance and variance[-1] < min(1.5, variance[0]), (seed, variance)
