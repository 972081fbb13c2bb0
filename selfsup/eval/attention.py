"""Self-attention maps of a ViT: where the [CLS] token of the last block looks, per head, as in the
figures of DINO (Caron et al. 2021, arXiv 2104.14294, figures 1 and 3; ``visualize_attention.py``
of the official code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def _vision_transformer(model: nn.Module) -> nn.Module:
    """The timm ``VisionTransformer`` inside a selfsup backbone (or the model itself)."""
    body = getattr(model, "body", model)
    if not (hasattr(body, "blocks") and hasattr(body, "patch_embed") and len(body.blocks) > 0 and hasattr(body.blocks[-1], "attn")):
        arch = getattr(model, "arch", type(body).__name__)
        raise ConfigError(f"attention maps need a ViT backbone (vit_tiny, vit_small); this run's backbone is '{arch}'.")
    return body


def patch_size(model: nn.Module) -> int:
    """The side of a ViT's square patches, in pixels."""
    return int(_vision_transformer(model).patch_embed.patch_size[0])


@torch.no_grad()
def cls_attention(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d))`` of the last block's [CLS] query over the image patches.

    ``model`` is a selfsup ViT backbone (or a timm ``VisionTransformer``), ``images`` normalized
    ``(B, 3, H, W)`` with H and W multiples of the patch size. Returns ``(B, heads, H/p, W/p)``:
    for each head the attention weight of [CLS] on each patch (the weights on the prefix tokens
    are left out, so a map sums to at most 1). Fused attention kernels return no weights, so the
    weights are recomputed from the block's own q/k projections on its input.
    """
    vit = _vision_transformer(model)
    attn = vit.blocks[-1].attn
    captured: list[torch.Tensor] = []
    handle = attn.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        vit.forward_features(images)
    finally:
        handle.remove()
    tokens = captured[0].float()  # (B, N, C): the last block's normed input to attention
    batch, count, _ = tokens.shape
    qkv = F.linear(tokens, attn.qkv.weight.float(), None if attn.qkv.bias is None else attn.qkv.bias.float())
    q, k, _ = qkv.reshape(batch, count, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, 1, N)
    prefix = int(getattr(vit, "num_prefix_tokens", 1))
    grid_h, grid_w = images.shape[-2] // patch_size(vit), images.shape[-1] // patch_size(vit)
    return weights[:, :, 0, prefix:].reshape(batch, attn.num_heads, grid_h, grid_w)


def render_attention(image: np.ndarray, attention: torch.Tensor, out: str | Path, title: str | None = None) -> Path:
    """Write a PNG: the image, the mean over heads, then one heat map per head (each scaled to its
    own range, nearest-neighbour upsampled to the image, as in the DINO figures) over the image.

    ``image`` uint8 ``(H, W, 3)``; ``attention`` ``(heads, h, w)``.
    """
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and leaves pyplot's state alone

    heads = attention.shape[0]
    height, width = image.shape[:2]
    maps = F.interpolate(attention[None].float().cpu(), size=(height, width), mode="nearest")[0]
    panels = [("mean", maps.mean(0))] + [(f"head {h + 1}", maps[h]) for h in range(heads)]
    figure = Figure(figsize=(2.2 * (len(panels) + 1), 2.5))
    axes = figure.subplots(1, len(panels) + 1, squeeze=False)[0]
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    gray = image.mean(axis=2)
    for axis, (label, heat) in zip(axes[1:], panels):
        heat = heat.numpy()
        low, high = float(heat.min()), float(heat.max())
        axis.imshow(gray, cmap="gray", vmin=0, vmax=255)
        axis.imshow((heat - low) / max(high - low, 1e-12), cmap="inferno", alpha=0.75, vmin=0.0, vmax=1.0)
        axis.set_title(label, fontsize=9)
    for axis in axes:
        axis.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    return out
