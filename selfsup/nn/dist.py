"""Distributed helpers that also work without a process group (then they are identities)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank_slice(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """This process's ``batch`` rows of a tensor drawn for the global batch (rank order)."""
    return tensor[get_rank() * batch : (get_rank() + 1) * batch]


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _summed(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of ``tensor`` summed over the ranks."""
    out = tensor.contiguous().clone()
    dist.all_reduce(out)
    return out


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sends each rank the gradient of its own slice, summed over the
    ranks whose losses used it (so DDP's averaging yields the single-process gradient)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.batch = tensor.shape[0]
        return _all_gather(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks: each rank's output depends on
    every rank's input, so the gradient of the sum of all ranks' losses with respect to this
    rank's input is the all-reduced sum of the output gradients (DDP then averages, as for
    :class:`_GatherWithGrad`)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return _summed(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return _summed(grad)


def all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks, differentiably (global batch-norm statistics);
    identity on one process."""
    return _AllReduceSum.apply(tensor) if is_distributed() else tensor


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, differentiably; identity on one process."""
    return _GatherWithGrad.apply(tensor) if is_distributed() else tensor


@torch.no_grad()
def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0 (no gradient)."""
    return _all_gather(tensor) if is_distributed() else tensor


@torch.no_grad()
def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    return _summed(tensor) / dist.get_world_size() if is_distributed() else tensor


@torch.no_grad()
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    return _summed(tensor) if is_distributed() else tensor
