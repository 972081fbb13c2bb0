"""Exponential moving averages of networks (BYOL, MoCo, DINO targets)."""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_momentum(base: float, progress: float, final: float = 1.0) -> float:
    """BYOL's schedule (Grill et al. 2020, section 3.2): ``1 - (1 - base) * (cos(pi * p) + 1) / 2``
    for training progress ``p`` in [0, 1], rising from ``base`` to ``final``."""
    progress = min(max(progress, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online`` for parameters; buffers (BN
    running statistics) are copied from the online network. (The official BYOL and MoCo code
    average only the parameters and let the target keep the running statistics of its own
    train-mode passes; those matter only if the target is run in eval mode, which selfsup's
    BYOL/MoCo never do, and copying keeps them identical on every process.)"""
    online_params = [p.detach() for p in online.parameters()]
    target_params = list(target.parameters())
    if len(online_params) != len(target_params):
        raise ValueError("EMA pair has different architectures")
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, online_params, alpha=1.0 - momentum)
    for b_online, b_target in zip(online.buffers(), target.buffers()):
        b_target.copy_(b_online)
