"""Optimizers (SGD, LARS, AdamW) and per-step schedules computed up front (as in DINO)."""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import torch

from ..errors import ConfigError


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017, arXiv 1708.03888) in the two forms the reference code uses.

    For each parameter the update is SGD with momentum on ``u = g + wd * w`` scaled by a trust
    ratio ``r``:

    - ``trust="update_norm"`` (SimCLR appendix B.1, BYOL, MoCo v3 ``moco/optimizer.py``):
      ``r = eta * |w| / |g + wd * w|``;
    - ``trust="larc"`` (NVIDIA apex's LARC, used by SwAV's ``main_swav.py``, and solo-learn's
      ``solo/utils/lars.py``): ``r = eta * |w| / (|g| + wd * |w| + 1e-8)``.

    With ``clip_lr`` (LARC's clipping mode, solo-learn's ``clip_lars_lr``) the ratio becomes
    ``min(r / lr, 1)``: the step of a layer is ``min(r, lr) * u``, i.e. the trust ratio caps the
    learning rate instead of multiplying it. ``r`` is 1 where ``|w|`` or ``|g|`` is 0. Groups with
    ``lars_exclude=True`` (biases and normalization weights) get neither weight decay nor the
    ratio, as in the official code.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        nesterov: bool = False,
        clip_lr: bool = False,
        trust: str = "update_norm",
    ) -> None:
        if trust not in ("update_norm", "larc"):
            raise ConfigError(f"unknown LARS trust ratio '{trust}'; use update_norm or larc.")
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, nesterov=nesterov, lars_exclude=False,
            clip_lr=clip_lr, trust=trust,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if not group["lars_exclude"]:
                wd = group["weight_decay"]
                larc = group.get("trust", "update_norm") == "larc"
                param_norms = torch._foreach_norm(params)
                raw_norms = torch._foreach_norm(grads)
                if wd:
                    grads = torch._foreach_add(grads, params, alpha=wd)
                update_norms = raw_norms if larc else torch._foreach_norm(grads)
                scales = []
                for w_norm, g_norm, u_norm in zip(param_norms, raw_norms, update_norms):
                    denominator = g_norm + wd * w_norm + 1e-8 if larc else u_norm
                    ratio = group["eta"] * w_norm / denominator
                    if group.get("clip_lr", False):
                        ratio = torch.clamp(ratio / group["lr"], max=1.0)
                    valid = (w_norm > 0) & ((g_norm if larc else u_norm) > 0)
                    scales.append(torch.where(valid, ratio, torch.ones_like(ratio)))
                grads = torch._foreach_mul(grads, scales)
            for p, g in zip(params, grads):
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                update = g.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.add_(update, alpha=-group["lr"])
        return loss


def build_optimizer(
    groups: list[dict[str, Any]], name: str, lr: float, weight_decay: float, momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999), exclude_bias_norm: bool | None = None, lars_eta: float = 0.001,
    lars_clip_lr: bool = False, lars_trust: str = "update_norm",
) -> torch.optim.Optimizer:
    """Build the optimizer over a method's parameter groups.

    ``exclude_bias_norm`` (None: true for LARS and AdamW, false for SGD) puts biases and
    normalization parameters (ndim <= 1) in groups without weight decay and, for LARS, without
    the trust ratio, as SimCLR, BYOL, MoCo v3 (ResNet) and DINO do; SGD decays all parameters, as
    MoCo and SimSiam do, and so do SwAV's LARC and MoCo v3's ViT AdamW. Every group records its
    ``base_lr`` and ``base_wd`` for the schedules. ``lars_*``: see :class:`LARS`.
    """
    if name not in ("sgd", "lars", "adamw"):
        raise ConfigError(f"unknown optimizer '{name}'; use sgd, lars or adamw.")
    if exclude_bias_norm is None:
        exclude_bias_norm = name in ("lars", "adamw")
    torch_groups = []
    for group in groups:
        options = {k: v for k, v in group.items() if k != "params"}
        params = [p for p in group["params"] if p.requires_grad]
        # (parameters, weight decay, LARS-excluded)
        parts = [([p for p in params if p.ndim > 1 or not exclude_bias_norm], weight_decay, False)]
        if exclude_bias_norm:  # biases and norms apart: no weight decay, no LARS ratio
            parts.append(([p for p in params if p.ndim <= 1], 0.0, True))
        for part, decay, excluded in parts:
            if part:
                torch_groups.append({"params": part, **options, "weight_decay": decay, "lars_exclude": excluded})
    for group in torch_groups:
        group.setdefault("fixed_lr", False)
        group["base_lr"] = lr
        group["base_wd"] = group["weight_decay"]
        group["lr"] = lr
        if name != "lars":
            group.pop("lars_exclude")
    if name == "sgd":
        return torch.optim.SGD(torch_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(torch_groups, lr=lr, weight_decay=weight_decay, betas=betas)
    return LARS(
        torch_groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_eta, clip_lr=lars_clip_lr,
        trust=lars_trust,
    )


def scaled_lr(base_lr: float, batch_size: int, rule: str = "linear") -> float:
    """The papers' batch-size scaling: ``base * B / 256`` (linear; SimCLR, MoCo, BYOL, DINO),
    ``base * sqrt(B) / 16`` (square root; SimCLR's small-batch variant, so that B=256 is the same)."""
    if rule == "linear":
        return base_lr * batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size) / 16
    if rule == "none":
        return base_lr
    raise ConfigError(f"unknown lr_scaling '{rule}'; use linear, sqrt or none.")


def _warmup(start: float, peak: float, steps: int) -> np.ndarray:
    """The linear warmup's values: ``steps`` of them, from ``start`` up to (not including) ``peak``."""
    return np.linspace(start, peak, steps, endpoint=False) if steps else np.zeros(0)


def cosine_schedule(
    peak: float, final: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Per-step values: linear warmup from ``warmup_start`` to ``peak``, then half-cosine to ``final``."""
    warmup_steps = min(warmup_steps, total_steps)
    rest = total_steps - warmup_steps
    cosine = final + 0.5 * (peak - final) * (1 + np.cos(np.pi * np.arange(rest) / max(rest, 1)))
    return np.concatenate((_warmup(warmup_start, peak, warmup_steps), cosine)).astype(np.float64)


def step_schedule(
    peak: float, total_steps: int, milestones: Iterable[int], factor: float = 0.1, warmup_steps: int = 0,
    warmup_start: float = 0.0,
) -> np.ndarray:
    """Per-step values: optional linear warmup to ``peak``, then ``peak * factor^k`` after the k-th
    milestone step (MoCo v1 ``--schedule 120 160``, InstDisc, CMC ``--lr_decay_epochs``: x0.1)."""
    warmup_steps = min(warmup_steps, total_steps)
    steps = np.arange(warmup_steps, total_steps)
    drops = np.zeros(len(steps))
    for milestone in milestones:
        drops += steps >= milestone
    return np.concatenate((_warmup(warmup_start, peak, warmup_steps), peak * factor**drops)).astype(np.float64)


def apply_schedule(optimizer: torch.optim.Optimizer, lr: float, wd: float | None, base_wd: float | None = None) -> None:
    """Set the learning rate (and weight decay, if scheduled) of every group for this step."""
    for group in optimizer.param_groups:
        if not group.get("fixed_lr"):
            group["lr"] = lr
        if wd is not None and group.get("base_wd", 0.0) > 0:
            group["weight_decay"] = wd
