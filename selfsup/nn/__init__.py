"""Building blocks: backbones, heads, EMA, distributed helpers."""

from .backbones import Backbone, available_backbones, create_backbone, layer_norm_2d, register_backbone
from .dist import all_reduce_mean, all_reduce_sum, all_reduce_sum_with_grad, gather, gather_with_grad
from .dist import get_rank, get_world_size, is_distributed, rank_slice
from .ema import cosine_momentum, ema_update, frozen_copy
from .heads import MLP

__all__ = [
    "MLP",
    "Backbone",
    "all_reduce_mean",
    "all_reduce_sum",
    "all_reduce_sum_with_grad",
    "available_backbones",
    "cosine_momentum",
    "create_backbone",
    "ema_update",
    "frozen_copy",
    "gather",
    "gather_with_grad",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "layer_norm_2d",
    "rank_slice",
    "register_backbone",
]
