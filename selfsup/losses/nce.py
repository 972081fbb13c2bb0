"""Losses over a memory bank (InstDisc, CMC) and CMC's cross-view objectives.

InstDisc — Wu, Xiong, Yu, Lin 2018, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination" (arXiv 1805.01978), section 3. With L2-normalized embeddings ``f`` and a memory
bank ``v_1 .. v_n``:

- eq. 2, the non-parametric softmax: ``P(i | f) = exp(v_i.f / t) / sum_j exp(v_j.f / t)``;
- eq. 3, its objective: ``J = -sum_i log P(i | f_i)``;
- eqs. 4-6, NCE: ``P(i | f) = exp(v_i.f / t) / Z``, noise ``P_n = 1/n`` drawn m times as often
  as data, ``h(i, f) = P(i | f) / (P(i | f) + m P_n)`` and
  ``J_NCE = -E_data[log h(i, f)] - m E_noise[log(1 - h(i, f'))]``;
- eq. 7, the normalization constant ``Z ~= n E_j[exp(v_j.f / t)]``, estimated once from the first
  batch and then held fixed (the official code, lemniscate.pytorch, ``NCEAverage``);
- section 3.3, proximal regularization: ``+ lambda ||f_i^(t) - v_i^(t-1)||^2`` on the positive.

CMC — Tian, Krishnan, Isola 2019, "Contrastive Multiview Coding" (arXiv 1906.05849): the same
NCE (or a softmax cross-entropy) between an anchor of one view and the memory of another, both
directions, and for more than two views a sum over the pairs of a core view or of the full graph
(section 3.3).

All functions are pure; the state (the bank, the held ``Z``) belongs to the method. Scores are
computed in float32.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from ..nn.dist import all_reduce_mean
from .contrastive import info_nce

__all__ = [
    "cross_view_softmax",
    "held_nce",
    "memory_softmax",
    "multiview_objective",
    "multiview_pairs",
    "nce_loss",
    "nce_normalizer",
    "nonparametric_softmax",
    "proximal_term",
]


def _no_autocast(tensor: torch.Tensor) -> torch.autocast:
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def nonparametric_softmax(
    features: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The exact non-parametric softmax of InstDisc (eqs. 2-3), averaged over the batch.

    ``features`` (B, D) and the rows of ``bank`` (N, D) are L2-normalized; ``index`` (B,) holds
    each sample's own row. ``-mean_b log( exp(v_{i_b}.f_b / t) / sum_j exp(v_j.f_b / t) )`` over
    all N entries: what the official code runs on CIFAR-10 (``--nce-k 0 --nce-t 0.1``).
    """
    with _no_autocast(features):
        logits = features.float() @ bank.float().T / temperature
        return F.cross_entropy(logits, index.to(logits.device).long())


def nce_normalizer(scores: torch.Tensor, temperature: float, num_samples: int) -> torch.Tensor:
    """Eq. 7: ``Z = n * mean(exp(s / t))`` over every score of the batch (the official code
    averages over the positive and the m noise scores of each sample). Detached: Z is a constant
    of the objective, not a function to differentiate."""
    with _no_autocast(scores):
        return (scores.detach().float() / temperature).exp().mean() * num_samples


def nce_loss(
    positive: torch.Tensor,
    noise: torch.Tensor,
    temperature: float,
    normalizer: torch.Tensor | float,
    num_samples: int,
) -> torch.Tensor:
    """NCE of InstDisc (eqs. 4-6), averaged over the batch.

    ``positive`` (B,) holds ``v_{i_b}.f_b`` (the sample's own bank entry), ``noise`` (B, m) the
    scores of m entries drawn uniformly from the bank of ``num_samples`` entries; ``normalizer``
    is Z. Per sample: ``-log h(pos) - sum_k log(1 - h(noise_k))`` with ``P = exp(s/t) / Z`` and
    ``h = P / (P + m / n)``, computed in log space (``log h = -softplus(log(m/n) - log P)``,
    ``log(1 - h) = -softplus(log P - log(m/n))``) so that no probability underflows.
    """
    with _no_autocast(positive):
        m = noise.shape[1]
        log_z = torch.log(torch.as_tensor(normalizer, dtype=torch.float32, device=positive.device))
        log_noise_mass = math.log(m / num_samples)  # log(m * P_n)
        log_p_pos = positive.float() / temperature - log_z
        log_p_noise = noise.float() / temperature - log_z
        data_term = F.softplus(log_noise_mass - log_p_pos)  # -log h(i, f_i)
        noise_term = F.softplus(log_p_noise - log_noise_mass).sum(dim=1)  # -sum_k log(1 - h(j_k, f_i))
        return (data_term + noise_term).mean()


def held_nce(
    positive: torch.Tensor, noise: torch.Tensor, temperature: float, held: torch.Tensor, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`nce_loss` with eq. 7's Z held once estimated (the official ``NCEAverage``): ``held``
    where it is > 0, else this batch's :func:`nce_normalizer` averaged over the processes (so it is
    the global batch's). Returns the loss and the Z it used, for the method to keep."""
    scores = torch.cat((positive[:, None], noise), dim=1)
    estimate = all_reduce_mean(nce_normalizer(scores, temperature, num_samples))
    normalizer = torch.where(held > 0, held, estimate)
    return nce_loss(positive, noise, temperature, normalizer, num_samples), normalizer


def memory_softmax(positive: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax cross-entropy over one positive and K sampled negatives (CMC's ``--softmax``,
    the "Softmax-CE" of its official code, HobbitLong/CMC; arXiv 1906.05849 section 3.2):
    ``-mean_b log( exp(pos_b / t) / (exp(pos_b / t) + sum_k exp(neg_bk / t)) )``."""
    with _no_autocast(positive):
        logits = torch.cat((positive.float().unsqueeze(1), negatives.float()), dim=1) / temperature
        return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def proximal_term(features: torch.Tensor, previous: torch.Tensor, weight: float) -> torch.Tensor:
    """InstDisc's proximal regularization (section 3.3): ``lambda * mean_b ||f_b - v_b||^2``, with
    ``f_b`` the current embedding of sample b and ``v_b`` its memory-bank entry from the previous
    iteration. It is added to the NCE objective (``J = -E[log h - lambda ||.||^2] - ...``)."""
    with _no_autocast(features):
        return weight * (features.float() - previous.detach().float()).pow(2).sum(dim=1).mean()


def cross_view_softmax(
    anchors: torch.Tensor, contrasts: torch.Tensor, temperature: float, offset: int = 0
) -> torch.Tensor:
    """CMC's contrastive loss between two views with in-batch negatives (arXiv 1906.05849, section 3.1):
    anchor ``a_b`` of view i against every ``c_j`` of view j, the positive being the same image::

        L^{i,j} = -mean_b log( exp(cos(a_b, c_b) / t) / sum_j exp(cos(a_b, c_j) / t) )

    ``anchors`` are rows ``offset .. offset + B`` of the batch that ``contrasts`` covers (the
    distributed form: each rank's anchors against the gathered views; averaged over equal slices
    it equals the loss of the whole batch). The same computation as MoCo v3's in-batch InfoNCE."""
    return info_nce(anchors, contrasts, temperature=temperature, offset=offset)


def multiview_pairs(num_views: int, graph: Literal["core", "full"]) -> list[tuple[int, int]]:
    """The view pairs CMC contrasts (arXiv 1906.05849, section 3.3): with a core view (view 0)
    ``(0, j)`` for j = 1 .. M-1; with the full graph every ``(i, j)``, i < j."""
    if num_views < 2:
        raise ValueError(f"contrasting views needs at least 2 views, got {num_views}")
    if graph == "core":
        return [(0, j) for j in range(1, num_views)]
    if graph == "full":
        return list(itertools.combinations(range(num_views), 2))
    raise ValueError(f"graph must be 'core' or 'full', got {graph!r}")


def multiview_objective(
    directional_loss: Callable[[int, int], torch.Tensor], num_views: int, graph: Literal["core", "full"]
) -> torch.Tensor:
    """CMC's objective over M views (section 3.3): ``sum over pairs (i, j) of L(V_i, V_j)`` with
    ``L(V_i, V_j) = L^{V_i -> V_j} + L^{V_j -> V_i}`` (section 3.1), the pairs of the core view
    (``L_C = sum_{j>1} L(V_1, V_j)``) or of the full graph (``L_F = sum_{i<j} L(V_i, V_j)``).
    ``directional_loss(i, j)`` is the loss of anchors from view i contrasted against view j."""
    return sum(directional_loss(i, j) + directional_loss(j, i) for i, j in multiview_pairs(num_views, graph))
