"""A picture of what a recipe does: each row an original image followed by its views."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from . import ops
from .recipes import _LAB_HALF_RANGE, _LAB_MEAN, LabRecipe, PatchRecipe, Recipe


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
        spec = recipe.views[1]
        flat = view.reshape(-1, 3, p, p)
        if spec.normalize:
            flat = flat * torch.tensor(spec.std).view(1, 3, 1, 1) + torch.tensor(spec.mean).view(1, 3, 1, 1)
        flat = flat.clamp(0, 1).reshape(batch, gh, gw, 3, p, p)
        gap = 1
        canvas = torch.ones(batch, 3, gh * (p + gap) - gap, gw * (p + gap) - gap)
        for r in range(gh):
            for c in range(gw):
                canvas[:, :, r * (p + gap) : r * (p + gap) + p, c * (p + gap) : c * (p + gap) + p] = flat[:, r, c]
        return [canvas]
    spec_index, seen = 0, 0
    for i, spec in enumerate(recipe.views):
        if index < seen + spec.count:
            spec_index = i
            break
        seen += spec.count
    spec = recipe.views[spec_index]
    if spec.normalize:
        view = view * torch.tensor(spec.std).view(1, 3, 1, 1) + torch.tensor(spec.mean).view(1, 3, 1, 1)
    return [view.clamp(0, 1)]


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
