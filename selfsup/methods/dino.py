"""DINO — Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin 2021, "Emerging Properties in
Self-Supervised Vision Transformers" (arXiv 2104.14294)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..losses import dino_loss, normalized_output_std
from ..nn import all_reduce_sum
from ..nn.backbones import SMALL_IMAGE, Backbone, forward_multicrop, is_vit, max_drop_path, without_drop_path
from ..nn.heads import DINOHead
from .base import Method, MethodConfig, Progress, RecipeChoice, mlp_dims, small_images
from .registry import register


@dataclass
class DINOConfig(MethodConfig):
    """DINO's hyper-parameters: the defaults of the official main_dino.py (facebookresearch/dino),
    i.e. its README's "vanilla" 100-epoch command."""

    # K, the head's output: 65,536 on ImageNet (official out_dim). None picks 65,536 above 64 px
    # and 4,096 at CIFAR scale (solo-learn's CIFAR recipe): 50,000 images do not need 65,536
    # pseudo-classes, and the last layer is 16x cheaper.
    out_dim: int | None = None
    hidden_dim: int = 2048  # hidden width of the 3-layer head MLP (section 3.1, appendix)
    bottleneck_dim: int = 256  # the L2-normalized bottleneck before the last layer
    head_layers: int = 3  # linear layers of the head MLP before the bottleneck normalization
    use_bn_in_head: bool = False  # official default: no BN in the head ("BN-free" ViT system)
    # Weight-normalized last layer with its norm fixed to 1 (official default True; their ViT-S
    # runs set False, which trains better but can be unstable).
    norm_last_layer: bool = True
    student_temperature: float = 0.1  # tau_s (section 3.1)
    # tau_t: 0.04 with no warmup (main_dino.py --teacher_temp / --warmup_teacher_temp 0.04,
    # --warmup_teacher_temp_epochs 0); the README's boosted ViT-S run: 0.07 after 30 epochs from 0.04.
    teacher_temperature: float = 0.04
    warmup_teacher_temperature: float = 0.04  # tau_t at epoch 0, raised linearly per epoch
    warmup_teacher_temperature_epochs: int = 0  # epochs of that warmup
    center_momentum: float = 0.9  # m of the center's EMA (eq. 4)
    ema_momentum: float = 0.996  # teacher EMA, cosine from this to 1 (section 3.1)
    freeze_last_layer_epochs: float = 1.0  # the last layer gets no update in the first epoch
    # Each parameter's gradient norm is clipped to this (official clip_gradients: per tensor, not
    # the global norm); 0 disables.
    clip_grad: float = 3.0
    num_global_views: int = 2  # the teacher sees the first views only: the global crops
    sync_bn: bool = True  # BN (ResNets) over the global batch when distributed, as the official code converts it

    def validate_fields(self) -> None:
        if self.out_dim is not None and self.out_dim < 2:
            raise ConfigError(f"dino out_dim must be >= 2, got {self.out_dim}.")
        if not 0.0 <= self.center_momentum <= 1.0 or not 0.0 <= self.ema_momentum <= 1.0:
            raise ConfigError("dino center_momentum and ema_momentum must be in [0, 1].")
        if self.head_layers < 1 or self.num_global_views < 1 or self.warmup_teacher_temperature_epochs < 0:
            raise ConfigError("dino head_layers and num_global_views must be >= 1 and warmup_teacher_temperature_epochs >= 0.")
        if self.clip_grad < 0:
            raise ConfigError(f"dino clip_grad must be >= 0 (0 disables), got {self.clip_grad}.")


@register
class DINO(Method):
    """Self-distillation with no labels: a student matches, on every view, the centered and
    sharpened output of an EMA teacher on the other global views; multi-crop.

    The center is updated after the optimizer step with the teacher's mean over the global batch
    (all-reduced across processes); forward only records this step's teacher sum.
    """

    name = "dino"
    description = "self-distillation: EMA teacher, centering + sharpening, multi-crop, ViT or ResNet (Caron et al. 2021)"
    paper = "arXiv 2104.14294"
    Config = DINOConfig
    # ViTs: AdamW, lr 5e-4 per 256 images, 10 warmup epochs, cosine to 1e-6, weight decay cosine
    # 0.04 -> 0.4, biases and norms not decayed (main_dino.py defaults, get_params_groups); the
    # student's stochastic depth 0.1 (--drop_path_rate; the teacher is built without it).
    # Gradient clipping is the method's own (per parameter, ``clip_grad``).
    vit_optim_defaults = {
        "optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.04, "weight_decay_end": 0.4, "min_lr": 1e-6,
        "warmup_epochs": 10.0, "exclude_bias_norm": True,
    }
    # ResNets (and other convnets): the README's ResNet-50 command, --optimizer sgd --lr 0.03
    # --weight_decay 1e-4 --weight_decay_end 1e-4 (constant), with main_dino.py's other defaults.
    optim_defaults = {
        "optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4, "min_lr": 1e-6, "warmup_epochs": 10.0,
        "exclude_bias_norm": True,
    }
    ema_targets = {"backbone": "teacher_backbone", "head": "teacher_head"}

    @classmethod
    def defaults_for(cls, backbone: str, epochs: int) -> dict[str, Any]:
        defaults = cls.optim_defaults_for(backbone)
        if is_vit(backbone):
            defaults["backbone_args"] = {"drop_path_rate": 0.1}
        return defaults

    def __init__(self, backbone: Backbone, config: DINOConfig) -> None:
        super().__init__(backbone, config)
        self.out_dim = config.out_dim or (4096 if small_images(backbone) else 65536)
        self.head = DINOHead(
            backbone.feature_dim, self.out_dim, config.hidden_dim, config.bottleneck_dim, config.head_layers,
            config.use_bn_in_head, config.norm_last_layer,
        )
        self.make_ema_targets()
        # The teacher has no stochastic depth (main_dino.py builds it without drop_path_rate).
        without_drop_path(self.teacher_backbone)
        self.register_buffer("center", torch.zeros(self.out_dim))
        # (sum of this step's teacher outputs, their count): applied after the optimizer step.
        self._pending_center: torch.Tensor | None = None

    def default_recipe(self, image_size: int) -> RecipeChoice:
        if image_size <= SMALL_IMAGE:
            # No published recipe uses local crops at <= 64 px: two full-size crops of scale
            # (0.08, 1), as solo-learn's CIFAR recipe (scripts/pretrain/cifar/dino.yaml, asymmetric.yaml).
            return RecipeChoice("dino", {"num_local": 0, "global_scale": (0.08, 1.0)})
        if not is_vit(self.backbone):
            # The README's ResNet-50 command: --global_crops_scale 0.14 1 --local_crops_scale 0.05 0.14.
            return RecipeChoice("dino", {"global_scale": (0.14, 1.0), "local_scale": (0.05, 0.14)})
        return RecipeChoice("dino")

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "out_dim": self.out_dim, "head": mlp_dims(self.head.mlp), "bottleneck_dim": c.bottleneck_dim,
            "norm_last_layer": c.norm_last_layer, "student_temperature": c.student_temperature,
            "teacher_temperature": {
                "start": self.teacher_temperature(Progress(0, 1, 1)), "final": c.teacher_temperature,
                "warmup_epochs": c.warmup_teacher_temperature_epochs,
            },
            "center_momentum": c.center_momentum, "clip_grad": c.clip_grad,
            "freeze_last_layer_epochs": c.freeze_last_layer_epochs,
            "student_max_drop_path": round(max_drop_path(self.backbone), 6),
            "teacher_max_drop_path": round(max_drop_path(self.teacher_backbone), 6),
        }

    @property
    def eval_backbone(self) -> Backbone:
        return self.teacher_backbone  # the official evaluations use the teacher

    def teacher_temperature(self, progress: Progress) -> float:
        """Linear warmup per epoch (official ``teacher_temp_schedule``: ``linspace`` over the warmup
        epochs, indexed by the integer epoch), then constant."""
        c, epoch = self.config, int(progress.epoch)
        if epoch < c.warmup_teacher_temperature_epochs:
            warmup = np.linspace(c.warmup_teacher_temperature, c.teacher_temperature, c.warmup_teacher_temperature_epochs)
            return float(warmup[epoch])
        return c.teacher_temperature

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        batch, num_global = views[0].shape[0], self.config.num_global_views
        if len(views) < max(2, num_global):
            raise ConfigError(f"dino needs at least {max(2, num_global)} views, got {len(views)}.")
        student = self.head(forward_multicrop(self.backbone, views)).split(batch)
        with torch.no_grad():
            embedding = self.teacher_head.embed(forward_multicrop(self.teacher_backbone, views[:num_global]))
            teacher = self.teacher_head.last_layer(embedding)  # float32, outside autocast
        temperature = self.teacher_temperature(self.progress)
        loss = dino_loss(student, teacher.split(batch), self.center, self.config.student_temperature, temperature)
        count = torch.full((1,), float(teacher.shape[0]), device=teacher.device)
        self._pending_center = torch.cat((teacher.float().sum(dim=0), count))
        # Collapse monitor (SimSiam's Figure 2 measure): ~1/sqrt(256) spread, 0 when every image
        # gets the same teacher embedding, which centering turns into a uniform teacher (loss ln K).
        return {"loss": loss, "teacher_temperature": torch.tensor(temperature), "output_std": normalized_output_std(embedding[:batch])}

    @torch.no_grad()
    def before_optimizer_step(self, progress: Progress) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if self.config.clip_grad and grads:
            norms = torch._foreach_norm(grads)
            scales = [torch.clamp(self.config.clip_grad / (n + 1e-6), max=1.0) for n in norms]
            torch._foreach_mul_(grads, scales)
        if progress.epoch < self.config.freeze_last_layer_epochs:
            for param in self.head.last_layer.parameters():
                param.grad = None  # no update, no weight decay, no Adam moments

    @torch.no_grad()
    def after_optimizer_step(self, progress: Progress) -> None:
        pending, self._pending_center = self._pending_center, None
        if pending is None:
            return
        total = all_reduce_sum(pending)  # one collective: the sums and the counts of all processes
        batch_center = total[:-1] / total[-1]
        self.center.mul_(self.config.center_momentum).add_(batch_center, alpha=1.0 - self.config.center_momentum)
