"""NT-Xent against the SimCLR paper's formula (Chen et al. 2020, arXiv 2002.05709, eq. 1)."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.losses import nt_xent, nt_xent_anchors


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """Eq. 1 transcribed loop by loop, in float64."""
    z = torch.cat((z1, z2)).double()
    n2 = z.shape[0]
    n = n2 // 2

    def sim(u: torch.Tensor, v: torch.Tensor) -> float:
        return float(u @ v / (u.norm() * v.norm()))

    def l(i: int, j: int) -> float:
        num = math.exp(sim(z[i], z[j]) / t)
        den = sum(math.exp(sim(z[i], z[k]) / t) for k in range(n2) if k != i)
        return -math.log(num / den)

    return sum(l(k, k + n) + l(k + n, k) for k in range(n)) / n2


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_matches_formula_on_fixed_inputs(temperature: float) -> None:
    generator = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 5, generator=generator)
    z2 = z1 + 0.3 * torch.randn(6, 5, generator=generator)
    assert float(nt_xent(z1, z2, temperature)) == pytest.approx(nt_xent_reference(z1, z2, temperature), rel=1e-5)


def test_nt_xent_on_identical_orthogonal_embeddings() -> None:
    # Positives identical (sim 1), every negative orthogonal (sim 0): each anchor's loss is
    # -log(e^{1/t} / (e^{1/t} + 2N - 2)).
    n, t = 4, 0.5
    z = torch.eye(8)[:n]
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * n - 2))
    assert float(nt_xent(z, z, t)) == pytest.approx(expected, rel=1e-6)


def test_nt_xent_on_all_identical_embeddings_is_log_of_denominator() -> None:
    # Every similarity is 1: the loss is log(2N - 1) whatever the temperature (collapse is not rewarded).
    z = torch.ones(5, 3)
    assert float(nt_xent(z, z, 0.1)) == pytest.approx(math.log(2 * 5 - 1), rel=1e-6)


def test_nt_xent_is_invariant_to_scale_and_computed_in_float32() -> None:
    generator = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 8, generator=generator), torch.randn(4, 8, generator=generator)
    base = nt_xent(z1, z2, 0.2)
    assert float(nt_xent(3 * z1, 0.5 * z2, 0.2)) == pytest.approx(float(base), rel=1e-5)
    low = nt_xent(z1.bfloat16(), z2.bfloat16(), 0.2)
    assert low.dtype == torch.float32


def test_slices_of_anchors_average_to_the_whole_batch() -> None:
    # The distributed form: each rank's anchors against the gathered batch, averaged over ranks.
    generator = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(8, 4, generator=generator), torch.randn(8, 4, generator=generator)
    halves = [nt_xent_anchors(z1[i : i + 4], z2[i : i + 4], z1, z2, i, 0.3) for i in (0, 4)]
    assert float(sum(halves) / 2) == pytest.approx(float(nt_xent(z1, z2, 0.3)), rel=1e-6)


def test_simclr_defaults_are_the_official_code_s() -> None:
    """google-research/simclr v1: projection_head keeps the backbone's width, 128 outputs, BN on both
    layers and, on the output, a scale without a shift (center=False); temperature 0.5 on CIFAR-10
    (README command) and 0.1 at ImageNet scale (run.py)."""
    from selfsup import methods
    from selfsup.nn import create_backbone

    small = methods.create("simclr", backbone=create_backbone("tiny", 32))
    linears = [m for m in small.projector if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 128), (128, 128)]
    last = small.projector[-1]
    assert isinstance(last, torch.nn.BatchNorm1d) and last.weight is not None and last.bias is None
    assert small.temperature == 0.5
    assert methods.create("simclr", backbone=create_backbone("tiny", 96)).temperature == 0.1
    solo = methods.create("simclr", backbone=create_backbone("tiny", 32), proj_hidden_dim=64, proj_batch_norm=False, proj_last_bn=False)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in solo.projector)
    assert all(m.bias is not None for m in solo.projector if isinstance(m, torch.nn.Linear))
