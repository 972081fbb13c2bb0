"""SimCLR — Chen, Kornblith, Norouzi, Hinton 2020, "A Simple Framework for Contrastive Learning
of Visual Representations" (arXiv 2002.05709)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import nt_xent_anchors
from ..nn import MLP, gather_with_grad, get_rank
from .base import Method, MethodConfig, RecipeChoice
from .registry import register


@dataclass
class SimCLRConfig(MethodConfig):
    temperature: float = 0.5  # NT-Xent temperature: 0.5 on CIFAR (appendix B.9), 0.1 at ImageNet scale
    proj_hidden_dim: int = 2048  # hidden width of the projection MLP
    proj_output_dim: int = 128  # the embedding the loss sees (section 4.2)
    proj_layers: int = 2  # linear layers in the projection head (SimCLR v1: 2; v2: 3)
    # Global BN: mean and variance aggregated over all devices (section 2.2, "Global BN"), so that
    # no device's statistics can leak which of its samples are positives.
    sync_bn: bool = True


@register
class SimCLR(Method):
    """Two views of each image; a projection MLP; NT-Xent over all 2N-2 in-batch negatives.

    Across processes the embeddings are all-gathered with gradient, so the loss and its gradient
    are those of the global batch (``selfsup.nn.dist.gather_with_grad``).
    """

    name = "simclr"
    description = "contrastive: two views, projection MLP, NT-Xent over in-batch negatives (Chen et al. 2020)"
    paper = "arXiv 2002.05709"
    Config = SimCLRConfig
    # LARS, base lr 0.3 per 256 images with linear scaling, weight decay 1e-6 (appendix B.1);
    # solo-learn and lightly use about these values on CIFAR as well.
    optim_defaults = {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-6}

    def __init__(self, backbone, config: SimCLRConfig) -> None:  # noqa: ANN001
        super().__init__(backbone, config)
        self.projector = MLP(
            backbone.feature_dim, config.proj_hidden_dim, config.proj_output_dim, num_layers=config.proj_layers
        )

    def default_recipe(self, image_size: int) -> RecipeChoice:
        return RecipeChoice("simclr")

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        batch = views[0].shape[0]
        # One backbone pass over both views: fewer kernel launches, and BN sees 2N samples as in
        # the reference implementation.
        z = self.projector(self.backbone(torch.cat(views[:2])))
        z1, z2 = z[:batch], z[batch:]
        all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
        loss = nt_xent_anchors(z1, z2, all1, all2, get_rank() * batch, self.config.temperature)
        return {"loss": loss}
