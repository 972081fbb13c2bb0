"""MoCo v1 — He, Fan, Wu, Xie, Girshick 2019, "Momentum Contrast for Unsupervised Visual
Representation Learning" (arXiv 1911.05722); MoCo v2 — Chen, Fan, Girshick, He 2020, "Improved
Baselines with Momentum Contrastive Learning" (arXiv 2003.04297)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import info_nce
from ..nn import MLP, cosine_momentum, get_world_size
from ..nn.queue import KeyQueue
from ..nn.shuffle_bn import shuffled_forward, split_batchnorms
from .base import Method, MethodConfig, Progress, RecipeChoice, mlp_dims, small_images
from .registry import register


@dataclass
class MoCoConfig(MethodConfig):
    """MoCo v1's hyper-parameters (section 3.3 and 4.1 of arXiv 1911.05722)."""

    temperature: float = 0.07  # InfoNCE temperature tau (section 3.3, following InstDisc)
    # Keys in the dictionary K: 65,536 on ImageNet (section 4.1); None picks it from the image size:
    # 65,536 above 64 px, 4,096 at <= 64 px (CIFAR: the official CIFAR-10 demo and lightly's benchmark).
    queue_size: int | None = None
    ema_momentum: float = 0.999  # key encoder momentum m (section 3.2; 0.99-0.9999 work, 0.9 fails, table in 4.1)
    # None: m is constant (the paper). A value: m rises from ema_momentum to it along a cosine
    # (solo-learn's MoCo V2+: 0.99 -> 0.999, scripts/pretrain/cifar/mocov2plus.yaml).
    ema_momentum_end: float | None = None
    # The paper's loss is asymmetric (view 1 queries, view 2 keys). Symmetric: both directions,
    # averaged, each view's keys in their own queue (solo-learn's MoCo V2+, solo/methods/
    # mocov2plus.py; the official CIFAR demo's --symmetric uses one queue for both).
    symmetric: bool = False
    embed_dim: int = 128  # output of the encoder's fc head, L2-normalized (section 3.3)
    mlp_head: bool = False  # v2: fc -> 2-layer MLP head (hidden = backbone width, ReLU), section 2 of 2003.04297
    proj_hidden_dim: int | None = None  # hidden width of the MLP head; None: the backbone's feature width (official v2)
    # Shuffling BN (section 3.3): the global key batch is permuted and split into this many
    # sub-batches, each normalized with its own statistics, then unshuffled. 8 = the paper's setup
    # (8 GPUs, 32 images each at batch 256). With W processes each holds max(8, W) / W of them.
    # 1 on one process turns shuffling off (BN over the whole key batch: the leak the paper avoids).
    shuffle_bn_groups: int = 8
    # The query encoder's BN: per process in the paper (shuffling BN is its answer to the leak);
    # true synchronizes it across processes (then W processes equal one process with the global batch).
    sync_bn: bool = False

    def validate_fields(self) -> None:
        self.check_positive("queue_size", message="{name} must be >= 1 (or null for the default), got {value}.")
        if not 0.0 <= self.ema_momentum <= 1.0 or (self.ema_momentum_end is not None and not 0.0 <= self.ema_momentum_end <= 1.0):
            raise ConfigError(f"ema_momentum (and ema_momentum_end) must be in [0, 1], got {self.ema_momentum} (MoCo: 0.999).")
        if self.embed_dim < 1 or (self.proj_hidden_dim is not None and self.proj_hidden_dim < 1):
            raise ConfigError("embed_dim and proj_hidden_dim must be >= 1.")
        self.check_positive("shuffle_bn_groups")


@dataclass
class MoCoV2Config(MoCoConfig):
    """MoCo v2's changes (arXiv 2003.04297): MLP head, temperature 0.2 (with blur and a cosine
    schedule in the recipe and the engine)."""

    temperature: float = 0.2  # table 1 of 2003.04297: 0.2 with the MLP head
    mlp_head: bool = True  # 2-layer MLP head (2048-d hidden for ResNet-50, ReLU)


@register
class MoCo(Method):
    """A query encoder and a momentum key encoder; InfoNCE of each query against its key (the other
    view of the image) and a FIFO queue of past keys (arXiv 1911.05722, Algorithm 1).

    The key encoder is an EMA of the query encoder (backbone and head), declared in
    :meth:`ema_pairs` and updated by the engine after each optimizer step. The step's keys are
    enqueued in :meth:`after_optimizer_step`, never in ``forward``. Shuffling BN over
    ``shuffle_bn_groups`` sub-batches (:mod:`selfsup.nn.shuffle_bn`) keeps a query and its key from
    sharing BN statistics. The keys of all processes are gathered (in rank order) before they are
    enqueued, so every rank holds the same queue.
    """

    name = "moco_v1"
    description = "contrastive: momentum key encoder, queue of 65,536 negatives, shuffling BN (He et al. 2019)"
    paper = "arXiv 1911.05722"
    Config = MoCoConfig
    # SGD, lr 0.03 per 256 images, weight decay 1e-4, momentum 0.9, no warmup, lr x0.1 at epochs
    # 120 and 160 of 200 (section 4.1; official main_moco.py: --lr 0.03 --schedule 120 160
    # --wd 1e-4 --epochs 200). The milestones scale with the run's epochs (defaults_for).
    optim_defaults = {"optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4, "warmup_epochs": 0.0}
    lr_steps = (200, 120, 160)
    ema_targets = {"backbone": "key_backbone", "head": "key_head"}

    def __init__(self, backbone, config: MoCoConfig) -> None:  # noqa: ANN001
        super().__init__(backbone, config)
        width = backbone.feature_dim
        if config.mlp_head:
            self.head = MLP(width, config.proj_hidden_dim or width, config.embed_dim, num_layers=2, batch_norm=False)
        else:
            self.head = nn.Linear(width, config.embed_dim)
        self.make_ema_targets()
        self._split_bns = split_batchnorms(self.key_backbone) + split_batchnorms(self.key_head)
        # CIFAR-scale images (<= 64 px): a queue of 4,096.
        size = config.queue_size or (4096 if small_images(backbone) else 65536)
        self.queue = KeyQueue(size, config.embed_dim)  # keys of the second views (queried by the first)
        # Symmetric loss: the first views' keys, queried by the second views (solo-learn's queue[0]).
        self.queue_sym = KeyQueue(size, config.embed_dim) if config.symmetric else None
        self._pending_keys: list[torch.Tensor] | None = None  # this step's keys, all processes, until enqueued

    def default_recipe(self, image_size: int) -> RecipeChoice:
        # Section 4.1 and official main_moco.py (v1, "the same as InstDisc"): 224 crop of scale
        # (0.2, 1), RandomGrayscale(0.2) and then ColorJitter(0.4, 0.4, 0.4, 0.4) always applied,
        # flip; no blur.
        jitter = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.4, "jitter_p": 1.0}
        return RecipeChoice(
            "simclr", {"crop_scale": (0.2, 1.0), "grayscale_p": 0.2, "grayscale_first": True, "blur_p": 0.0, **jitter}
        )

    def ema_momentum(self, progress: Progress) -> float:
        if self.config.ema_momentum_end is None:
            return self.config.ema_momentum
        return cosine_momentum(self.config.ema_momentum, progress.fraction, self.config.ema_momentum_end)

    def describe(self) -> dict[str, Any]:
        return {
            "temperature": self.config.temperature, "queue_size": self.queue.size, "queues": 2 if self.queue_sym else 1,
            "symmetric": self.config.symmetric, "embed_dim": self.config.embed_dim, "head": mlp_dims(self.head),
            "shuffle_bn_groups": self.config.shuffle_bn_groups,
        }

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self.queue.check_batch(views[0].shape[0] * get_world_size())
        query = self.head(self.backbone(views[0]))
        keys, all_keys = self.keys(views[1])
        loss = info_nce(query, keys, self.queue.keys, self.config.temperature)
        self._pending_keys = [all_keys]
        if self.queue_sym is not None:
            # The other direction: the second view queries the first view's key.
            query2 = self.head(self.backbone(views[1]))
            keys2, all_keys2 = self.keys(views[0])
            loss = (loss + info_nce(query2, keys2, self.queue_sym.keys, self.config.temperature)) / 2
            self._pending_keys.append(all_keys2)
        return {"loss": loss}

    def after_optimizer_step(self, progress: Progress) -> None:
        # The second view's keys go to queue, the first's (symmetric loss) to queue_sym.
        for queue, keys in zip((self.queue, self.queue_sym), self._pending_keys or []):
            queue.enqueue(keys)
        self._pending_keys = None

    def keys(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalized keys (float32 even under autocast: the queue holds unit vectors) of this
        process's images and of the global batch (rank order), under shuffling BN."""

        def encode(x: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.key_head(self.key_backbone(x)).float(), dim=1)

        return shuffled_forward(encode, images, self._split_bns, self.config.shuffle_bn_groups)


@register
class MoCoV2(MoCo):
    """MoCo v1 with an MLP head, temperature 0.2, SimCLR-style augmentation with blur and a cosine
    learning-rate schedule (arXiv 2003.04297); everything else (queue, momentum encoder, shuffling
    BN) as :class:`MoCo`."""

    name = "moco_v2"
    description = "MoCo with MLP head, blur augmentation, temperature 0.2, cosine schedule (Chen et al. 2020)"
    paper = "arXiv 2003.04297"
    Config = MoCoV2Config
    # v1's optim_defaults (SGD, lr 0.03 per 256, weight decay 1e-4, no warmup) with cosine decay
    # (section 2; official main_moco.py --cos, 200 epochs).

    @classmethod
    def defaults_for(cls, backbone: str, epochs: int) -> dict[str, Any]:
        return {**cls.optim_defaults, "lr_schedule": "cosine"}

    def default_recipe(self, image_size: int) -> RecipeChoice:
        # The official "aug_plus": crop (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale
        # 0.2, Gaussian blur sigma in [0.1, 2] with p=0.5, flip. The simclr builder leaves blur off at
        # <= 64 px (as every CIFAR recipe does) and on with p=0.5 above.
        jitter = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "jitter_p": 0.8}
        return RecipeChoice("simclr", {"crop_scale": (0.2, 1.0), "grayscale_p": 0.2, **jitter})
