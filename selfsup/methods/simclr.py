"""SimCLR — Chen, Kornblith, Norouzi, Hinton 2020, "A Simple Framework for Contrastive Learning
of Visual Representations" (arXiv 2002.05709)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..losses import nt_xent_anchors
from ..nn import MLP, gather_with_grad, get_rank
from .base import Method, MethodConfig, mlp_dims, small_images
from .registry import register


@dataclass
class SimCLRConfig(MethodConfig):
    """SimCLR's hyper-parameters as the official code (google-research/simclr, v1: ``run.py``
    flags, ``model_util.projection_head``) sets them."""

    # NT-Xent temperature. None: 0.5 at <= 64 px (the README's CIFAR-10 command, --temperature=0.5)
    # and 0.1 above (the README's ImageNet command and run.py's default).
    temperature: float | None = None
    # Hidden width of the projection MLP. None: the backbone's feature width (projection_head:
    # the hidden layer keeps hiddens.shape[-1], 2,048 for ResNet-50, 512 for ResNet-18).
    proj_hidden_dim: int | None = None
    proj_output_dim: int = 128  # the embedding the loss sees (--head_proj_dim 128, section 4.2)
    proj_layers: int = 2  # linear layers (v1: --num_nlh_layers 1, one hidden layer; v2 uses 3)
    proj_batch_norm: bool = True  # BN after the hidden linear layer (linear_layer(use_bn=True))
    # BN on the output too, with a scale and no shift (linear_layer(use_bias=False, use_bn=True):
    # batch_norm_relu(center=False)). solo-learn's CIFAR projector has no BN at all.
    proj_last_bn: bool = True
    # Global BN: mean and variance aggregated over all devices (section 2.2, "Global BN"), so that
    # no device's statistics can leak which of its samples are positives.
    sync_bn: bool = True

    def validate_fields(self) -> None:
        if self.proj_layers < 1 or self.proj_output_dim < 1 or (self.proj_hidden_dim is not None and self.proj_hidden_dim < 1):
            raise ConfigError("simclr proj_layers, proj_output_dim and proj_hidden_dim must be >= 1.")


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
    # LARS (trust coefficient 0.001, biases and BN excluded), base lr 0.3 per 256 images with
    # linear scaling, weight decay 1e-6, 10 warmup epochs then cosine (appendix B.1; run.py's
    # defaults and the README's ImageNet command). The CIFAR-10 recipes are bundled configs.
    optim_defaults = {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-6}

    def __init__(self, backbone, config: SimCLRConfig) -> None:  # noqa: ANN001
        super().__init__(backbone, config)
        small = small_images(backbone)
        self.temperature = config.temperature if config.temperature is not None else (0.5 if small else 0.1)
        self.projector = MLP(
            backbone.feature_dim, config.proj_hidden_dim or backbone.feature_dim, config.proj_output_dim,
            num_layers=config.proj_layers, batch_norm=config.proj_batch_norm, last_bn=config.proj_last_bn,
            last_bn_bias=False,
        )

    def describe(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "projector": mlp_dims(self.projector)}

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        batch = views[0].shape[0]
        # One backbone pass over both views: fewer kernel launches, and BN sees 2N samples as in
        # the reference implementation.
        z = self.projector(self.backbone(torch.cat(views[:2])))
        z1, z2 = z[:batch], z[batch:]
        all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
        loss = nt_xent_anchors(z1, z2, all1, all2, get_rank() * batch, self.temperature)
        return {"loss": loss}
