"""Linear probe on frozen features, extracted once.

Features are standardized with the training set's mean and deviation (as a BatchNorm without
affine parameters would do at convergence, cf. MAE's linear probe), then a linear classifier is
trained with SGD + Nesterov momentum and a cosine schedule. Because the features are fixed, 100
epochs over 50,000 CIFAR features take seconds, even on a CPU.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from .knn import labelled, topk_accuracy


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    epochs: int = 100,
    batch_size: int = 512,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    seed: int = 0,
) -> dict[str, float]:
    """Train ``Linear(D, C)`` on ``train_features``; top-1/top-5 on ``test_features``."""
    device = train_features.device
    x, y = labelled(train_features.float(), train_labels.to(device))
    xt, yt = labelled(test_features.float(), test_labels.to(device))
    mean, std = x.mean(0, keepdim=True), x.std(0, keepdim=True).clamp_min(1e-6)
    x, xt = (x - mean) / std, (xt - mean) / std
    generator = torch.Generator(device="cpu").manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], num_classes).to(device)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=generator) if device.type == "cpu" else head.weight.normal_(0, 0.01)
        head.bias.zero_()
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    total = epochs * max(1, math.ceil(x.shape[0] / batch_size))
    steps = itertools.count()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator).to(device)
        for start, step in zip(range(0, x.shape[0], batch_size), steps):  # zip stops before drawing an unused step
            idx = order[start : start + batch_size]
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(head(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        acc = topk_accuracy(head(xt), yt)
    return {"top1": acc[1], "top5": acc[5]}
