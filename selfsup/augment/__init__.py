"""Batched, on-device augmentation: per-sample random operations and the methods' view recipes."""

from . import ops
from .recipes import (
    RECIPES,
    LabRecipe,
    PatchRecipe,
    Recipe,
    ViewSpec,
    available_recipes,
    create_recipe,
    masked,
    register_recipe,
)

__all__ = [
    "RECIPES",
    "LabRecipe",
    "PatchRecipe",
    "Recipe",
    "ViewSpec",
    "available_recipes",
    "create_recipe",
    "masked",
    "ops",
    "register_recipe",
]
