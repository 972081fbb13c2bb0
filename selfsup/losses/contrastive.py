"""Contrastive losses: NT-Xent (SimCLR, in-batch negatives) and InfoNCE (MoCo v1/v2 with a queue of
negatives, MoCo v3 with in-batch negatives)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["info_nce", "mocov3_loss", "nt_xent", "nt_xent_anchors"]


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
        n, total = anchors1.shape[0], all1.shape[0]
        queries = F.normalize(torch.cat((anchors1.float(), anchors2.float())), dim=1)  # (2n, D)
        keys = F.normalize(torch.cat((all1.float(), all2.float())), dim=1)  # (2N, D)
        logits = queries @ keys.T / temperature
        local = torch.arange(n, device=logits.device) + offset  # the anchors' rows in all1 / all2
        self_cols, positive_cols = torch.cat((local, local + total)), torch.cat((local + total, local))
        # An anchor is never its own negative: mask sim(z_i, z_i) out of the denominator.
        rows = torch.arange(2 * n, device=logits.device)
        logits = logits.index_put((rows, self_cols), logits.new_tensor(float("-inf")))
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


def info_nce(
    query: torch.Tensor,
    key: torch.Tensor,
    queue: torch.Tensor | None = None,
    temperature: float = 0.07,
    offset: int = 0,
) -> torch.Tensor:
    """InfoNCE with one positive per query (van den Oord et al. 2018, arXiv 1807.03748), in MoCo's
    two forms. Query, key and queue rows are L2-normalized here (a no-op for MoCo's queue, whose
    keys were normalized when computed), so the logits are cosine similarities over ``temperature``.

    With a ``queue`` ``(K, D)`` — MoCo v1/v2 (He et al. 2019, arXiv 1911.05722, eq. 1 and
    Algorithm 1): ``key`` ``(N, D)`` holds the positive of each query; the negatives are the queue::

        L = 1/N sum_n -log( exp(q_n.k_n / t) / (exp(q_n.k_n / t) + sum_j exp(q_n.queue_j / t)) )

    Without a queue — MoCo v3 (Chen, Xie, He 2021, arXiv 2104.02057, Algorithm 1, ``ctr``): the
    other keys of the batch are the negatives. ``key`` ``(M, D)`` may be the keys of all processes
    (M = world size x N); the positive of query ``n`` is ``key[offset + n]`` (``offset`` = rank x N),
    so the mean of this loss over processes is the loss of the global batch::

        L = 1/N sum_n -log( exp(q_n.k_{offset+n} / t) / sum_m exp(q_n.k_m / t) )

    This is the plain cross-entropy; MoCo v3's ``2 t`` factor is applied by :func:`mocov3_loss`.
    """
    with torch.autocast(device_type=query.device.type, enabled=False):
        q = F.normalize(query.float(), dim=1)
        k = F.normalize(key.float(), dim=1)
        if queue is None:
            logits = q @ k.T / temperature
            labels = torch.arange(q.shape[0], device=q.device) + offset
        else:
            if k.shape != q.shape:
                raise ValueError(f"with a queue, key must match query's shape {tuple(q.shape)}; got {tuple(k.shape)}")
            negatives = F.normalize(queue.detach().float(), dim=1)
            positive = (q * k).sum(dim=1, keepdim=True)
            logits = torch.cat((positive, q @ negatives.T), dim=1) / temperature
            labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, labels)


def mocov3_loss(
    q1: torch.Tensor,
    q2: torch.Tensor,
    k1: torch.Tensor,
    k2: torch.Tensor,
    temperature: float,
    offset: int = 0,
) -> torch.Tensor:
    """MoCo v3's symmetrized loss (Chen, Xie, He 2021, arXiv 2104.02057, Algorithm 1)::

        ctr(q, k) = 2 t * CrossEntropy(q.k^T / t, labels)
        L = ctr(q1, k2) + ctr(q2, k1)

    ``q1``/``q2`` are the predictor outputs of the two views, ``k1``/``k2`` the momentum encoder's
    keys of the two views (those of all processes; see :func:`info_nce` for ``offset``). The factor
    ``2 t`` lives here, not in :func:`info_nce`: it belongs to MoCo v3 (the paper's ``ctr`` and the
    official ``contrastive_loss``), where it keeps the gradient's scale independent of the
    temperature, whereas MoCo v1/v2 use the unscaled InfoNCE.
    """
    return 2 * temperature * (
        info_nce(q1, k2, temperature=temperature, offset=offset) + info_nce(q2, k1, temperature=temperature, offset=offset)
    )
