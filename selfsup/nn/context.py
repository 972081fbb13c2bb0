"""CPC's autoregressive context network over a grid of patch features (van den Oord, Li, Vinyals
2018, arXiv 1807.03748, section 3.3; Hénaff et al. 2019, arXiv 1905.09272): masked residual
blocks in the PixelCNN manner, so the context at row r sees rows <= r only, and :func:`orient`,
which turns a grid so that the other prediction directions of CPC v2 become "down"."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ContextNetwork", "orient"]


class RowCausalConv2d(nn.Module):
    """A 3x3 convolution masked in the PixelCNN manner so that output row r sees input rows
    r-1 and r only, never a row below: the masked kernel's bottom row is zero, so it is computed as
    a 2x3 kernel over the input padded by one row on top (the same function, no wasted products)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (1, 1, 1, 0)))


class ChannelLayerNorm(nn.LayerNorm):
    """Layer norm over the channels of each grid position: unlike batch norm or a norm over the
    whole grid, it mixes nothing between positions, so it keeps the context causal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ContextBlock(nn.Module):
    """Pre-activation bottleneck residual block (norm, ReLU, 1x1, ReLU, masked 3x3, ReLU, 1x1)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.norm = ChannelLayerNorm(channels)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.conv = RowCausalConv2d(hidden, hidden)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.relu(self.reduce(F.relu(self.norm(x)))))
        return x + self.expand(F.relu(h))


class ContextNetwork(nn.Sequential):
    """The autoregressive context network over a feature grid ``(B, D, H, W)``: a stack of masked
    residual blocks in the PixelCNN manner, so the context at row r depends only on rows <= r."""

    def __init__(self, channels: int, hidden: int, blocks: int) -> None:
        super().__init__(*[ContextBlock(channels, hidden) for _ in range(blocks)], ChannelLayerNorm(channels))


def orient(grid: torch.Tensor, direction: str) -> torch.Tensor:
    """The grid turned so that predicting rows *below* means predicting in ``direction``."""
    turned = grid.transpose(2, 3) if direction in ("right", "left") else grid  # columns become rows
    return turned.flip(2) if direction in ("up", "left") else turned  # bottom-up
