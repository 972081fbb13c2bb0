"""Shuffling BN for MoCo v1/v2's key encoder (He et al. 2019, arXiv 1911.05722, section 3.3): the
key encoder must not normalize a key with the statistics of the batch its query came from.

The global key batch is gathered, permuted with one permutation drawn on rank 0 and broadcast,
split into sub-batches that are normalized on their own (each process computes its own share, as
the official code), and unshuffled (:func:`shuffled_forward`).
On one process the sub-batches are normalized separately in one kernel call by
:class:`SubBatchNorm`, so one process with ``groups = W`` computes exactly the keys of W processes.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .dist import gather, get_rank, get_world_size, is_distributed, rank_slice

__all__ = ["SubBatchNorm", "shuffle_groups", "shuffled_forward", "split_batchnorms"]


class SubBatchNorm(nn.Module):
    """Batch norm whose training-mode statistics are those of ``groups`` consecutive equal
    sub-batches, each normalized on its own — one kernel call: ``(G*b, C, ...)`` is viewed as
    ``(b, G*C, ...)``. In eval mode it normalizes with the running statistics, as BatchNorm.

    It has BatchNorm's parameters and buffers, in the same order and under the same names (so
    state dicts and ``ema_update`` pair it with the query encoder's BN), but is deliberately not a
    ``_BatchNorm``: ``SyncBatchNorm.convert_sync_batchnorm`` must leave the key encoder's shuffled
    statistics alone. Used only in MoCo's key encoder, which runs in training mode only (keys are
    always normalized with their sub-batch's statistics), so its running statistics are never read
    and are not tracked: they keep their initial values (the official code updates them as a side
    effect of its key passes and never uses them either).
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.eps, self.groups = bn.eps, 1
        for name in ("weight", "bias"):  # frozen when the BN was (a key encoder's)
            value = getattr(bn, name)
            param = nn.Parameter(value.detach().clone(), value.requires_grad) if value is not None else None
            self.register_parameter(name, param)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            value = getattr(bn, name, None)
            self.register_buffer(name, value.clone() if value is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.running_mean is not None:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        groups, (n, c), rest = self.groups, x.shape[:2], x.shape[2:]
        b = n // groups
        y = x.reshape(groups, b, c, *rest).transpose(0, 1).reshape(b, groups * c, *rest)
        weight, bias = (p.repeat(groups) if p is not None else None for p in (self.weight, self.bias))
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


def shuffle_groups(split_bns: list[SubBatchNorm], wanted: int, batch: int, world: int) -> int:
    """Sub-batches of the global key batch (``batch`` per process, ``world`` processes) for
    ``wanted`` groups (``shuffle_bn_groups``; at least one per process); 1: no shuffling needed."""
    if not split_bns:
        return 1  # no BN in the key encoder (e.g. a ViT): nothing can leak through statistics
    groups = max(wanted, world)
    if groups % world or (batch * world) % groups or batch * world < 2 * groups:
        raise ConfigError(
            f"shuffling BN splits the global batch of {batch * world} keys into {groups} sub-batches over {world} "
            f"process(es): it needs a multiple of the process count and at least 2 images per sub-batch. "
            "Choose a batch_size divisible by shuffle_bn_groups, or another shuffle_bn_groups."
        )
    return groups


@torch.no_grad()
def shuffled_forward(
    encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, split_bns: list[SubBatchNorm], wanted: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``encode`` (the key encoder, whose BNs are ``split_bns``) of this process's ``images`` and of
    the global batch (rank order), each image normalized with the statistics of its sub-batch."""
    world, rank, batch = get_world_size(), get_rank(), images.shape[0]
    groups = shuffle_groups(split_bns, wanted, batch, world)
    for bn in split_bns:
        bn.groups = groups // world
    if groups == 1:
        keys = encode(images)
        return keys, gather(keys)
    everything = gather(images)
    order = torch.randperm(everything.shape[0], device=images.device)
    if is_distributed():
        dist.broadcast(order, src=0)  # one permutation for all ranks
    mine = order.view(world, batch)[rank]
    shuffled = gather(encode(everything[mine]))
    all_keys = torch.empty_like(shuffled).index_copy_(0, order, shuffled)  # undo the shuffle
    return rank_slice(all_keys, batch), all_keys
