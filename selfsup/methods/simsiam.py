"""SimSiam — Chen & He 2020, "Exploring Simple Siamese Representation Learning" (arXiv 2011.10566)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..losses import normalized_output_std, simsiam_loss
from ..nn import MLP, gather
from .base import Method, MethodConfig, Progress, RecipeChoice, mlp_dims, small_images
from .registry import register

PREDICTORS = ("mlp", "none", "random", "moving_average")


@dataclass
class SimSiamConfig(MethodConfig):
    """SimSiam's hyper-parameters (section 3, baseline settings) and the switches of its ablations."""

    proj_hidden_dim: int = 2048  # projection MLP: BN after every linear layer, the output one too
    proj_output_dim: int = 2048  # z, the output of the encoder f
    # Linear layers of the projection MLP. None: 3 (section 3, official simsiam/builder.py), 2 at
    # <= 64 px (the paper's CIFAR setting, appendix D).
    proj_layers: int | None = None
    pred_hidden_dim: int = 512  # predictor h: a bottleneck 2048 -> 512 -> 2048 (section 4.4)
    # Hold the predictor's learning rate at its peak while the rest follows the cosine (section
    # 4.1, Table 1c: 68.1% vs 67.7% with the decayed rate).
    fixed_predictor_lr: bool = True
    # -- ablations ------------------------------------------------------------------------------
    stop_gradient: bool = True  # False: gradients also flow into z (section 4.1, Figure 2: collapses)
    # mlp: the paper's h. none: p = z (Table 1a: collapses). random: h frozen at its random
    # initialization (Table 1b: fails). moving_average: no h; each image's target is a moving
    # average of its outputs over the views seen so far, the paper's estimate of the expectation
    # over augmentations (section 5.2, "Expectation over augmentations": 55.0% without h).
    predictor: Literal["mlp", "none", "random", "moving_average"] = "mlp"
    moving_average_momentum: float = 0.8  # m in eta_x <- m * eta_x + (1 - m) * F(T'(x)) (section 5.2)
    symmetric: bool = True  # False: the one-sided loss D(p1, z2) (Table 5: 64.8% vs 68.1%)
    # BN statistics over the global batch when distributed (the official code uses SyncBatchNorm).
    sync_bn: bool = True

    def validate_fields(self) -> None:
        if self.predictor not in PREDICTORS:
            raise ConfigError(f"predictor must be one of {', '.join(PREDICTORS)}; got '{self.predictor}'.")
        if not 0.0 <= self.moving_average_momentum < 1.0:
            raise ConfigError(f"moving_average_momentum must be in [0, 1), got {self.moving_average_momentum} (paper: 0.8).")
        self.check_positive("proj_layers")


@register
class SimSiam(Method):
    """Two views through one encoder f (backbone + projection MLP); a predictor h maps one view's
    output onto the other's, whose gradient is stopped: ``L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2``.
    No negatives, no momentum encoder.

    The paper explains the stop-gradient as one step of an alternating optimization of
    ``E ||F(T(x)) - eta_x||^2`` over the network and per-image targets ``eta_x`` (section 5.1),
    with h standing in for the expectation over augmentations. ``predictor="moving_average"``
    replaces h by that expectation estimated directly (section 5.2): a per-image memory ``eta``
    (zero-initialized) is updated after each step with ``eta_x <- m eta_x + (1 - m) z_x/|z_x|``;
    view 1's target is ``m eta_x + (1 - m) z2/|z2|`` (eta updated with the other view T'(x), so
    m = 0 is SimSiam without h), view 2's symmetrically, and the memory keeps the mean of the two.
    Memory: num_samples x proj_output_dim floats (CIFAR-10, 2,048-d: 410 MB).
    """

    name = "simsiam"
    description = "siamese: predictor + stop-gradient, negative cosine, no negatives or momentum (Chen & He 2020)"
    paper = "arXiv 2011.10566"
    Config = SimSiamConfig
    # SGD, momentum 0.9, base lr 0.05 per 256 images with a cosine decay and no warmup, weight
    # decay 1e-4 on every parameter (section 3, baseline settings; official main_simsiam.py).
    optim_defaults = {"optimizer": "sgd", "lr": 0.05, "weight_decay": 1e-4, "warmup_epochs": 0.0}
    # MoCo v2's augmentations (appendix A; official main_simsiam.py): crop scale (0.2, 1),
    # jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale 0.2, flip, and blur p=0.5 except on small
    # images (the simclr recipe's own rule, also appendix D for CIFAR).
    recipe = RecipeChoice("simclr", dict(crop_scale=(0.2, 1.0), brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1))

    def __init__(self, backbone, config: SimSiamConfig) -> None:  # noqa: ANN001
        super().__init__(backbone, config)
        # BN on the output without affine parameters, as the official code (its output linear's
        # bias is unused before BN, so MLP drops it).
        self.proj_layers = config.proj_layers or (2 if small_images(backbone) else 3)
        self.projector = MLP(
            backbone.feature_dim, config.proj_hidden_dim, config.proj_output_dim,
            num_layers=self.proj_layers, last_bn=True, last_bn_affine=False,
        )
        self.predictor = None
        if config.predictor in ("mlp", "random"):
            self.predictor = MLP(config.proj_output_dim, config.pred_hidden_dim, config.proj_output_dim)
            if config.predictor == "random":
                self.predictor.requires_grad_(False)
        self.needs_index = config.predictor == "moving_average"
        # One target per training image; sized by bind_dataset (the engine knows the data).
        self.register_buffer("target_memory", torch.zeros(0, config.proj_output_dim))
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "projector": mlp_dims(self.projector),
            "predictor": mlp_dims(self.predictor) if self.predictor is not None else self.config.predictor,
            "fixed_predictor_lr": self.config.fixed_predictor_lr,
        }

    def bind_dataset(self, num_samples: int) -> None:
        if self.needs_index and self.target_memory.shape[0] != num_samples:
            self.target_memory = torch.zeros(num_samples, self.config.proj_output_dim, device=self.target_memory.device)

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        config = self.config
        # Each view is its own pass (BN statistics per view), as in the official builder.
        z1, z2 = (self.projector(self.backbone(view)) for view in views[:2])
        if config.predictor == "moving_average":
            # No h: each view regresses onto the memory updated with the other view.
            p1, p2 = z1, z2
            target1, target2 = self._memory_targets(z1, z2, index)
        else:
            target1, target2 = z1, z2
            p1, p2 = (z1, z2) if self.predictor is None else (self.predictor(z1), self.predictor(z2))
        # D(p1, target2) / 2 + D(p2, target1) / 2 (or D(p1, target2) alone).
        loss = simsiam_loss(p1, p2, target1, target2, stop_gradient=config.stop_gradient, symmetric=config.symmetric)
        return {"loss": loss, "output_std": normalized_output_std(z1)}

    def _memory_targets(self, z1: torch.Tensor, z2: torch.Tensor, index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Section 5.2's ``eta_x`` updated with view 1 and with view 2 (``m eta_x + (1 - m) z_v/|z_v|``),
        and, kept for after the step, the memory's new rows."""
        if index is None or self.target_memory.shape[0] == 0:
            raise ConfigError(
                "SimSiam with predictor=moving_average keeps one target per training image: it needs the "
                "sample index and bind_dataset(num_samples) (the engine provides both)."
            )
        if int(index.max()) >= self.target_memory.shape[0]:
            raise ConfigError(f"sample index {int(index.max())} is outside the {self.target_memory.shape[0]}-entry target memory.")
        m = self.config.moving_average_momentum
        eta = self.target_memory[index]
        u1, u2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
        if self.config.stop_gradient:
            u1, u2 = u1.detach(), u2.detach()
        target1, target2 = m * eta + (1 - m) * u1, m * eta + (1 - m) * u2
        # One-sided, only view 1 regresses (onto target2), so the memory takes that target.
        new_rows = (target1 + target2) / 2 if self.config.symmetric else target2
        self._pending = (index, new_rows.detach())
        return target1, target2

    @torch.no_grad()
    def after_optimizer_step(self, progress: Progress) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        index, rows = pending
        # Every process writes every process's rows, so the memories stay identical.
        self.target_memory.index_copy_(0, gather(index), gather(rows).to(self.target_memory.dtype))

    def param_groups(self) -> list[dict[str, Any]]:
        predictor = [p for p in self.predictor.parameters() if p.requires_grad] if self.predictor is not None else []
        rest = [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("predictor.")]
        groups: list[dict[str, Any]] = [{"params": rest}]
        if predictor:
            groups.append({"params": predictor, "fixed_lr": self.config.fixed_predictor_lr})
        return groups

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        # A run rebuilt for evaluation has not been bound to its data: take the saved memory's size.
        saved = state_dict.get(prefix + "target_memory")
        if saved is not None and saved.shape != self.target_memory.shape:
            self.target_memory = torch.zeros_like(saved, device=self.target_memory.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
