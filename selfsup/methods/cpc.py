"""CPC — contrastive predictive coding on a grid of image patches: van den Oord, Li, Vinyals 2018,
"Representation Learning with Contrastive Predictive Coding" (arXiv 1807.03748), with the image
recipe of CPC v2, Hénaff et al. 2019, "Data-Efficient Image Recognition with Contrastive
Predictive Coding" (arXiv 1905.09272)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import ops
from ..augment.recipes import IMAGENET_MEAN, IMAGENET_STD, cpc_geometry, patch_grid
from ..errors import ConfigError
from ..losses import cpc_loss
from ..nn import gather_with_grad, get_rank
from ..nn.context import ContextNetwork, orient
from .base import Method, MethodConfig, RecipeChoice
from .registry import register

DIRECTIONS = ("down", "up", "right", "left")


@dataclass
class CPCConfig(MethodConfig):
    prediction_steps: int = 5  # K: rows predicted below each context, one linear map each (v1 sec. 3.3: "up to five rows")
    context_blocks: int = 5  # masked residual blocks; each widens the context by one row, 5 see 6 rows above (a 7x7 grid)
    context_hidden_dim: int | None = None  # bottleneck width of the blocks; None: a quarter of the feature dim
    # Prediction directions, each with its own context network and loss. CPC v1 predicts top-down
    # only; v2 also bottom-up and horizontally (arXiv 1905.09272, section 4.1 and Figure 3:
    # "bottom-up spatial predictions" and "horizontal spatial predictions"): all four.
    directions: tuple[str, ...] = ("down", "up", "right", "left")
    patch_size: int | None = None  # None: CPC's geometry for the image size (32 px: 8 px patches, stride 4, 7x7)
    patch_stride: int | None = None  # None: half the patch (small images) or v2's 36/260 of the side
    patch_input_size: int | None = None  # upsample each patch to this side for the encoder; None: no resampling

    def validate_fields(self) -> None:
        if self.prediction_steps < 1 or self.context_blocks < 0:
            raise ConfigError(f"cpc prediction_steps must be >= 1 and context_blocks >= 0, got {self.prediction_steps} and {self.context_blocks}.")
        unknown = [d for d in self.directions if d not in DIRECTIONS]
        if not self.directions or unknown or len(set(self.directions)) != len(self.directions):
            raise ConfigError(f"cpc directions must be distinct values among {', '.join(DIRECTIONS)}; got {list(self.directions)}.")
        self.check_positive(
            "context_hidden_dim", "patch_size", "patch_stride", "patch_input_size",
            message="cpc {name} must be >= 1 (or null), got {value}.",
        )


@register
class CPC(Method):
    """Patches of each image are encoded by the backbone into a feature grid; a masked context
    network reads the grid top to bottom and, from the context at row r, a separate linear map
    per offset k predicts the feature k rows below; InfoNCE scores each prediction against every
    patch feature of the batch (other positions and other images).

    The encoder uses layer norm (``backbone_defaults``): batch norm would share statistics
    between patches, a path around the causal mask (CPC v2, section 4.1). Across processes the
    patch features are all-gathered with gradient, so the negatives and the loss are those of the
    global batch. Probes use the mean of the encoded patch grid (CPC v2's linear probe).
    """

    name = "cpc"
    description = "predictive: patch grid, masked context network, InfoNCE on features k rows below (van den Oord 2018, Hénaff 2019)"
    paper = "arXiv 1807.03748, arXiv 1905.09272"
    Config = CPCConfig
    # CPC v2 trains with Adam at learning rate 4e-4 for a batch of 512 (appendix A): 2e-4 per 256
    # images under the engine's linear scaling; no weight decay.
    optim_defaults = {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 0.0}
    backbone_defaults = {"norm": "ln"}

    def __init__(self, backbone, config: CPCConfig) -> None:  # noqa: ANN001
        super().__init__(backbone, config)
        dim = backbone.feature_dim
        hidden = config.context_hidden_dim or max(1, dim // 4)
        steps = config.prediction_steps
        self.context = nn.ModuleDict({d: ContextNetwork(dim, hidden, config.context_blocks) for d in config.directions})
        # One 1x1 convolution holding the K maps W_k as blocks of its output: separate linear maps
        # (no bias: ẑ = W_k c in the paper), computed in one call.
        self.predictors = nn.ModuleDict({d: nn.Conv2d(dim, steps * dim, 1, bias=False) for d in config.directions})
        for predictor in self.predictors.values():
            # Near-zero init: every score starts near 0 (loss log N), so the first updates align
            # W_k c with its target. With the default init the scores start random, and their
            # quickest fix is to make all patch features alike: on CIFAR that collapsed the
            # encoder within ten steps (the loss then sat at log N for good). Not exactly zero,
            # so that the first step already reaches the encoder.
            nn.init.normal_(predictor.weight, std=1e-4)
        self._expected_view: tuple[int, int, int] | None = None  # (grid_h, grid_w, side) of the recipe

    # -- geometry ------------------------------------------------------------------------------
    def geometry(self, image_size: int) -> tuple[int, int, int, int]:
        """``(patch_size, stride, grid side, encoder input side)`` for ``image_size`` px images."""
        patch, stride, grid = cpc_geometry(image_size, self.config.patch_size, self.config.patch_stride)
        return patch, stride, grid, self.config.patch_input_size or patch

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "directions": list(c.directions), "prediction_steps": c.prediction_steps, "context_blocks": c.context_blocks,
            "feature_dim": self.backbone.feature_dim,
        }

    def default_recipe(self, image_size: int) -> RecipeChoice:
        patch, stride, grid, side = self.geometry(image_size)
        self._expected_view = (grid, grid, side)
        overrides = {"patch_size": patch, "stride": stride}
        if self.config.patch_input_size:
            overrides["size"] = side
        return RecipeChoice("cpc_patches", overrides)

    # -- the encoder ---------------------------------------------------------------------------
    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch grids ``(B, gh, gw, 3, s, s)`` -> feature grids ``(B, D, gh, gw)``: the backbone on all
        patches as one batch, each patch pooled to one vector by the backbone's global pooling."""
        batch, grid_h, grid_w = patches.shape[:3]
        features = self.backbone(patches.reshape(-1, *patches.shape[3:]))
        return features.view(batch, grid_h, grid_w, -1).permute(0, 3, 1, 2)

    def cut_grid(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized images ``(B, 3, H, W)`` -> their patch grid ``(B, gh, gw, 3, s, s)``, without
        augmentation (the training geometry for this image size)."""
        patch, stride, _, side = self.geometry(images.shape[-1])
        flat, (grid_h, grid_w) = patch_grid(images, patch, stride)
        if side != patch:
            flat = F.interpolate(flat, size=(side, side), mode="bilinear", align_corners=False)
        return flat.view(images.shape[0], grid_h, grid_w, images.shape[1], side, side)

    # -- training ------------------------------------------------------------------------------
    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        patches = views[0]
        if patches.dim() != 6:
            raise ConfigError(
                f"cpc trains on a grid of patches (B, rows, columns, 3, p, p) from the 'cpc_patches' recipe; got a view "
                f"of shape {tuple(patches.shape)}. Leave recipe unset for cpc."
            )
        if self._expected_view is not None and tuple(patches.shape[1:3]) + (patches.shape[-1],) != self._expected_view:
            raise ConfigError(
                f"the patch views are {patches.shape[1]}x{patches.shape[2]} patches of {patches.shape[-1]} px but cpc's "
                f"probes cut {self._expected_view[0]}x{self._expected_view[1]} of {self._expected_view[2]} px; set the "
                "geometry with method.patch_size / patch_stride / patch_input_size, not augment.*."
            )
        z = self.encode(patches)  # (B, D, H, W)
        batch, dim = z.shape[:2]
        steps = self.config.prediction_steps
        all_z = gather_with_grad(z)  # negatives from every process's patches, with gradient
        losses = []
        for direction in self.config.directions:
            grid = orient(z, direction)
            if steps >= grid.shape[2]:
                raise ConfigError(
                    f"cpc predicts {steps} steps '{direction}' but the grid has only {grid.shape[2]} rows that way; "
                    "lower method.prediction_steps or use a finer patch grid."
                )
            context = self.context[direction](grid)
            predictions = self.predictors[direction](context).view(batch, steps, dim, *grid.shape[2:])
            losses.append(cpc_loss(predictions, orient(all_z, direction), get_rank() * batch))
        return {"loss": torch.stack(losses).mean()}

    # -- evaluation ----------------------------------------------------------------------------
    def representation(self, images: torch.Tensor) -> torch.Tensor:
        """The encoded patch grid, mean-pooled (CPC v2's linear-probe representation). Takes a patch
        grid ``(B, gh, gw, 3, s, s)`` (:meth:`eval_transform`, or training views) or normalized
        whole images ``(B, 3, H, W)``, which are cut into the training grid first."""
        patches = images if images.dim() == 6 else self.cut_grid(images)
        return self.encode(patches).mean(dim=(2, 3))

    def eval_transform(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` -> the patch grid of training, without augmentation, normalized."""
        return self.cut_grid(ops.normalize(ops.to_float(images), IMAGENET_MEAN, IMAGENET_STD))
