"""Exponential moving averages of networks (BYOL, MoCo, DINO targets)."""

from __future__ import annotations

import copy
import math
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def frozen_copy(module: M) -> M:
    """A copy of ``module`` that no gradient updates: an EMA target (BYOL's target, MoCo's key
    encoder, DINO's teacher), moved only by :func:`ema_update`."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


def cosine_momentum(base: float, progress: float, final: float = 1.0) -> float:
    """BYOL's schedule (Grill et al. 2020, section 3.2): ``1 - (1 - base) * (cos(pi * p) + 1) / 2``
    for training progress ``p`` in [0, 1], rising from ``base`` to ``final``."""
    progress = min(max(progress, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online`` for parameters only, as the
    official BYOL, MoCo (v1/v2 ``_momentum_update_key_encoder``, v3) and DINO code: buffers (BN
    running statistics) are left to the target, which updates them in its own train-mode passes
    on the views it sees. So DINO's teacher, the network DINO evaluates, is evaluated with the
    statistics of its own inputs (the global crops), not with the student's. Across processes the
    targets' statistics stay identical: synchronized BN computes them over the global batch, and
    the engine averages per-process BN statistics after every step."""
    online_params = [p.detach() for p in online.parameters()]
    target_params = list(target.parameters())
    if len(online_params) != len(target_params):
        raise ValueError("EMA pair has different architectures")
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, online_params, alpha=1.0 - momentum)
