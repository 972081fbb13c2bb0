"""MoCo v3 — Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers" (arXiv 2104.02057)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..losses import mocov3_loss
from ..nn import MLP, gather, get_rank
from ..nn.backbones import is_vit
from .base import Method, MethodConfig, RecipeChoice, mlp_dims
from .byol import nearest_preset
from .registry import register


@dataclass
class MoCoV3Config(MethodConfig):
    """MoCo v3's hyper-parameters (section 4 and appendix of arXiv 2104.02057, and the official
    code's reference setups)."""

    # Softmax temperature: 1.0 for ResNets (the official default), 0.2 for ViTs (appendix:
    # "temperature tau = 0.2"); None picks it from the backbone.
    temperature: float | None = None
    # Momentum encoder: m rises from this base to 1 along a half cosine (the official --moco-m-cos).
    # The engine sets it from the reference setup for the epoch count (defaults_for: 0.99 for 100
    # and 300 epochs, 0.996 for the 1,000-epoch ResNet-50 run).
    ema_momentum: float = 0.99
    embed_dim: int = 256  # output of projector and predictor (section 4)
    proj_hidden_dim: int = 4096  # hidden width of projector and predictor MLPs (section 4)
    pred_hidden_dim: int = 4096  # hidden width of the predictor MLP (section 4; the official --mlp-dim, shared by both heads)
    proj_layers: int | None = None  # linear layers in the projector; None: 2 for ResNets, 3 for ViTs (section 4)
    # ViTs only: the random patch projection is initialized (Xavier-uniform, as the official code)
    # and frozen, the paper's fix for training instability (section 4.2, "stop-grad-conv1").
    freeze_patch_embed: bool = True
    sync_bn: bool = True  # BN over the global batch when distributed (the official code converts to SyncBN)

    def validate_fields(self) -> None:
        if not 0.0 <= self.ema_momentum <= 1.0:
            raise ConfigError(f"ema_momentum must be in [0, 1], got {self.ema_momentum} (MoCo v3: 0.99).")
        self.check_positive("embed_dim", "proj_hidden_dim", "pred_hidden_dim")
        self.check_positive("proj_layers", message="{name} must be >= 1 (or null), got {value}.")


def freeze_patch_projection(backbone: nn.Module) -> nn.Module:
    """Re-initialize the ViT's patch projection uniformly in +-sqrt(6 / (fan_in + fan_out)) (Xavier,
    the patch projection seen as a linear layer, as the official code) and stop its gradient."""
    embed = getattr(backbone.body, "patch_embed", None)
    if embed is None or not hasattr(embed, "proj"):
        raise ConfigError(f"freeze_patch_embed needs a ViT with a patch embedding; '{backbone.arch}' has none.")
    weight = embed.proj.weight
    bound = math.sqrt(6.0 / (weight[0].numel() + weight.shape[0]))
    with torch.no_grad():
        nn.init.uniform_(weight, -bound, bound)
        if embed.proj.bias is not None:
            nn.init.zeros_(embed.proj.bias)
    for param in embed.parameters():
        param.requires_grad_(False)
    return embed


@register
class MoCoV3(Method):
    """Two views; query encoder = backbone + projector + predictor, key encoder = momentum copy of
    backbone + projector; no queue: the negatives of each query are the keys of the other images
    in the batch, and the loss is symmetrized, ``ctr(q1, k2) + ctr(q2, k1)`` scaled by ``2 t``
    (Algorithm 1; :func:`selfsup.losses.mocov3_loss`).

    Each view goes through the encoders on its own, as the official code (BN statistics per view).
    Across processes the keys of all ranks are all-gathered and the positive of query n is key
    ``rank * B + n``; keys come from the momentum encoder and carry no gradient, so the plain
    all-gather is exact, and the per-rank losses averaged by DDP give the global batch's loss and
    gradient. The engine applies the EMA (:meth:`ema_pairs`) with the cosine momentum after each
    step; identical online weights keep the momentum encoders identical on every rank.
    """

    name = "moco_v3"
    description = "contrastive: momentum encoder, predictor, symmetrized in-batch InfoNCE; ResNet or ViT (Chen et al. 2021)"
    paper = "arXiv 2104.02057"
    Config = MoCoV3Config
    # ResNet: LARS (trust 0.001; biases and BN excluded: moco/optimizer.py adapts and decays
    # p.ndim > 1 only), lr 0.6 per 256 images, weight decay 1e-6, 10 warmup epochs, cosine
    # (main_moco.py defaults, CONFIG.md's 100-epoch ResNet-50 setup).
    optim_defaults = {"optimizer": "lars", "lr": 0.6, "weight_decay": 1e-6}
    # ViT: AdamW, lr 1.5e-4 per 256 images, weight decay 0.1 on every parameter (torch.optim.AdamW
    # over model.parameters()), 40 warmup epochs (CONFIG.md's ViT-Small/Base setups, 300 epochs).
    vit_optim_defaults = {"optimizer": "adamw", "lr": 1.5e-4, "weight_decay": 0.1, "warmup_epochs": 40.0, "exclude_bias_norm": False}
    # CONFIG.md's ResNet-50 setups by epochs: (lr, weight decay, base momentum).
    resnet_presets = {100: (0.6, 1e-6, 0.99), 300: (0.3, 1e-6, 0.99), 1000: (0.3, 1.5e-6, 0.996)}

    @classmethod
    def defaults_for(cls, backbone: str, epochs: int) -> dict[str, Any]:
        """ViTs: the ViT setup. ResNets: the setup nearest the epoch count on a log scale (up to
        173 epochs the 100-epoch one, up to 547 the 300-epoch one, then the 1,000-epoch one)."""
        if is_vit(backbone):
            return dict(cls.vit_optim_defaults)
        lr, weight_decay, momentum = nearest_preset(cls.resnet_presets, epochs)
        return {**cls.optim_defaults, "lr": lr, "weight_decay": weight_decay, "method_args": {"ema_momentum": momentum}}

    ema_targets = {"backbone": "key_backbone", "projector": "key_projector"}

    def __init__(self, backbone, config: MoCoV3Config) -> None:  # noqa: ANN001
        super().__init__(backbone, config)
        vit = is_vit(backbone)
        self.temperature = config.temperature if config.temperature is not None else (0.2 if vit else 1.0)
        if vit and config.freeze_patch_embed:
            freeze_patch_projection(backbone)
        layers = config.proj_layers or (3 if vit else 2)
        # Every MLP ends in BN without affine parameters, as the official _build_mlp.
        self.projector = MLP(
            backbone.feature_dim, config.proj_hidden_dim, config.embed_dim, layers, last_bn=True, last_bn_affine=False
        )
        self.predictor = MLP(
            config.embed_dim, config.pred_hidden_dim, config.embed_dim, 2, last_bn=vit, last_bn_affine=False
        )
        self.make_ema_targets()

    def default_recipe(self, image_size: int) -> RecipeChoice:
        # BYOL's asymmetric views (blur 1.0 / 0.1, solarize 0 / 0.2), crop scale from 0.08 for ViTs
        # and 0.2 for ResNets (the official --crop-min of each reference setup).
        return RecipeChoice("byol", {} if is_vit(self.backbone) else {"crop_scale": (0.2, 1.0)})

    def describe(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature, "projector": mlp_dims(self.projector), "predictor": mlp_dims(self.predictor),
            "frozen_patch_embed": is_vit(self.backbone) and self.config.freeze_patch_embed,
        }

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        q1, q2 = (self.predictor(self.projector(self.backbone(x))) for x in views[:2])
        with torch.no_grad():
            k1, k2 = (gather(self.key_projector(self.key_backbone(x))) for x in views[:2])
        loss = mocov3_loss(q1, q2, k1, k2, self.temperature, offset=get_rank() * views[0].shape[0])
        return {"loss": loss}
