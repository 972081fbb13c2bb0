"""BYOL — Grill, Strub, Altché, Tallec, Richemond et al. 2020, "Bootstrap Your Own Latent: A New
Approach to Self-Supervised Learning" (arXiv 2006.07733)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..losses import byol_loss, normalized_output_std
from ..nn import MLP, cosine_momentum
from .base import Method, MethodConfig, Progress, RecipeChoice, mlp_dims
from .registry import register

# The official presets per epoch count (deepmind-research byol/configs/byol.py: _LR_PRESETS,
# _WD_PRESETS, _EMA_PRESETS): base lr per 256 images, weight decay, base target momentum. A run
# uses the nearest of 40, 100, 300 and 1,000 epochs on a log scale (nearest_preset).
BYOL_PRESETS: dict[int, tuple[float, float, float]] = {
    40: (0.45, 1e-6, 0.97), 100: (0.45, 1e-6, 0.99), 300: (0.3, 1e-6, 0.99), 1000: (0.2, 1.5e-6, 0.996),
}


def nearest_preset(presets: dict[int, Any], epochs: int) -> Any:
    """The preset of the epoch count nearest ``epochs`` on a log scale (boundaries at the geometric
    means of neighbouring counts: for 40, 100, 300 and 1,000 epochs, 63, 173 and 548)."""
    return presets[min(presets, key=lambda anchor: abs(math.log(max(epochs, 1) / anchor)))]


@dataclass
class BYOLConfig(MethodConfig):
    """BYOL's hyper-parameters (section 3.3 and the official code's presets)."""

    proj_hidden_dim: int = 4096  # projector g: Linear 4096 -> BN -> ReLU -> Linear 256 (section 3.3)
    proj_output_dim: int = 256  # the projection z that the loss compares
    pred_hidden_dim: int = 4096  # predictor q: the same MLP shape, 256 -> 4096 -> 256
    # Target momentum starts at tau_base and rises to 1 along a cosine (section 3.2). The engine
    # sets it from the official preset for the run's epoch count (BYOL.defaults_for: 0.97 for 40
    # epochs, 0.99 for 100 and 300, 0.996 for 1,000); 0.99 when the method is built directly.
    tau_base: float = 0.99
    # BN statistics over the global batch when distributed (the official code's cross_replica_axis).
    sync_bn: bool = True

    def validate_fields(self) -> None:
        if not 0.0 <= self.tau_base <= 1.0:
            raise ConfigError(f"tau_base must be in [0, 1], got {self.tau_base} (BYOL: 0.99, or 0.996 for 1,000 epochs).")
        self.check_positive("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim")


@register
class BYOL(Method):
    """An online network (backbone, projector, predictor) predicts the projection that a target
    network (backbone, projector) gives of the other view; the target is an exponential moving
    average of the online weights and never receives gradients.

    The target starts as a copy of the online network (the official code draws it from another
    seed and reports no difference) and runs in training mode like the online one: its BN
    normalizes with the statistics of the current batch, as ``is_training=True`` in the official
    code. The engine updates it after each optimizer step from :meth:`ema_pairs` with
    :meth:`ema_momentum`. Everything the loss needs is per sample, so the mean over each process's
    batch, averaged by DDP, is the loss of the global batch; with ``sync_bn`` the BN statistics are
    those of the global batch too, and the EMA of identical online weights keeps the targets
    identical on every process.
    """

    name = "byol"
    description = "bootstrap: online predictor regresses an EMA target's projection, no negatives (Grill et al. 2020)"
    paper = "arXiv 2006.07733"
    Config = BYOLConfig
    # LARS (trust coefficient 1e-3, biases and BN parameters excluded from the ratio and the
    # decay: the engine's LARS excludes every parameter with ndim <= 1), 10 warmup epochs, cosine
    # to 0 (section 3.3, byol/configs/byol.py). lr, weight decay and tau_base come from the
    # official preset for the epoch count (defaults_for); these are the 1,000-epoch preset's.
    optim_defaults = {"optimizer": "lars", "lr": 0.2, "weight_decay": 1.5e-6}

    @classmethod
    def defaults_for(cls, backbone: str, epochs: int) -> dict[str, Any]:
        lr, weight_decay, tau = nearest_preset(BYOL_PRESETS, epochs)
        return {"optimizer": "lars", "lr": lr, "weight_decay": weight_decay, "method_args": {"tau_base": tau}}

    ema_targets = {"backbone": "target_backbone", "projector": "target_projector"}
    recipe = RecipeChoice("byol")

    def __init__(self, backbone, config: BYOLConfig) -> None:  # noqa: ANN001
        super().__init__(backbone, config)
        self.projector = MLP(backbone.feature_dim, config.proj_hidden_dim, config.proj_output_dim)
        self.predictor = MLP(config.proj_output_dim, config.pred_hidden_dim, config.proj_output_dim)
        self.make_ema_targets()

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        # Each view is its own pass, so BN normalizes each view with its own batch statistics, as
        # in the official code (the two views differ in distribution: blur vs solarization).
        projections = [self.projector(self.backbone(view)) for view in views[:2]]
        predictions = [self.predictor(z) for z in projections]
        with torch.no_grad():
            targets = [self.target_projector(self.target_backbone(view)) for view in views[:2]]
        loss = byol_loss(predictions[0], predictions[1], targets[0], targets[1])
        # The collapse monitor of SimSiam's Figure 2 on the online projection (1/sqrt(d) if spread).
        return {"loss": loss, "output_std": normalized_output_std(projections[0])}

    def describe(self) -> dict[str, Any]:
        return {"tau_base": self.config.tau_base, "projector": mlp_dims(self.projector), "predictor": mlp_dims(self.predictor)}

    def ema_momentum(self, progress: Progress) -> float:
        """``tau = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2`` at step k of K (section 3.2)."""
        return cosine_momentum(self.config.tau_base, progress.fraction)
