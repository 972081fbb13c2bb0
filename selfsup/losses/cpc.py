"""Contrastive predictive coding over a grid of patches: InfoNCE of predicted against true
patch features (CPC)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["cpc_loss"]


def cpc_loss(predictions: torch.Tensor, targets: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """CPC's InfoNCE over a feature grid (van den Oord et al. 2018, arXiv 1807.03748, eq. 4;
    Hénaff et al. 2019, arXiv 1905.09272, eq. 1-3 and section 4.1).

    ``predictions`` ``(B, K, D, H, W)``: ``predictions[b, k - 1, :, i, j]`` is ``ẑ = W_k c[b, i, j]``,
    the prediction of the feature ``k`` rows below position ``(i, j)`` of image ``b``.
    ``targets`` ``(N, D, H, W)``: the encoded patch grids ``z`` of the batch the predictions are
    scored against; this batch's images are rows ``offset .. offset + B`` of it (``targets`` is the
    all-gathered global batch when distributed, the batch itself with ``offset=0`` otherwise).

    Every prediction with a target inside the grid (``i + k < H``) is a query; its positive is
    ``z[b, :, i + k, j]`` and its negatives are all the other ``N * H * W - 1`` feature vectors of
    the batch (other positions of the same image and every position of the other images)::

        l(b, k, i, j) = -log( exp(ẑ . z[b, i+k, j]) / sum_{n, u, v} exp(ẑ . z[n, u, v]) )
        L = mean of l over all valid (b, k, i, j)

    The paper's objective is the sum of ``l`` over ``(i, j, k)`` (eq. 3); the mean differs from it
    by the constant number of terms and keeps the learning rate independent of grid and ``K``.
    Scores are plain dot products, without normalization or temperature, as in the paper.
    Averaging this loss over equal slices of a batch (``offset`` = start of each slice) gives
    the loss of the whole batch, which is what the distributed form relies on.
    """
    batch, steps, dim, height, width = predictions.shape
    if targets.dim() != 4 or tuple(targets.shape[1:]) != (dim, height, width):
        raise ValueError(f"targets must be (N, {dim}, {height}, {width}) to match the predictions, got {tuple(targets.shape)}.")
    if steps >= height:
        raise ValueError(f"{steps} prediction steps need a grid of more than {steps} rows, got {height}.")
    with torch.autocast(device_type=predictions.device.type, enabled=False):
        preds, keys = predictions.float(), targets.float()
        keys = keys.permute(0, 2, 3, 1).reshape(-1, dim)  # (N * H * W, D) in (image, row, column) order
        device = preds.device
        queries, labels = [], []
        for k in range(1, steps + 1):
            rows = height - k  # contexts with a target k rows below
            queries.append(preds[:, k - 1, :, :rows, :].permute(0, 2, 3, 1).reshape(-1, dim))
            image = torch.arange(batch, device=device).view(-1, 1, 1) + offset
            row = torch.arange(rows, device=device).view(1, -1, 1) + k
            column = torch.arange(width, device=device).view(1, 1, -1)
            labels.append(((image * height + row) * width + column).reshape(-1))
        logits = torch.cat(queries) @ keys.T
        return F.cross_entropy(logits, torch.cat(labels))
