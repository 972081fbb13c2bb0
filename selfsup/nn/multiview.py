"""One encoder per view, as Contrastive Multiview Coding builds them (Tian, Krishnan, Isola 2019,
arXiv 1906.05849; official code HobbitLong/CMC): a copy of a registered backbone's architecture
for each view's channels, at a fraction of its width ("2xResNet50half")."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .backbones import Backbone, available_backbones, create_backbone

__all__ = ["MultiViewEncoder", "view_encoder"]


class MultiViewEncoder(nn.Module):
    """One encoder per view; the input stacks the views along channels ``(B, sum C_v, H, W)`` and
    the output concatenates the encoders' features (CMC's representation, as its linear probes)."""

    def __init__(self, encoders: list[Backbone], channels: tuple[int, ...]) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.channels = list(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != sum(self.channels):
            raise ConfigError(
                f"CMC's encoders take {sum(self.channels)} channels (views {self.channels}), got {x.shape[1]}."
            )
        return torch.cat([encoder(part) for encoder, part in zip(self.encoders, x.split(self.channels, dim=1))], dim=1)


def view_encoder(backbone: Backbone, in_channels: int, width: float) -> Backbone:
    """A copy of ``backbone``'s architecture for a view of ``in_channels`` channels, ``width``
    times as wide (``width`` is the base channel count of the tiny net and of the ResNets)."""
    args = {**backbone.build_args, "in_channels": in_channels}
    if backbone.arch not in available_backbones():
        raise ConfigError(f"CMC builds one encoder per view from a registered backbone; '{backbone.arch}' is not one.")
    if width != 1.0:
        if "width" not in args:
            raise ConfigError(f"backbone '{backbone.arch}' has no width to scale; set method.width=1.0.")
        args["width"] = max(1, round(args["width"] * width))
    return create_backbone(backbone.arch, **args)
