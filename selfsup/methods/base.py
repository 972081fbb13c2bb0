"""What every method is: a small ``nn.Module`` registered by name.

A method owns its networks and its loss. The engine only calls what is declared here:

- ``forward(views, index=None) -> dict`` with a ``"loss"`` tensor and any scalars worth logging;
- ``default_recipe(image_size)``: the views it wants, by recipe name and overrides (default: ``recipe``);
- ``ema_pairs()``: ``(online, target)`` modules the engine updates by EMA after each optimizer step,
  with the momentum ``ema_momentum(progress)`` (by default the attributes named in ``ema_targets``);
- ``before_optimizer_step(progress)``: gradient surgery (e.g. frozen prototypes in SwAV's first epoch);
- ``after_optimizer_step(progress)``: queue, memory-bank and normalisation updates (never in forward);
- ``representation(images)``: the features a probe uses (the backbone's by default);
- ``param_groups()``: parameter groups with optional per-group options (e.g. a fixed learning rate);
- ``bind_dataset(num_samples)``: the training-set size, before training or resuming (per-sample memories);
- ``sync_batchnorm``: BN statistics over the global batch when distributed (from a ``sync_bn`` config field);
- ``default_backbone``: the backbone a config that names none gets (MAE: a ViT);
- ``report_images(images)``: pictures for ``selfsup report`` (MAE's reconstructions).

Each method declares ``Config``, a dataclass of its hyper-parameters with the paper's defaults
(a ``MethodConfig``: see method_config.py for its checks).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from ..nn.backbones import Backbone, is_vit, small_images  # noqa: F401  (small_images: for the methods)
from ..nn.ema import cosine_momentum, frozen_copy
from ..nn.heads import mlp_dims  # noqa: F401  (for the methods)
from .method_config import MethodConfig


@dataclasses.dataclass
class Progress:
    """Where training stands; the engine hands it to every hook."""

    step: int = 0  # optimizer steps taken before this one
    total_steps: int = 1
    steps_per_epoch: int = 1

    @property
    def fraction(self) -> float:
        """Training progress in [0, 1] (for EMA and temperature schedules)."""
        return min(1.0, self.step / max(1, self.total_steps))

    @property
    def epoch(self) -> float:
        """Fractional epoch: 0.5 halfway through the first epoch."""
        return self.step / max(1, self.steps_per_epoch)


@dataclasses.dataclass
class RecipeChoice:
    """The recipe a method trains with: a registered recipe name and overrides of its fields."""

    name: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


class Method(nn.Module):
    """Base class of all methods. Subclasses set ``name``, ``description``, ``Config``, implement
    ``__init__(backbone, config)`` and ``forward``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    needs_index: ClassVar[bool] = False  # forward needs the sample index (memory banks)

    # The engine's optimizer defaults for this method (optimizer, lr per 256 images, weight
    # decay, grad_clip), each overridable from the config.
    optim_defaults: ClassVar[dict[str, Any]] = {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4}
    # Backbone arguments the method's paper relies on (e.g. CPC v2's layer norm: {"norm": "ln"}),
    # used where the config's backbone_args leave them unset (TrainConfig.resolve), so the resolved
    # config.yaml records them. Every registered backbone accepts these keys or rejects a value
    # it cannot honour with a ConfigError.
    backbone_defaults: ClassVar[dict[str, Any]] = {}
    # The backbone a config that names none gets (MAE, which masks a ViT's patch tokens: a ViT);
    # None: the data source's default.
    default_backbone: ClassVar[str | None] = None
    # The optimizer defaults for ViT backbones where the paper's differ from ``optim_defaults``
    # (MoCo v3: LARS for ResNets, AdamW for ViTs); None: ``optim_defaults`` for every backbone.
    vit_optim_defaults: ClassVar[dict[str, Any] | None] = None
    # EMA targets: online attribute -> the attribute of its frozen copy (BYOL's target, MoCo's key
    # encoder, DINO's teacher), made by ``make_ema_targets`` and listed by ``ema_pairs``.
    ema_targets: ClassVar[dict[str, str]] = {}
    # A step schedule (lr x0.1 at each milestone): the paper's epoch count, then its milestones,
    # which defaults_for scales to the run's epochs. Empty: the engine's schedule.
    lr_steps: ClassVar[tuple[int, ...]] = ()
    # The views of a method whose recipe does not depend on the image size (default_recipe).
    recipe: ClassVar[RecipeChoice] = RecipeChoice("simclr")

    @classmethod
    def optim_defaults_for(cls, backbone: str) -> dict[str, Any]:
        """``optim_defaults`` for a backbone name: ``vit_optim_defaults`` for a ViT where set."""
        return dict(cls.vit_optim_defaults if cls.vit_optim_defaults and is_vit(backbone) else cls.optim_defaults)

    @classmethod
    def defaults_for(cls, backbone: str, epochs: int) -> dict[str, Any]:
        """The recipe this method trains with by default, for a backbone name and an epoch count:
        TrainConfig fields (optimizer, lr, weight decay, schedule, LARS options...) and, under
        ``"method_args"``, fields of the method's ``Config``. ``TrainConfig.resolve`` uses them
        where the config leaves a field unset. Override where the paper's preset depends on the
        epochs (BYOL, MoCo v3) or the architecture (DINO on a ResNet)."""
        defaults = cls.optim_defaults_for(backbone)
        if cls.lr_steps:
            paper_epochs, *milestones = cls.lr_steps
            defaults.update(lr_schedule="step", lr_milestones=[round(m * epochs / paper_epochs, 3) for m in milestones])
        return defaults

    def describe(self) -> dict[str, Any]:
        """Method-specific facts a run would use (temperatures, head sizes, queue and bank sizes),
        for ``selfsup train --dry-run``; plain numbers, strings and lists."""
        return {}

    def __init__(self, backbone: Backbone, config: MethodConfig) -> None:
        config.validate()
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.progress = Progress()  # set by the engine before every step

    def make_ema_targets(self) -> None:
        """Create the frozen copies named in ``ema_targets``, in its order, of the online modules."""
        for online, target in self.ema_targets.items():
            setattr(self, target, frozen_copy(getattr(self, online)))

    # -- data ---------------------------------------------------------------------------------
    def default_recipe(self, image_size: int) -> RecipeChoice:
        return dataclasses.replace(self.recipe, overrides=dict(self.recipe.overrides))  # a copy of ``recipe``

    # -- training hooks ----------------------------------------------------------------------
    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(getattr(self, online), getattr(self, target)) for online, target in self.ema_targets.items()]

    def ema_momentum(self, progress: Progress) -> float:
        """BYOL's cosine from the config's ``ema_momentum`` up to 1 (MoCo v3, DINO); 1 without one."""
        return cosine_momentum(getattr(self.config, "ema_momentum", 1.0), progress.fraction)

    def before_optimizer_step(self, progress: Progress) -> None:
        """Called after backward, before the optimizer step (e.g. to zero frozen gradients)."""

    def after_optimizer_step(self, progress: Progress) -> None:
        """Called after the optimizer step and the EMA updates (queues, memory banks)."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters as groups; a group may carry ``fixed_lr: True`` (no schedule)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def bind_dataset(self, num_samples: int) -> None:
        """Told by the engine how many training samples there are (indices ``0 .. num_samples - 1``),
        before training starts or a checkpoint is restored: methods that keep one entry per sample
        (memory banks) size them here. Nothing to do for most methods."""

    @property
    def sync_batchnorm(self) -> bool:
        """Whether BN statistics should be computed over the global batch across processes (the
        distributed engine converts BN layers to ``SyncBatchNorm``). True when the method's config
        has ``sync_bn: true``, as SimCLR, MoCo v3, BYOL, SimSiam, SwAV and DINO run it in their papers."""
        return bool(getattr(self.config, "sync_bn", False))

    # -- evaluation --------------------------------------------------------------------------
    @property
    def eval_backbone(self) -> Backbone:
        """The backbone that probes, exports and attention maps use: the trained one by default;
        a method whose paper evaluates its EMA teacher (DINO) returns that."""
        return self.backbone

    def representation(self, images: torch.Tensor) -> torch.Tensor:
        """Features for probes: ``images`` are normalized float ``(B, 3, H, W)``."""
        return self.eval_backbone(images)

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    def report_images(self, images: torch.Tensor) -> tuple[str, dict[str, torch.Tensor]] | None:
        """Pictures of what the method does, for ``selfsup report``: given uint8 ``(B, H, W, 3)``
        images, a section title and named uint8 batches ``(B, h, w, 3)`` drawn as columns (MAE:
        masked input, reconstruction, original). None (the default): the method has none."""
        return None

    def eval_transform(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` -> the network input used for probes (ImageNet-normalized RGB)."""
        from ..augment import ops
        from ..augment.recipes import IMAGENET_MEAN, IMAGENET_STD

        return ops.normalize(ops.to_float(images), IMAGENET_MEAN, IMAGENET_STD)

