"""SwAV — Caron, Misra, Mairal, Goyal, Bojanowski, Joulin 2020, "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments" (arXiv 2006.09882)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import normalized_output_std, sinkhorn, swav_loss
from ..nn import MLP, gather, get_rank, get_world_size
from ..nn.backbones import SMALL_IMAGE, forward_multicrop
from .base import Method, MethodConfig, Progress, RecipeChoice, mlp_dims
from .registry import register


@dataclass
class SwAVConfig(MethodConfig):
    """SwAV's hyper-parameters as the official batch-256 script sets them
    (facebookresearch/swav scripts/swav_200ep_bs256_pretrain.sh)."""

    # K: 3,000 (--nmb_prototypes 3000; solo-learn's CIFAR recipe uses 3,000 too).
    num_prototypes: int = 3000
    proj_hidden_dim: int = 2048  # hidden width of the projection MLP (official resnet50.py: hidden_mlp)
    proj_output_dim: int = 128  # the embedding z, L2-normalized before the prototypes (feat_dim)
    temperature: float = 0.1  # of the softmax over prototype scores (eq. 2)
    # Entropy regularization of the Sinkhorn-Knopp codes (section 3.1, appendix A.1). If the loss
    # sits at ln K (every image one output, uniform codes: the collapse of the official README's
    # "Common Issues"), its first workaround is 0.03: sharper codes. Measured at CPU scale
    # (BENCHMARKS.md): 0.05 collapsed on one seed of two, 0.03 learned on three of three.
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3  # "3 iterations are enough" (section 3.1)
    num_assign_views: int = 2  # codes are computed from the first views only: the global crops
    # Embeddings of past batches added to Sinkhorn's batch: 3,840 in the official batch-256 script
    # (--queue_length 3840), 0 (no queue) at batch 4,096. As main_swav.py, it is created (and starts
    # filling) at queue_start_epoch and is used once full (its last row non-zero).
    queue_length: int = 3840
    queue_start_epoch: float = 15.0  # --epoch_queue_starts 15
    # Prototypes get no update for this many epochs (official: 313 iterations at batch 4,096 and
    # 5,005 at batch 256, one epoch each): the loss is unstable while the network is random.
    freeze_prototypes_epochs: float = 1.0
    sync_bn: bool = True  # BN over the global batch when distributed (official: --sync_bn pytorch)

    def validate_fields(self) -> None:
        if self.num_prototypes < 2:
            raise ConfigError(f"swav num_prototypes must be >= 2, got {self.num_prototypes}.")
        if self.epsilon <= 0 or self.sinkhorn_iterations < 1:
            raise ConfigError(
                f"swav epsilon must be > 0 and sinkhorn_iterations >= 1, got {self.epsilon} and {self.sinkhorn_iterations}."
            )
        if self.num_assign_views < 1 or self.queue_length < 0:
            raise ConfigError(f"swav num_assign_views must be >= 1 and queue_length >= 0, got {self.num_assign_views} and {self.queue_length}.")


@register
class SwAV(Method):
    """Online clustering: every view predicts, from its own prototype scores, the Sinkhorn codes of
    the other global views (swapped prediction), with multi-crop.

    Across processes Sinkhorn's sums are all-reduced (the codes are those of the global batch) and
    the queue holds the embeddings of every process (identical on all ranks); each rank feeds its
    own strided share of the queue to Sinkhorn, so every queued sample is counted once.
    """

    name = "swav"
    description = "clustering: multi-crop, prototypes, Sinkhorn codes, swapped prediction (Caron et al. 2020)"
    paper = "arXiv 2006.09882"
    Config = SwAVConfig
    # The official batch-256 script: SGD wrapped in apex's LARC (trust 0.001, no clipping, every
    # parameter adapted and decayed), --base_lr 0.6 with no warmup and a cosine to --final_lr
    # 0.0006 (ratio 0.001), --wd 1e-6. The paper's 4.8 at batch 4,096 is 0.3 per 256 images: set
    # lr=0.3 for batch 4,096 (and queue_length=0).
    optim_defaults = {
        "optimizer": "lars", "lr": 0.6, "weight_decay": 1e-6, "warmup_epochs": 0.0, "min_lr_ratio": 0.001,
        "lars_trust": "larc", "exclude_bias_norm": False,
    }

    def __init__(self, backbone, config: SwAVConfig) -> None:  # noqa: ANN001
        super().__init__(backbone, config)
        self.num_prototypes = config.num_prototypes
        self.projector = MLP(backbone.feature_dim, config.proj_hidden_dim, config.proj_output_dim, num_layers=2)
        self.prototypes = nn.Linear(config.proj_output_dim, self.num_prototypes, bias=False)
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        shape = (config.num_assign_views, config.queue_length, config.proj_output_dim)
        self.register_buffer("queue", torch.zeros(shape))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self._pending: torch.Tensor | None = None  # this step's assigned embeddings, queued after the step
        # Whether the queue is full, cached on the host so that forward does not wait for the
        # device once it is (reset when a state dict is loaded).
        self._queue_full: bool | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_queue_full", None))

    def default_recipe(self, image_size: int) -> RecipeChoice:
        # SwAV's colour distortion is SimCLR's at strength 1 (official get_color_distortion). Crops:
        # 2 x 224 px of scale (0.14, 1) and 6 x 96 px of (0.05, 0.14) (the multicrop builder's
        # defaults, official script). At <= 64 px no published recipe uses local crops: two
        # full-size crops of scale (0.08, 1), as solo-learn's CIFAR recipe (augmentations/symmetric.yaml).
        colour = {"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2}
        if image_size <= SMALL_IMAGE:
            return RecipeChoice("multicrop", {**colour, "num_local": 0, "global_scale": (0.08, 1.0)})
        return RecipeChoice("multicrop", colour)

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "temperature": c.temperature, "num_prototypes": self.num_prototypes, "epsilon": c.epsilon,
            "sinkhorn_iterations": c.sinkhorn_iterations, "queue_length": c.queue_length,
            "queue_start_epoch": c.queue_start_epoch, "freeze_prototypes_epochs": c.freeze_prototypes_epochs,
            "projector": mlp_dims(self.projector),
        }

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        batch, assign = views[0].shape[0], self.config.num_assign_views
        if len(views) < max(2, assign):
            raise ConfigError(f"swav needs at least {max(2, assign)} views (num_assign_views={assign}), got {len(views)}.")
        features = self.projector(forward_multicrop(self.backbone, views))
        # Scores in float32: they are divided by 0.1 here and by 0.05 inside Sinkhorn.
        with torch.autocast(device_type=features.device.type, enabled=False):
            z = F.normalize(features.float(), dim=1)
            scores = z @ self.prototypes.weight.float().T  # (V * B, K)
        per_view = scores.split(batch)
        queue_ready = self._queue_ready()
        codes = []
        with torch.no_grad(), torch.autocast(device_type=features.device.type, enabled=False):
            for i in range(assign):
                view_scores = per_view[i].detach()
                if queue_ready:
                    queued = self.queue[i, get_rank() :: get_world_size()]
                    view_scores = torch.cat((queued @ self.prototypes.weight.detach().float().T, view_scores))
                codes.append(sinkhorn(view_scores, self.config.epsilon, self.config.sinkhorn_iterations)[-batch:])
        loss = swav_loss(per_view, codes, self.config.temperature)
        if self.config.queue_length > 0:
            self._pending = z[: assign * batch].detach().view(assign, batch, -1)
        # Collapse monitor (SimSiam's Figure 2 measure) on the first view's embeddings: ~1/sqrt(d)
        # when spread; SwAV's collapse (one output for every image, uniform codes, loss ln K) gives 0.
        return {"loss": loss, "output_std": normalized_output_std(z[:batch])}

    def before_optimizer_step(self, progress: Progress) -> None:
        if self._frozen(progress):
            self.prototypes.weight.grad = None  # no update, no weight decay, no momentum

    @torch.no_grad()
    def after_optimizer_step(self, progress: Progress) -> None:
        if not self._frozen(progress):
            # Prototypes live on the unit sphere (section 3.1): scores are cosine similarities.
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        pending, self._pending = self._pending, None
        if pending is None or progress.epoch < self.config.queue_start_epoch:
            return
        # Every process enqueues the embeddings of the global batch, newest first.
        new = gather(pending.transpose(0, 1).contiguous()).transpose(0, 1)  # (A, W * B, D)
        length = self.config.queue_length
        self.queue.copy_(torch.cat((new[:, :length].to(self.queue.dtype), self.queue), dim=1)[:, :length])
        self.queue_filled.add_(new.shape[1]).clamp_(max=length)

    def _queue_ready(self) -> bool:
        if self.config.queue_length == 0 or self.progress.epoch < self.config.queue_start_epoch:
            return False
        if not self._queue_full:
            self._queue_full = bool(self.queue_filled >= self.config.queue_length)
        return self._queue_full

    def _frozen(self, progress: Progress) -> bool:
        return progress.epoch < self.config.freeze_prototypes_epochs
