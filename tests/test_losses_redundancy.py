"""Barlow Twins' and VICReg's losses against the papers' formulas, transcribed loop by loop in
float64 (Zbontar et al. 2021, arXiv 2103.03230, eq. 1-2; Bardes et al. 2022, arXiv 2105.04906,
eq. 1-6)."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.losses import barlow_twins, vicreg, vicreg_terms


def barlow_reference(z1: torch.Tensor, z2: torch.Tensor, lambda_: float) -> float:
    """Eq. 2's cross-correlation of batch-centred embeddings, then eq. 1."""
    a, b = z1.double().tolist(), z2.double().tolist()
    n, d = len(a), len(a[0])
    mean_a = [sum(a[s][i] for s in range(n)) / n for i in range(d)]
    mean_b = [sum(b[s][i] for s in range(n)) / n for i in range(d)]
    a = [[a[s][i] - mean_a[i] for i in range(d)] for s in range(n)]
    b = [[b[s][i] - mean_b[i] for i in range(d)] for s in range(n)]
    loss = 0.0
    for i in range(d):
        for j in range(d):
            numerator = sum(a[s][i] * b[s][j] for s in range(n))
            c = numerator / (math.sqrt(sum(a[s][i] ** 2 for s in range(n))) * math.sqrt(sum(b[s][j] ** 2 for s in range(n))))
            loss += (1 - c) ** 2 if i == j else lambda_ * c**2
    return loss


def vicreg_reference(z1: torch.Tensor, z2: torch.Tensor, gamma: float, eps: float) -> tuple[float, float, float]:
    """s (Algorithm 1's mean squared error), v(Z1) + v(Z2) (eq. 1-2), c(Z1) + c(Z2) (eq. 3-4)."""
    a, b = z1.double().tolist(), z2.double().tolist()
    n, d = len(a), len(a[0])
    invariance = sum((a[s][k] - b[s][k]) ** 2 for s in range(n) for k in range(d)) / (n * d)
    variance = covariance = 0.0
    for z in (a, b):
        mean = [sum(z[s][k] for s in range(n)) / n for k in range(d)]
        for j in range(d):
            var = sum((z[s][j] - mean[j]) ** 2 for s in range(n)) / (n - 1)
            variance += max(0.0, gamma - math.sqrt(var + eps)) / d
        for i in range(d):
            for j in range(d):
                if i != j:
                    cov = sum((z[s][i] - mean[i]) * (z[s][j] - mean[j]) for s in range(n)) / (n - 1)
                    covariance += cov**2 / d
    return invariance, variance, covariance


def pair(seed: int, n: int = 7, d: int = 5, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    z1 = scale * torch.randn(n, d, generator=generator) + torch.randn(d, generator=generator)
    return z1, z1 + 0.5 * scale * torch.randn(n, d, generator=generator)


@pytest.mark.parametrize("lambda_", [0.0051, 0.5])
def test_barlow_twins_matches_the_papers_formula(lambda_: float) -> None:
    z1, z2 = pair(0)
    # eps=0: exactly eq. 2. The default adds BN's 1e-5 to the variance (the official code's
    # standardization), shrinking each C_ij by ~1e-5 relative: 1e-4 of this small loss.
    assert float(barlow_twins(z1, z2, lambda_, eps=0.0)) == pytest.approx(barlow_reference(z1, z2, lambda_), rel=1e-5)
    assert float(barlow_twins(z1, z2, lambda_)) == pytest.approx(barlow_reference(z1, z2, lambda_), rel=1e-3)


def test_barlow_twins_is_zero_for_identical_decorrelated_views_and_d_when_collapsed() -> None:
    # Orthogonal, centred columns: C is the identity and the loss is 0 (up to the BN epsilon).
    z = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    assert float(barlow_twins(z, z, 0.0051)) == pytest.approx(0.0, abs=1e-4)
    # Every sample the same: standardized embeddings are 0, C = 0, each diagonal term costs 1.
    collapsed = torch.ones(6, 3)
    assert float(barlow_twins(collapsed, collapsed + 0.0, 0.0051)) == pytest.approx(3.0, rel=1e-6)


def test_barlow_twins_is_invariant_to_per_dimension_affine_maps_and_computes_in_float32() -> None:
    z1, z2 = pair(1)
    scale, shift = torch.tensor([0.5, 2.0, 3.0, 1.0, 7.0]), torch.arange(5.0)
    reference = float(barlow_twins(z1, z2, 0.0051, eps=0.0))
    assert float(barlow_twins(z1 * scale + shift, z2, 0.0051, eps=0.0)) == pytest.approx(reference, rel=1e-4)
    assert barlow_twins(z1.bfloat16(), z2.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize("scale", [0.3, 2.0])  # below gamma the hinge is active, above it is 0
def test_vicreg_terms_match_the_papers_formulas(scale: float) -> None:
    z1, z2 = pair(2, scale=scale)
    expected = vicreg_reference(z1, z2, gamma=1.0, eps=1e-4)
    for got, want in zip(vicreg_terms(z1, z2), expected):
        assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert (expected[1] > 0.1) == (scale < 1)  # the case exercises the hinge as intended
    weighted = 25 * expected[0] + 25 * expected[1] + 1 * expected[2]
    assert float(vicreg(z1, z2)) == pytest.approx(weighted, rel=1e-5)
    assert float(vicreg(z1, z2, 1.0, 2.0, 3.0, gamma=0.5, eps=1e-3)) == pytest.approx(
        sum(w * t for w, t in zip((1.0, 2.0, 3.0), vicreg_reference(z1, z2, 0.5, 1e-3))), rel=1e-5
    )


def test_vicreg_of_a_collapsed_embedding_pays_the_full_variance_hinge() -> None:
    # Identical constant embeddings: no invariance or covariance cost, each view pays gamma - sqrt(eps).
    z = torch.full((4, 3), 2.0)
    invariance, variance, covariance = vicreg_terms(z, z)
    assert float(invariance) == 0.0 and float(covariance) == 0.0
    assert float(variance) == pytest.approx(2 * (1.0 - math.sqrt(1e-4)), rel=1e-6)


def test_losses_refuse_a_single_sample_or_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        barlow_twins(torch.ones(1, 4), torch.ones(1, 4))
    with pytest.raises(ValueError, match="same shape"):
        vicreg(torch.ones(3, 4), torch.ones(3, 5))
