"""Patches and random masking for masked image modelling on a timm ViT (MAE, He et al. 2021,
arXiv 2111.06377): the image as a sequence of patches, per-sample random masks, the encoder run on
the visible tokens only, and the fixed 2-D sin-cos position embedding."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["encode_visible", "patchify", "random_masking", "sincos_pos_embed_2d", "unpatchify", "vit_body"]


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, L, p * p * C)``: row-major patches, each flattened in (row, column,
    channel) order, the official ``patchify`` (facebookresearch/mae, models_mae.py)."""
    n, c, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ConfigError(f"images of {h}x{w} px do not split into {patch_size} px patches.")
    x = images.reshape(n, c, h // patch_size, patch_size, w // patch_size, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // patch_size) * (w // patch_size), patch_size * patch_size * c)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """The inverse of :func:`patchify` for square images: ``(N, L, p * p * C)`` -> ``(N, C, H, W)``."""
    n, length, _ = patches.shape
    side = math.isqrt(length)
    x = patches.reshape(n, side, side, patch_size, patch_size, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(n, channels, side * patch_size, side * patch_size)


def sincos_pos_embed_2d(dim: int, grid_size: int, prefix_tokens: int = 1) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding ``(prefix_tokens + grid_size^2, dim)`` (MAE's
    ``get_2d_sincos_pos_embed``, after the Transformer's 1-D one): the first half of the channels
    encodes the patch's column, the second half its row, each as ``sin(pos w_k)`` then
    ``cos(pos w_k)`` with ``w_k = 10000^(-k / (dim / 4))``; prefix ([CLS]) tokens get zeros."""
    if dim % 4:
        raise ConfigError(f"a 2-D sin-cos position embedding needs a width divisible by 4, got {dim}.")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")

    def one_axis(position: torch.Tensor) -> torch.Tensor:
        angles = position.reshape(-1, 1).double() * omega
        return torch.cat((angles.sin(), angles.cos()), dim=1)

    grid = torch.cat((one_axis(cols), one_axis(rows)), dim=1)
    return torch.cat((torch.zeros(prefix_tokens, dim, dtype=torch.float64), grid)).float()


def random_masking(noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by sorting noise, as the official ``random_masking``: for
    ``noise`` ``(N, L)`` uniform in [0, 1), the ``L - int(L * mask_ratio)`` patches of smallest
    noise stay visible. Returns ``ids_keep`` ``(N, K)`` (visible patches, in noise order),
    ``mask`` ``(N, L)`` (1 = masked, in patch order) and ``ids_restore`` ``(N, L)`` (where each
    patch sits in the [visible; masked] sequence)."""
    n, length = noise.shape
    keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(n, length, device=noise.device)
    mask[:, :keep] = 0
    return ids_shuffle[:, :keep], torch.gather(mask, 1, ids_restore), ids_restore


def vit_body(backbone: nn.Module, method: str) -> nn.Module:
    """The timm VisionTransformer inside a selfsup backbone, or a ConfigError naming the fix."""
    body = getattr(backbone, "body", None)
    if not all(hasattr(body, name) for name in ("patch_embed", "_pos_embed", "blocks", "norm", "num_prefix_tokens")):
        raise ConfigError(
            f"{method} masks the patch tokens of a ViT; backbone '{getattr(backbone, 'arch', backbone)}' is not one. "
            "Use backbone vit_tiny or vit_small (backbone_args patch_size, depth, embed_dim, num_heads to size it)."
        )
    return body


def encode_visible(body: nn.Module, images: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """A timm ViT's ``forward_features`` on the visible patches only: patch embedding and
    position embedding of every patch, then the prefix ([CLS]) tokens and the patches in
    ``ids_keep`` through the blocks and the final norm. ``(N, prefix + K, D)``."""
    tokens = body._pos_embed(body.patch_embed(images))  # (N, prefix + L, D), position added
    prefix = body.num_prefix_tokens
    visible = torch.gather(tokens[:, prefix:], 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    x = body.norm_pre(torch.cat((tokens[:, :prefix], visible), dim=1))
    return body.norm(body.blocks(x))
