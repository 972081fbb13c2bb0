"""Barlow Twins — Zbontar, Jing, Misra, LeCun, Deny 2021, "Barlow Twins: Self-Supervised Learning
via Redundancy Reduction" (arXiv 2103.03230); official code: facebookresearch/barlowtwins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..losses import barlow_twins, normalized_output_std
from ..nn import MLP, gather_with_grad
from .base import Method, MethodConfig, RecipeChoice, mlp_dims, small_images
from .registry import register


@dataclass
class BarlowTwinsConfig(MethodConfig):
    """Barlow Twins' hyper-parameters (section 4 and the official main.py)."""

    # Projector widths: 8192-8192-8192 on ImageNet (official --projector); None picks 8192 above
    # 64 px and 2048 at CIFAR scale (solo-learn's scripts/pretrain/cifar/barlow.yaml).
    proj_hidden_dim: int | None = None  # width of the hidden layers
    proj_output_dim: int | None = None  # width of the output (the cross-correlation is output x output)
    proj_layers: int = 3  # linear layers: Linear-BN-ReLU twice, then a linear output (official)
    lambda_: float = 0.0051  # weight of the off-diagonal terms (official --lambd; paper section 4: 5e-3)
    # A constant factor on the loss: 1 in the official code; solo-learn's CIFAR recipe uses 0.1
    # (its scale_loss). With LARS it only changes the step of the biases and BN parameters.
    scale_loss: float = 1.0
    # BN over the global batch when distributed: the official code converts the whole model to
    # SyncBatchNorm, the loss's standardization included.
    sync_bn: bool = True

    def validate_fields(self) -> None:
        projector_checks(self, "barlow_twins")
        if self.lambda_ < 0 or self.scale_loss <= 0:
            raise ConfigError(f"barlow_twins lambda_ must be >= 0 and scale_loss > 0; got {self.lambda_} and {self.scale_loss}.")


def projector_width(value: int | None, backbone) -> int:  # noqa: ANN001
    """A projector width left unset: 8192 (the papers' ImageNet width) above 64 px, 2048 at CIFAR scale."""
    if value is not None:
        return value
    return 2048 if small_images(backbone) else 8192


def projector_checks(config: MethodConfig, method: str) -> None:
    """Barlow Twins' and VICReg's projector widths (>= 1 or None) and layer count (>= 1)."""
    unset = "{name} must be >= 1 (or null for the default), got {value}."
    config.check_positive("proj_hidden_dim", "proj_output_dim", message=f"{method} {unset}")
    config.check_positive("proj_layers", message=f"{method} {{name}} must be >= 1, got {{value}}.")


def wide_projector(backbone, config: MethodConfig) -> MLP:  # noqa: ANN001
    """Barlow Twins' and VICReg's projector: widths from ``projector_width``, ``proj_layers`` linear layers."""
    hidden = projector_width(config.proj_hidden_dim, backbone)
    output = projector_width(config.proj_output_dim, backbone)
    return MLP(backbone.feature_dim, hidden, output, num_layers=config.proj_layers)


@register
class BarlowTwins(Method):
    """Two views through one encoder (backbone + projector); the cross-correlation matrix of the
    two views' batch-standardized projections is pushed to the identity:
    ``sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2`` (:func:`selfsup.losses.barlow_twins`).

    Across processes the projections of every process are all-gathered with gradient, so the
    standardization and the cross-correlation are those of the global batch, as the official code
    (SyncBatchNorm + an all-reduce of ``C``); every process computes the same loss, and the
    gather's backward sums each process's gradient, so DDP's average is the global gradient.
    """

    name = "barlow_twins"
    description = "redundancy reduction: cross-correlation of two views' projections pushed to the identity (Zbontar et al. 2021)"
    paper = "arXiv 2103.03230"
    Config = BarlowTwinsConfig
    # LARS, lr 0.2 per 256 images for the weights, weight decay 1.5e-6 (paper section 4; the
    # official main.py: --learning-rate-weights 0.2, its biases and BN parameters at 0.0048 with
    # no decay and no LARS adaptation; the engine runs them at the weights' rate), 10 warmup epochs.
    optim_defaults = {"optimizer": "lars", "lr": 0.2, "weight_decay": 1.5e-6}
    # BYOL's asymmetric views (official Transform: blur 1.0 / 0.1, solarization 0 / 0.2), blur
    # off on small images (solo-learn's cifar asymmetric.yaml).
    recipe = RecipeChoice("byol")

    def __init__(self, backbone, config: BarlowTwinsConfig) -> None:  # noqa: ANN001
        super().__init__(backbone, config)
        self.projector = wide_projector(backbone, config)

    def describe(self) -> dict[str, Any]:
        return {"lambda": self.config.lambda_, "scale_loss": self.config.scale_loss, "projector": mlp_dims(self.projector)}

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        # Each view is its own pass (BN statistics per view), as the official forward.
        z1, z2 = (self.projector(self.backbone(view)) for view in views[:2])
        loss = barlow_twins(gather_with_grad(z1), gather_with_grad(z2), self.config.lambda_)
        # The collapse monitor of SimSiam's Figure 2: ~1/sqrt(d) when spread, 0 when collapsed.
        return {"loss": self.config.scale_loss * loss, "output_std": normalized_output_std(z1)}
