"""VICReg — Bardes, Ponce, LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning" (arXiv 2105.04906); official code: facebookresearch/vicreg."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..losses import normalized_output_std, vicreg_terms
from ..nn import gather_with_grad
from ..nn.backbones import SMALL_IMAGE
from .barlow_twins import projector_checks, wide_projector
from .base import Method, MethodConfig, RecipeChoice, mlp_dims
from .registry import register


@dataclass
class VICRegConfig(MethodConfig):
    """VICReg's hyper-parameters (section 4.1 and the official main_vicreg.py)."""

    # Expander widths: 8192-8192-8192 on ImageNet (official --mlp); None picks 8192 above 64 px
    # and 2048 at CIFAR scale (solo-learn's scripts/pretrain/cifar/vicreg.yaml).
    proj_hidden_dim: int | None = None  # width of the hidden layers
    proj_output_dim: int | None = None  # width of the embedding the three terms read
    proj_layers: int = 3  # linear layers: Linear-BN-ReLU twice, then a linear output (official Projector)
    invariance_weight: float = 25.0  # lambda (section 4.1; official --sim-coeff)
    variance_weight: float = 25.0  # mu (section 4.1; official --std-coeff, which halves the sum of the two views)
    covariance_weight: float = 1.0  # nu (section 4.1; official --cov-coeff)
    variance_target: float = 1.0  # gamma, the std each dimension is pushed above (eq. 1)
    variance_eps: float = 1e-4  # epsilon in sqrt(Var + eps) (eq. 1)
    sync_bn: bool = True  # BN over the global batch when distributed (the official code converts to SyncBatchNorm)

    def validate_fields(self) -> None:
        projector_checks(self, "vicreg")
        weights = (self.invariance_weight, self.variance_weight, self.covariance_weight)
        if min(weights) < 0 or max(weights) <= 0:
            raise ConfigError(f"vicreg loss weights must be >= 0 and not all 0; got {list(weights)} (paper: 25, 25, 1).")
        if self.variance_target <= 0 or self.variance_eps <= 0:
            raise ConfigError("vicreg variance_target and variance_eps must be > 0 (paper: 1 and 1e-4).")


@register
class VICReg(Method):
    """Two views through one encoder (backbone + expander); the embeddings of the two views are
    pulled together (invariance, MSE) while each view's embedding keeps every dimension's standard
    deviation above ``gamma`` (variance, a hinge) and its dimensions decorrelated (covariance,
    the squared off-diagonal covariances): ``25 s + 25 v + 1 c`` (:func:`selfsup.losses.vicreg`).
    The three terms are logged separately (``invariance``, ``variance``, ``covariance``).

    Across processes the embeddings of every process are all-gathered with gradient (as the
    official ``FullGatherLayer``), so the variance and covariance are the global batch's; every
    process computes the same loss and DDP's average of the gathered gradients is the global one.
    """

    name = "vicreg"
    description = "variance-invariance-covariance regularization of two views' embeddings, no negatives (Bardes et al. 2022)"
    paper = "arXiv 2105.04906"
    Config = VICRegConfig
    # LARS, base lr 0.2 per 256 images, weight decay 1e-6, biases and BN excluded from both, 10
    # warmup epochs then cosine (section 4.1 and main_vicreg.py: --base-lr 0.2 --wd 1e-6).
    optim_defaults = {"optimizer": "lars", "lr": 0.2, "weight_decay": 1e-6}

    def __init__(self, backbone, config: VICRegConfig) -> None:  # noqa: ANN001
        super().__init__(backbone, config)
        self.projector = wide_projector(backbone, config)

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {"weights": [c.invariance_weight, c.variance_weight, c.covariance_weight], "projector": mlp_dims(self.projector)}

    def default_recipe(self, image_size: int) -> RecipeChoice:
        if image_size > SMALL_IMAGE:
            return RecipeChoice("byol")  # the official augmentations.py: BYOL's asymmetric views
        # solo-learn's cifar/vicreg.yaml: crop scale (0.2, 1), no blur, solarization 0.1 in both views.
        return RecipeChoice("byol", {"crop_scale": (0.2, 1.0), "solarize_p": 0.1})

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        config = self.config
        z1, z2 = (self.projector(self.backbone(view)) for view in views[:2])
        invariance, variance, covariance = vicreg_terms(
            gather_with_grad(z1), gather_with_grad(z2), config.variance_target, config.variance_eps
        )
        loss = config.invariance_weight * invariance + config.variance_weight * variance + config.covariance_weight * covariance
        return {
            "loss": loss, "invariance": invariance.detach(), "variance": variance.detach(),
            "covariance": covariance.detach(), "output_std": normalized_output_std(z1),
        }
