"""Redundancy-reduction losses: Barlow Twins' cross-correlation to the identity and VICReg's
variance-invariance-covariance regularization. No negatives, no momentum encoder: the loss itself
keeps the embedding from collapsing, through statistics of the batch.

Both are functions of the whole batch (means, variances, correlations over samples). Across
processes the methods pass the embeddings of every process, gathered with gradient
(:func:`selfsup.nn.gather_with_grad`), so these statistics are the global batch's.
"""

from __future__ import annotations

import torch

__all__ = ["barlow_twins", "vicreg", "vicreg_terms"]


def _off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The ``d * (d - 1)`` off-diagonal entries of a square matrix, flattened."""
    d = matrix.shape[0]
    return matrix.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def _check_pair(z1: torch.Tensor, z2: torch.Tensor, name: str) -> None:
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"{name} takes two (N, D) embeddings of the same shape; got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples: its statistics are over the batch; got {z1.shape[0]}")


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambda_: float = 0.0051, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins' loss (Zbontar et al. 2021, arXiv 2103.03230, eq. 1-2)::

        C_ij = sum_b z1_bi z2_bj / ( sqrt(sum_b z1_bi^2) sqrt(sum_b z2_bj^2) )
        L = sum_i (1 - C_ii)^2 + lambda * sum_i sum_{j != i} C_ij^2

    with each embedding dimension mean-centred over the batch: ``C`` is the cross-correlation
    matrix of the two views, pushed to the identity (invariance on the diagonal, decorrelation off
    it). Computed as the official code does (facebookresearch/barlowtwins, main.py): each
    dimension standardized with its batch mean and biased variance (``BatchNorm1d(affine=False)``,
    ``eps`` added to the variance), ``C = z1n^T z2n / N``; equal to eq. 2 up to ``eps``.
    ``lambda_`` is 0.0051 (the official default; the paper's section 4 reports 5e-3). A sum, not
    a mean, over the D x D entries, as in the paper. float32 whatever the input dtype.
    """
    _check_pair(z1, z2, "barlow_twins")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        a, b = ((z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps) for z in (z1.float(), z2.float()))
        c = a.T @ b / a.shape[0]
        on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
        return on_diagonal + lambda_ * _off_diagonal(c).pow(2).sum()


def vicreg_terms(
    z1: torch.Tensor, z2: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three terms of VICReg (Bardes, Ponce, LeCun 2022, arXiv 2105.04906, section 2 and
    Algorithm 1), for embeddings ``z1``, ``z2`` ``(N, D)`` of two views:

    - invariance ``s = 1/(N D) sum_i ||z1_i - z2_i||^2`` (Algorithm 1's ``F.mse_loss``, the mean
      over dimensions too: eq. 5 writes the sum, the code and the weight 25 use the mean);
    - variance ``v(Z1) + v(Z2)``, ``v(Z) = 1/D sum_j max(0, gamma - sqrt(Var(z^j) + eps))`` with
      the unbiased variance of dimension j over the batch (eq. 1-2);
    - covariance ``c(Z1) + c(Z2)``, ``c(Z) = 1/D sum_{i != j} C(Z)_ij^2``,
      ``C(Z) = 1/(N-1) sum_b (z_b - mean)(z_b - mean)^T`` (eq. 3-4).

    Returned unweighted, as three float32 scalars (the method logs each); :func:`vicreg` weights them.
    """
    _check_pair(z1, z2, "vicreg")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        a, b = z1.float(), z2.float()
        invariance = (a - b).pow(2).mean()
        a, b = a - a.mean(dim=0), b - b.mean(dim=0)
        n, d = a.shape
        variance = sum(torch.relu(gamma - torch.sqrt(z.var(dim=0) + eps)).mean() for z in (a, b))
        covariance = sum(_off_diagonal(z.T @ z / (n - 1)).pow(2).sum() / d for z in (a, b))
        return invariance, variance, covariance


def vicreg(
    z1: torch.Tensor,
    z2: torch.Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VICReg's loss (arXiv 2105.04906, eq. 6)::

        L = lambda s(Z1, Z2) + mu [v(Z1) + v(Z2)] + nu [c(Z1) + c(Z2)]

    with lambda = mu = 25 and nu = 1 (section 4.1); the terms are those of :func:`vicreg_terms`.
    The official code (facebookresearch/vicreg, main_vicreg.py) averages the two variance terms
    (``/ 2``), i.e. mu = 12.5 in this form; solo-learn sums them, as the paper.
    """
    invariance, variance, covariance = vicreg_terms(z1, z2, gamma, eps)
    return invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance
