"""MoCo v1 — He, Fan, Wu, Xie, Girshick 2019, "Momentum Contrast for Unsupervised Visual
Representation Learning" (arXiv 1911.05722); MoCo v2 — Chen, Fan, Girshick, He 2020, "Improved
Baselines with Momentum Contrastive Learning" (arXiv 2003.04297)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import info_nce
from ..nn import MLP, gather, get_rank, get_world_size, is_distributed
from ..nn.queue import KeyQueue
from .base import Method, MethodConfig, Progress, RecipeChoice
from .registry import register

SMALL_IMAGE = 64  # at or below this side: CIFAR-sized defaults (queue of 4,096)


@dataclass
class MoCoConfig(MethodConfig):
    """MoCo v1's hyper-parameters (section 3.3 and 4.1 of arXiv 1911.05722)."""

    temperature: float = 0.07  # InfoNCE temperature tau (section 3.3, following InstDisc)
    # Keys in the dictionary K: 65,536 on ImageNet (section 4.1); None picks it from the image size:
    # 65,536 above 64 px, 4,096 at <= 64 px (CIFAR: the official CIFAR-10 demo and lightly's benchmark).
    queue_size: int | None = None
    ema_momentum: float = 0.999  # key encoder momentum m (section 3.2; 0.99-0.9999 work, 0.9 fails, table in 4.1)
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

    def validate(self) -> None:
        super().validate()
        if self.queue_size is not None and self.queue_size < 1:
            raise ConfigError(f"queue_size must be >= 1 (or null for the default), got {self.queue_size}.")
        if not 0.0 <= self.ema_momentum <= 1.0:
            raise ConfigError(f"ema_momentum must be in [0, 1], got {self.ema_momentum} (MoCo: 0.999).")
        if self.embed_dim < 1 or (self.proj_hidden_dim is not None and self.proj_hidden_dim < 1):
            raise ConfigError("embed_dim and proj_hidden_dim must be >= 1.")
        if self.shuffle_bn_groups < 1:
            raise ConfigError(f"shuffle_bn_groups must be >= 1, got {self.shuffle_bn_groups}.")


@dataclass
class MoCoV2Config(MoCoConfig):
    """MoCo v2's changes (arXiv 2003.04297): MLP head, temperature 0.2 (with blur and a cosine
    schedule in the recipe and the engine)."""

    temperature: float = 0.2  # table 1 of 2003.04297: 0.2 with the MLP head
    mlp_head: bool = True  # 2-layer MLP head (2048-d hidden for ResNet-50, ReLU)


class SubBatchNorm(nn.Module):
    """Batch norm whose training-mode statistics are those of ``groups`` consecutive equal
    sub-batches, each normalized on its own — one kernel call: ``(G*b, C, ...)`` is viewed as
    ``(b, G*C, ...)``. In eval mode it normalizes with the running statistics, as BatchNorm.

    It has BatchNorm's parameters and buffers, in the same order and under the same names (so
    state dicts and ``ema_update`` pair it with the query encoder's BN), but is deliberately not a
    ``_BatchNorm``: ``SyncBatchNorm.convert_sync_batchnorm`` must leave the key encoder's shuffled
    statistics alone. Used only in MoCo's key encoder, whose running statistics are copied from the
    query encoder after every step (``ema_update`` copies buffers), so they are not updated here.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.eps, self.groups = bn.eps, 1
        self.weight = nn.Parameter(bn.weight.detach().clone()) if bn.weight is not None else None
        self.bias = nn.Parameter(bn.bias.detach().clone()) if bn.bias is not None else None
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            value = getattr(bn, name, None)
            self.register_buffer(name, value.clone() if value is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.running_mean is not None:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        groups, (n, c), rest = self.groups, x.shape[:2], x.shape[2:]
        b = n // groups
        y = x.reshape(groups, b, c, *rest).transpose(0, 1).reshape(b, groups * c, *rest)
        weight = self.weight.repeat(groups) if self.weight is not None else None
        bias = self.bias.repeat(groups) if self.bias is not None else None
        y = F.batch_norm(y, None, None, weight, bias, True, 0.0, self.eps)
        return y.reshape(b, groups, c, *rest).transpose(0, 1).reshape(n, c, *rest)


def split_batchnorms(module: nn.Module) -> list[SubBatchNorm]:
    """Replace every BatchNorm1d/2d/3d inside ``module`` by a :class:`SubBatchNorm` with the same
    parameters and buffers (same state-dict keys); returns the replacements."""
    replaced = []
    for name, child in module.named_children():
        if type(child) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            split = SubBatchNorm(child)
            setattr(module, name, split)
            replaced.append(split)
        else:
            replaced += split_batchnorms(child)
    return replaced


@register
class MoCo(Method):
    """A query encoder and a momentum key encoder; InfoNCE of each query against its key (the other
    view of the image) and a FIFO queue of past keys (arXiv 1911.05722, Algorithm 1).

    The key encoder is an EMA of the query encoder (backbone and head), declared in
    :meth:`ema_pairs` and updated by the engine after each optimizer step. The step's keys are
    enqueued in :meth:`after_optimizer_step`, never in ``forward``. Shuffling BN: the key batch of
    all processes is gathered, permuted (the permutation drawn on rank 0 and broadcast), split into
    ``shuffle_bn_groups`` sub-batches (each process computes its own, as the official code) and
    unshuffled, so a query and its key never share BN statistics. On one process the same sub-batches
    are normalized separately in one pass (:class:`SubBatchNorm`), so one process with
    ``shuffle_bn_groups = W`` computes exactly the keys of W processes. The keys of all processes
    are gathered (in rank order) before they are enqueued, so every rank holds the same queue.
    """

    name = "moco_v1"
    description = "contrastive: momentum key encoder, queue of 65,536 negatives, shuffling BN (He et al. 2019)"
    paper = "arXiv 1911.05722"
    Config = MoCoConfig
    # SGD, lr 0.03 per 256 images, weight decay 1e-4, momentum 0.9, no warmup (section 4.1). The
    # paper's v1 steps the lr down at epochs 120 and 160 of 200; the engine's schedule is cosine (v2's).
    optim_defaults = {"optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4, "warmup_epochs": 0.0}

    def __init__(self, backbone, config: MoCoConfig) -> None:  # noqa: ANN001
        config.validate()
        super().__init__(backbone, config)
        width = backbone.feature_dim
        if config.mlp_head:
            self.head = MLP(width, config.proj_hidden_dim or width, config.embed_dim, num_layers=2, batch_norm=False)
        else:
            self.head = nn.Linear(width, config.embed_dim)
        self.key_backbone = copy.deepcopy(self.backbone)
        self.key_head = copy.deepcopy(self.head)
        self._split_bns = split_batchnorms(self.key_backbone) + split_batchnorms(self.key_head)
        for param in (*self.key_backbone.parameters(), *self.key_head.parameters()):
            param.requires_grad_(False)
        small = backbone.build_args.get("image_size", 224) <= SMALL_IMAGE
        self.queue = KeyQueue(config.queue_size or (4096 if small else 65536), config.embed_dim)
        self._pending_keys: torch.Tensor | None = None  # this step's keys, all processes, until enqueued

    def default_recipe(self, image_size: int) -> RecipeChoice:
        # Section 4.1: 224 crop of scale (0.2, 1), grayscale p=0.2, colour jitter 0.4 (hue 0.4, always
        # applied), flip; no blur. (torchvision order here: jitter before grayscale.)
        jitter = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.4, "jitter_p": 1.0}
        return RecipeChoice("simclr", {"crop_scale": (0.2, 1.0), "grayscale_p": 0.2, "blur_p": 0.0, **jitter})

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.key_backbone), (self.head, self.key_head)]

    def ema_momentum(self, progress: Progress) -> float:
        return self.config.ema_momentum

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self.queue.check_batch(views[0].shape[0] * get_world_size())
        query = self.head(self.backbone(views[0]))
        keys, all_keys = self.keys(views[1])
        self._pending_keys = all_keys
        return {"loss": info_nce(query, keys, self.queue.keys, self.config.temperature)}

    def after_optimizer_step(self, progress: Progress) -> None:
        if self._pending_keys is not None:
            self.queue.enqueue(self._pending_keys)
            self._pending_keys = None

    def bn_groups(self, batch: int, world: int) -> int:
        """Sub-batches of the global key batch for shuffling BN (1: no shuffling needed)."""
        if not self._split_bns:
            return 1  # no BN in the key encoder (e.g. a ViT): nothing can leak through statistics
        groups = max(self.config.shuffle_bn_groups, world)
        if groups % world or (batch * world) % groups or batch * world < 2 * groups:
            raise ConfigError(
                f"shuffling BN splits the global batch of {batch * world} keys into {groups} sub-batches over {world} "
                f"process(es): it needs a multiple of the process count and at least 2 images per sub-batch. "
                "Choose a batch_size divisible by shuffle_bn_groups, or another shuffle_bn_groups."
            )
        return groups

    @torch.no_grad()
    def keys(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalized keys (float32 even under autocast: the queue holds unit vectors) of this
        process's images and of the global batch (rank order)."""
        world, rank, batch = get_world_size(), get_rank(), images.shape[0]
        groups = self.bn_groups(batch, world)
        for bn in self._split_bns:
            bn.groups = groups // world
        if groups == 1:
            keys = F.normalize(self.key_head(self.key_backbone(images)).float(), dim=1)
            return keys, gather(keys)
        everything = gather(images)
        order = torch.randperm(everything.shape[0], device=images.device)
        if is_distributed():
            dist.broadcast(order, src=0)  # one permutation for all ranks
        mine = order.view(world, batch)[rank]
        shuffled = gather(F.normalize(self.key_head(self.key_backbone(everything[mine])).float(), dim=1))
        all_keys = torch.empty_like(shuffled).index_copy_(0, order, shuffled)  # undo the shuffle
        return all_keys[rank * batch : (rank + 1) * batch], all_keys


@register
class MoCoV2(MoCo):
    """MoCo v1 with an MLP head, temperature 0.2, SimCLR-style augmentation with blur and a cosine
    learning-rate schedule (arXiv 2003.04297); everything else (queue, momentum encoder, shuffling
    BN) as :class:`MoCo`."""

    name = "moco_v2"
    description = "MoCo with MLP head, blur augmentation, temperature 0.2, cosine schedule (Chen et al. 2020)"
    paper = "arXiv 2003.04297"
    Config = MoCoV2Config
    # Unchanged from v1: SGD, lr 0.03 per 256, weight decay 1e-4, no warmup; cosine decay (section 2).
    optim_defaults = {"optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4, "warmup_epochs": 0.0}

    def default_recipe(self, image_size: int) -> RecipeChoice:
        # The official "aug_plus": crop (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale
        # 0.2, Gaussian blur sigma in [0.1, 2] with p=0.5, flip. The simclr builder leaves blur off at
        # <= 64 px (as every CIFAR recipe does) and on with p=0.5 above.
        jitter = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "jitter_p": 0.8}
        return RecipeChoice("simclr", {"crop_scale": (0.2, 1.0), "grayscale_p": 0.2, **jitter})
