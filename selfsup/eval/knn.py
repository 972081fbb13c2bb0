"""Frozen-feature probes: feature extraction and the weighted kNN classifier.

The kNN is the one of InstDisc (Wu et al. 2018, arXiv 1805.01978, section 3.5) that the peers'
benchmarks report: cosine similarity to every training feature, the k nearest vote for their class
with weight ``exp(sim / T)`` (k=200, T=0.1).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn.functional as F

from ..data import BatchLoader, ImageSet


def center_crop(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Central ``size`` x ``size`` of uint8 ``(B, H, W, 3)`` images (unchanged if not larger)."""
    height, width = images.shape[1:3]
    if size is None or (height <= size and width <= size):
        return images
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return images[:, top : top + size, left : left + size]


@torch.no_grad()
def extract_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    transform: Callable[[torch.Tensor], torch.Tensor],
    dataset: ImageSet,
    device: torch.device | str,
    batch_size: int = 512,
    crop_size: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``encode(transform(uint8 batch))`` over a dataset, in order; float32 ``(N, D)`` on ``device``.

    Streamed datasets are read through the same loader as training (unshuffled).
    """
    device = torch.device(device)
    loader = BatchLoader(dataset, min(batch_size, len(dataset)), device, shuffle=False, drop_last=False)
    context = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    parts = []
    with context:
        for batch in loader.epoch(0):
            parts.append(encode(transform(center_crop(batch.images, crop_size))).float())
    return torch.cat(parts)


# InstDisc's k; a smaller bank gets fewer neighbours (see choose_k).
MAX_K = 200


def choose_k(labels: torch.Tensor, requested: int | None = None) -> int:
    """The k of the weighted kNN for a bank with ``labels``: ``requested`` when given, else
    ``min(200, labelled bank images per class)``.

    With k = 200 and 30 images per class, every vote includes most of the bank: the random-init
    baseline falls to chance and the gain looks larger than it is. Capping k at the size of a class
    keeps the vote among images that could all be of the query's class; the same k is then used
    for the random-init baseline, so the two are compared alike."""
    if requested is not None:
        return int(requested)
    known = labels[labels >= 0]
    classes = int(torch.unique(known).numel())
    return max(1, min(MAX_K, int(known.numel()) // classes)) if classes else MAX_K


Merge = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
    merge: Merge | None = None,
) -> torch.Tensor:
    """Class scores ``(N_test, C)`` of the weighted kNN (InstDisc, eq. 8 / section 3.5).

    ``merge``: the training features are one shard of a larger set held across processes (each
    rank passes its own shard and the same test features). Each rank finds the ``k`` nearest
    neighbours in its shard; ``merge(similarities, labels)`` concatenates every rank's candidates
    along dim 1 (an all-gather) and the ``k`` best of them are the neighbours in the whole set.
    No rank ever holds the whole training set's features (ImageNet with a ResNet-50: 9.8 GiB).
    """
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    labels = train_labels.to(train.device)
    local_k = min(k, train.shape[0])
    scores = []
    for start in range(0, test.shape[0], chunk):
        sim = test[start : start + chunk] @ train.T
        top_sim, top_idx = sim.topk(local_k, dim=1)
        top_labels = labels[top_idx]
        if merge is not None:
            # Pad to k candidates (a shard may hold fewer) so that every rank's block has one shape;
            # a padded candidate has weight exp(-inf) = 0.
            top_sim = F.pad(top_sim, (0, k - local_k), value=float("-inf"))
            top_sim, top_labels = merge(top_sim, F.pad(top_labels, (0, k - local_k)))
            top_sim, best = top_sim.topk(k, dim=1)
            top_labels = top_labels.gather(1, best)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(top_sim.shape[0], num_classes, device=train.device)
        scores.append(votes.scatter_add_(1, top_labels, weights))
    return torch.cat(scores)


def labelled(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of ``features`` and ``labels`` whose label is known (unlabelled samples are -1)."""
    keep = labels >= 0
    return features[keep.to(features.device)], labels[keep]


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    labels = labels.to(scores.device)
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return {k: float(hits[:, :k].any(dim=1).float().mean()) for k in ks}


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    merge: Merge | None = None,
) -> dict[str, float]:
    """Weighted-kNN top-1 and top-5 accuracy; unlabelled (-1) samples are ignored. ``merge``: the
    training features are this process's shard (see :func:`knn_predict`)."""
    train_features, train_labels = labelled(train_features, train_labels)
    test_features, test_labels = labelled(test_features, test_labels)
    scores = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature, merge=merge)
    acc = topk_accuracy(scores, test_labels)
    return {"top1": acc[1], "top5": acc[5]}
