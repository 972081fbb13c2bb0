"""Online clustering losses of SwAV (Caron et al. 2020, arXiv 2006.09882): the Sinkhorn-Knopp codes
and the swapped prediction loss."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..nn.dist import all_reduce_sum, is_distributed

__all__ = ["sinkhorn", "swav_loss", "swapped_cross_entropy"]


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """SwAV's codes: an equipartitioned soft assignment of samples to prototypes (section 3.1,
    algorithm 1, and ``distributed_sinkhorn`` of the official code).

    ``scores`` ``(B, K)`` are the prototype scores ``z . c`` of this process's samples. With
    ``Q = exp(scores / epsilon)^T`` (K x B) normalized to sum to 1, each of ``iterations`` rounds
    scales the rows (prototypes) to sum to 1/K, then the columns (samples) to sum to 1/B; the
    result is scaled by B so that every sample's code sums to 1. Returns float32 ``(B, K)`` codes,
    without gradient.

    Across processes the total, the row sums and the sample count are all-reduced, so the codes
    are those of one process holding the concatenated batch (the columns are independent; only
    the row sums couple the samples).
    """
    if iterations < 1:
        raise ValueError(f"sinkhorn needs at least one iteration, got {iterations}")
    with torch.autocast(device_type=scores.device.type, enabled=False):
        logits = scores.detach().float() / epsilon
        # exp(20) for cosine scores at epsilon 0.05 is fine in float32, but a smaller epsilon
        # overflows. Subtracting one constant shared by every process scales Q by a constant,
        # which the first normalization removes: the codes are unchanged.
        shift = logits.max()
        if is_distributed():
            dist.all_reduce(shift, op=dist.ReduceOp.MAX)
        q = torch.exp(logits - shift).T  # (K, B)
        num_prototypes = q.shape[0]
        total = all_reduce_sum(torch.stack((q.sum(), torch.tensor(float(q.shape[1]), device=q.device))))
        q /= total[0]
        num_samples = total[1]
        for _ in range(iterations):
            q /= all_reduce_sum(q.sum(dim=1, keepdim=True))  # each prototype: total weight 1/K
            q /= num_prototypes
            q /= q.sum(dim=0, keepdim=True)  # each sample: total weight 1/B
            q /= num_samples
        q *= num_samples  # each sample's code sums to 1
        return q.T


def swav_loss(scores: Sequence[torch.Tensor], codes: Sequence[torch.Tensor], temperature: float = 0.1) -> torch.Tensor:
    """SwAV's swapped prediction loss (eq. 1-2 and the official code's averaging).

    ``scores[v]`` ``(B, K)`` are the prototype scores of view ``v`` (all crops, the global ones
    first); ``codes[i]`` ``(B, K)`` are the codes computed from view ``i`` (the first
    ``len(codes)`` views). With ``p_v = softmax(scores[v] / temperature)``::

        L = 1/|A| sum_{i in A} 1/(V-1) sum_{v != i} -1/B sum_b sum_k codes[i][b, k] log p_v[b, k]

    Each view predicts the code of every other assigned view; a view never predicts its own code.
    """
    if len(codes) > len(scores) or len(scores) < 2:
        raise ValueError(f"need >= 2 views and at most one code per view, got {len(scores)} views and {len(codes)} codes")
    with torch.autocast(device_type=scores[0].device.type, enabled=False):
        return swapped_cross_entropy(torch.stack([c.detach().float() for c in codes]), scores, temperature)


def swapped_cross_entropy(targets: torch.Tensor, scores: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """The cross-entropy of SwAV's and DINO's losses: ``targets`` ``(A, B, K)`` (distributions of the
    first A views) against ``log p_v = log_softmax(scores[v] / temperature)`` of every view, averaged
    over the pairs ``(i, v != i)`` (a view never predicts its own target). float32."""
    log_p = F.log_softmax(torch.stack([s.float() for s in scores]) / temperature, dim=-1)  # (V, B, K)
    # cross[i, v] = -1/B sum_b sum_k targets_i log p_v: every (target, view) pair in one contraction.
    cross = -torch.einsum("abk,vbk->av", targets, log_p) / log_p.shape[1]
    mask = torch.ones_like(cross)
    mask.fill_diagonal_(0.0)
    return (cross * mask).sum() / mask.sum()
