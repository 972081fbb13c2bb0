"""A picture of what a recipe does: each row an original image followed by its views."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import ops
from .recipes import _LAB_HALF_RANGE, _LAB_MEAN, LabRecipe, PatchRecipe, Recipe, ViewSpec


def _unnormalize(x: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    """Float RGB ``(N, 3, h, w)`` of the view ``spec`` back in [0, 1]."""
    if spec.normalize:
        x = x * torch.tensor(spec.std).view(1, 3, 1, 1) + torch.tensor(spec.mean).view(1, 3, 1, 1)
    return x.clamp(0, 1)


def _to_display(view: torch.Tensor, recipe: Recipe, index: int) -> list[torch.Tensor]:
    """Views -> list of float RGB images (B, 3, h, w) in [0, 1] for display."""
    if isinstance(recipe, LabRecipe):
        mean = torch.tensor(_LAB_MEAN).view(1, 3, 1, 1)
        half = torch.tensor(_LAB_HALF_RANGE).view(1, 3, 1, 1)
        if view.shape[1] == 1:  # L: show as gray
            light = view * half[:, :1] + mean[:, :1]
            return [(light / 100).clamp(0, 1).repeat(1, 3, 1, 1)]
        ab = view * half[:, 1:] + mean[:, 1:]  # ab at a fixed lightness
        lab = torch.cat((torch.full_like(ab[:, :1], 65.0), ab), dim=1)
        return [ops.lab_to_rgb(lab)]
    if isinstance(recipe, PatchRecipe):
        batch, gh, gw, _, p, _ = view.shape
        gap = 1
        # Each patch with a white gap below and to its right, tiled row by row; the last gaps cut off.
        tiles = F.pad(_unnormalize(view.reshape(-1, 3, p, p), recipe.views[1]), (0, gap, 0, gap), value=1.0)
        canvas = tiles.view(batch, gh, gw, 3, p + gap, p + gap).permute(0, 3, 1, 4, 2, 5)
        return [canvas.reshape(batch, 3, gh * (p + gap), gw * (p + gap))[:, :, :-gap, :-gap]]
    # The spec of view ``index`` (views come in the order of ``recipe.views``, ``count`` of each).
    specs = [spec for spec in recipe.views for _ in range(spec.count)]
    return [_unnormalize(view, specs[index] if index < len(specs) else recipe.views[0])]


def preview_grid(images: torch.Tensor, recipe: Recipe, seed: int = 0, scale: int = 3, pad: int = 4) -> Image.Image:
    """Render uint8 ``(B, H, W, 3)`` images and their views as one picture."""
    generator = torch.Generator().manual_seed(seed)
    views = recipe(images.cpu(), generator)
    columns: list[torch.Tensor] = [ops.to_float(images.cpu())]
    for i, view in enumerate(views):
        columns += _to_display(view.float().cpu(), recipe, i)
    cell = max(max(c.shape[2], c.shape[3]) for c in columns) * scale
    rows = images.shape[0]
    canvas = np.full((rows * (cell + pad) + pad, len(columns) * (cell + pad) + pad, 3), 255, dtype=np.uint8)
    for j, column in enumerate(columns):
        for i in range(rows):
            tile = column[i].permute(1, 2, 0).mul(255).round().byte().numpy()
            factor = max(1, cell // max(tile.shape[:2]))
            tile = tile.repeat(factor, 0).repeat(factor, 1)
            y = pad + i * (cell + pad) + (cell - tile.shape[0]) // 2
            x = pad + j * (cell + pad) + (cell - tile.shape[1]) // 2
            canvas[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return Image.fromarray(canvas)
