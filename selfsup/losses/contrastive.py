"""Contrastive losses with in-batch negatives: NT-Xent (SimCLR)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["nt_xent", "nt_xent_anchors"]


def _f32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.float() for t in tensors]


def nt_xent_anchors(
    anchors1: torch.Tensor,
    anchors2: torch.Tensor,
    all1: torch.Tensor,
    all2: torch.Tensor,
    offset: int,
    temperature: float,
) -> torch.Tensor:
    """NT-Xent of a slice of anchors against a larger batch (the distributed form of
    :func:`nt_xent`): ``anchors1``/``anchors2`` are rows ``offset .. offset + n`` of
    ``all1``/``all2``. Averaging this over equal slices gives :func:`nt_xent` of the whole batch."""
    with torch.autocast(device_type=anchors1.device.type, enabled=False):
        a1, a2, b1, b2 = _f32(anchors1, anchors2, all1, all2)
        n, total = a1.shape[0], b1.shape[0]
        queries = F.normalize(torch.cat((a1, a2)), dim=1)  # (2n, D)
        keys = F.normalize(torch.cat((b1, b2)), dim=1)  # (2N, D)
        logits = queries @ keys.T / temperature
        rows = torch.arange(2 * n, device=logits.device)
        local = torch.cat((torch.arange(n), torch.arange(n))).to(logits.device) + offset
        self_cols = local + torch.cat((torch.zeros(n), torch.full((n,), total))).to(logits.device, torch.long)
        positive_cols = local + torch.cat((torch.full((n,), total), torch.zeros(n))).to(logits.device, torch.long)
        # An anchor is never its own negative: mask sim(z_i, z_i) out of the denominator.
        logits = logits.index_put((rows, self_cols), torch.tensor(float("-inf"), device=logits.device))
        return F.cross_entropy(logits, positive_cols)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR (Chen et al. 2020,
    arXiv 2002.05709, eq. 1).

    With ``z = [z1; z2]`` (2N embeddings, ``z1[k]`` and ``z2[k]`` two views of image k) and
    ``sim(u, v) = u.v / (|u| |v|)``::

        l(i, j) = -log( exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t) )
        L = 1 / (2N) * sum_k [ l(k, k+N) + l(k+N, k) ]

    Every anchor has one positive and 2N - 2 negatives; all 2N anchors are averaged.
    """
    return nt_xent_anchors(z1, z2, z1, z2, 0, temperature)
