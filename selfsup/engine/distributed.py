"""Training on several processes with PyTorch's own distributed engine (``torchrun``).

One process per device. ``torchrun`` (or ``selfsup train --devices N``, which starts it) sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` joins
the process group (NCCL on GPUs, gloo on CPUs) and gives each process the GPU of its local rank.
The rest of the engine then keeps one promise: **W processes with batch B each compute what one
process computes with batch W·B** (tests/test_distributed.py checks it for every method):

- data: ``batch_size`` is the global batch; each rank takes its contiguous slice of the same
  global permutation (:class:`~selfsup.data.BatchLoader`) and augments it with the random
  parameters drawn for the whole global batch (``Recipe(..., shard=(rank, world))``), so a view
  does not depend on how the batch is split;
- gradients: DistributedDataParallel averages them over ranks; each method makes the mean of its
  per-rank losses the loss of the global batch (negatives gathered with gradient, Sinkhorn sums,
  banks, queues and centres updated from every rank: see the method files and docs/distributed.md);
- batch norm: with ``sync_bn`` (the method's paper's choice unless the config says otherwise) the
  statistics are those of the global batch (:func:`convert_sync_batchnorm`: PyTorch's
  ``SyncBatchNorm`` on GPUs, :class:`GlobalBatchNorm` on CPUs, where ``SyncBatchNorm`` does not
  run); without it each process normalizes with its own batch, as the paper's code does (MoCo,
  InstDisc, CMC), and the running statistics are averaged over the processes after every step
  (:func:`average_batchnorm_statistics`) so that every rank, and every checkpoint, holds the same
  model. One process reproduces such a run with :func:`emulate_per_process_bn`.
- only rank 0 writes the run directory; a resume reads the checkpoint on rank 0 and broadcasts it,
  so the other ranks (other machines) need no shared filesystem.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ConfigError
from ..nn.dist import all_reduce_sum_with_grad, is_distributed

ENV_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def requested_world_size() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE must be an integer, got '{os.environ['WORLD_SIZE']}'.") from None


def setup(device: torch.device) -> torch.device:
    """Join the process group described by torchrun's environment (once per process) and return
    this process's device: ``cuda:LOCAL_RANK`` for a CUDA device, the CPU otherwise. Without a
    launcher (``WORLD_SIZE`` unset or 1) and without a process group, ``device`` is returned as is."""
    world = dist.get_world_size() if dist.is_initialized() else requested_world_size()
    if world <= 1:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank() if dist.is_initialized() else 0))
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if device.index is not None and device.index != local_rank:
            raise ConfigError(
                f"with {world} processes each one uses the GPU of its local rank; device '{device}' was asked for. "
                "Use device=cuda (or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES."
            )
        if local_rank >= count:
            raise ConfigError(
                f"process of local rank {local_rank} has no GPU: this machine has {count}. "
                f"Start at most {count} processes per machine (--devices / --nproc-per-node)."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        missing = [key for key in ENV_KEYS if key not in os.environ]
        if missing:
            raise ConfigError(
                f"WORLD_SIZE={world} but {', '.join(missing)} is not set: start distributed runs with torchrun "
                "(torchrun --nproc-per-node N -m selfsup train ...) or selfsup train --devices N."
            )
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return device


def shutdown(barrier: bool = False) -> None:
    """Leave the process group (at the end of ``selfsup train``).

    ``barrier``: first wait until every rank is done (use it only when this rank finished
    normally: with a lost peer a barrier would wait for the group's timeout). Without it, rank 0,
    which hosts the rendezvous store, may tear the group down while a slower rank is still
    talking to it; that rank's communication thread then aborts the process (seen as a SIGABRT,
    "terminate called without an active exception", on a run that had finished its work)."""
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable object; identity on one process)."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest of the ranks' integers (e.g. "a rank received a stop signal")."""
    if not is_distributed():
        return int(value)
    tensor = torch.tensor([int(value)], device=device, dtype=torch.long)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def is_communication_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another process is gone (gloo reports
    a closed connection, NCCL an aborted communicator or a timeout)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return any(mark in text for mark in ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL", "Gloo", "gloo"))


def _average_in_place(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor by its mean over the ranks, in one all-reduce of the flattened list."""
    if not tensors:
        return
    flat = torch._utils._flatten_dense_tensors(tensors)
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for tensor, synced in zip(tensors, torch._utils._unflatten_dense_tensors(flat, tensors)):
        tensor.copy_(synced)


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average ``.grad`` over ranks (for modules outside DDP, e.g. the online probe)."""
    if not is_distributed():
        return
    _average_in_place([p.grad for p in parameters if p.grad is not None])


def _all_gather(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``tensor`` (same shape on all ranks) concatenated along ``dim``, in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=dim)


def gather_rows(part: torch.Tensor, total: int) -> torch.Tensor:
    """Concatenate the ranks' consecutive row blocks of a ``total``-row tensor (the blocks of
    :func:`shard_bounds`, padded to equal size for the all-gather)."""
    if not is_distributed():
        return part
    padded = part.new_zeros((-(-total // dist.get_world_size()), *part.shape[1:]))
    padded[: part.shape[0]] = part
    return _all_gather(padded)[:total]


def gather_columns(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every rank's tensors (same shapes on all ranks) concatenated along dim 1, in rank order:
    the kNN's merge of per-shard neighbour candidates (``(queries, k)`` -> ``(queries, W k)``)."""
    if not is_distributed():
        return tensors
    return tuple(_all_gather(tensor, dim=1) for tensor in tensors)


def shard_bounds(total: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank`` when ``total`` rows are cut into ``world`` blocks."""
    per = -(-total // world)
    return min(rank * per, total), min((rank + 1) * per, total)


# -- batch normalization ------------------------------------------------------------------------


class GlobalBatchNorm(_BatchNorm):
    """Batch norm over the global batch, for any device and backend (PyTorch's ``SyncBatchNorm``
    runs on GPUs only): the per-channel sum and the sum of squared deviations are all-reduced,
    differentiably (:func:`~selfsup.nn.dist.all_reduce_sum_with_grad`), so the forward pass and
    the gradient are those of one process normalizing the concatenated batch. Two passes (mean,
    then centred squares) rather than E[x²] - E[x]², which loses digits when the mean is large.
    Running statistics use the unbiased variance of the global batch, as ``SyncBatchNorm``. On one
    process, or in eval mode, it is plain batch norm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions (N, C, ...), got {x.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and is_distributed()):
            return super().forward(x)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        dims = [0, *range(2, x.dim())]
        xf = x.float()  # statistics in float32, as batch norm under autocast
        local_count = xf.new_full((1,), x.numel() // x.shape[1])
        sums = all_reduce_sum_with_grad(torch.cat((xf.sum(dims), local_count)))
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centred = xf - mean.view(shape)
        var = all_reduce_sum_with_grad((centred * centred).sum(dims)) / count
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:  # None: a scale without a shift (SimCLR's last projector BN)
            y = y + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        return y.to(x.dtype)


def _is_local(module: nn.Module) -> bool:
    """Whether ``module`` is batch norm over this process's batch only (not synchronized)."""
    return isinstance(module, _BatchNorm) and not isinstance(module, (nn.SyncBatchNorm, GlobalBatchNorm))


def _replace_batchnorms(module: nn.Module, make: Any) -> nn.Module:
    """Replace every ``_BatchNorm`` below ``module`` (and ``module`` itself) by ``make(bn)``."""
    if _is_local(module):
        return make(module)
    for name, child in module.named_children():
        replaced = _replace_batchnorms(child, make)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def _adopt(out: nn.Module, bn: _BatchNorm) -> nn.Module:
    """``out`` holding ``bn``'s Parameter and buffer objects (so optimizers and state-dict keys are
    unaffected), in ``bn``'s train/eval mode."""
    for name in ("weight", "bias"):  # None: no affine, or a scale without a shift
        out.register_parameter(name, getattr(bn, name))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        out.register_buffer(name, getattr(bn, name))
    return out.train(bn.training)


def _global_from(bn: _BatchNorm) -> GlobalBatchNorm:
    return _adopt(GlobalBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats), bn)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Batch norm over the global batch in every BN layer of ``module`` (online networks and EMA
    targets alike, as the official BYOL, MoCo v3, SwAV and DINO code convert whole models).
    Parameters and buffers are kept (same objects, same state-dict keys). Modules that normalize
    on purpose over part of the batch and are not ``_BatchNorm`` (MoCo's shuffling BN) are left
    alone."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _replace_batchnorms(module, _global_from)


def local_batchnorms(module: nn.Module) -> list[_BatchNorm]:
    """BN layers that normalize with this process's batch only (not synchronized)."""
    return [m for m in module.modules() if _is_local(m) and m.track_running_stats and m.running_mean is not None]


@torch.no_grad()
def average_batchnorm_statistics(layers: list[_BatchNorm]) -> None:
    """Average the running mean and variance of per-process BN layers over the ranks (one
    all-reduce). Each rank updated them from its own batch; the average is the same on every rank,
    so evaluation and checkpoints do not depend on which rank wrote them. (DDP's default instead
    copies rank 0's buffers at each forward, which ties the model to rank 0's share of the data.)"""
    if not layers or not is_distributed():
        return
    _average_in_place([b for m in layers for b in (m.running_mean, m.running_var)])


class PerProcessBatchNorm(nn.Module):
    """One process computing what per-process batch norm computes on ``world_size`` processes.

    The batch is cut into ``world_size`` consecutive equal parts, as the engine splits a global
    batch over ranks; each part is normalized with its own statistics (one kernel call: ``(W·b, C)``
    viewed as ``(b, W·C)``), and the running statistics move by the average of the parts' updates,
    which is what :func:`average_batchnorm_statistics` leaves on every rank. Parameters and
    buffers are those of the replaced layer (same objects, same state-dict keys).

    Exact for layers whose input is the global batch in rank order (a backbone on one view, as in
    MoCo, InstDisc and CMC); a layer fed a concatenation of several views sees ``[view 1 of all
    ranks, view 2 of all ranks]``, whose consecutive parts are not the ranks' batches.
    """

    def __init__(self, bn: _BatchNorm, world_size: int) -> None:
        super().__init__()
        self.world_size = world_size
        self.num_features, self.eps, self.momentum = bn.num_features, bn.eps, bn.momentum
        self.affine, self.track_running_stats = bn.affine, bn.track_running_stats
        _adopt(self, bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tracking = self.track_running_stats and self.running_mean is not None
        if not self.training and tracking:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        groups, (n, c), rest = self.world_size, x.shape[:2], x.shape[2:]
        if n % groups:
            raise ValueError(f"a batch of {n} cannot be split into {groups} equal per-process batches")
        factor = 0.0
        running_mean = running_var = None
        if tracking:
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            running_mean, running_var = self.running_mean.repeat(groups), self.running_var.repeat(groups)
        y = x.reshape(groups, n // groups, c, *rest).transpose(0, 1).reshape(n // groups, groups * c, *rest)
        weight = self.weight.repeat(groups) if self.weight is not None else None
        bias = self.bias.repeat(groups) if self.bias is not None else None
        y = F.batch_norm(y, running_mean, running_var, weight, bias, True, factor, self.eps)
        if tracking:
            with torch.no_grad():
                self.running_mean.copy_(running_mean.view(groups, c).mean(0))
                self.running_var.copy_(running_var.view(groups, c).mean(0))
        return y.reshape(n // groups, groups, c, *rest).transpose(0, 1).reshape(n, c, *rest)


def emulate_per_process_bn(module: nn.Module, world_size: int) -> nn.Module:
    """Make one process normalize as ``world_size`` processes with per-process BN would (every
    ``_BatchNorm`` becomes a :class:`PerProcessBatchNorm`): how tests/test_distributed.py compares
    MoCo, InstDisc and CMC, whose papers keep BN per GPU, with a single process."""
    return _replace_batchnorms(module, lambda bn: PerProcessBatchNorm(bn, world_size))


# -- the model wrapper and the launcher -----------------------------------------------------------


def wrap(method: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the method: it averages the gradients of the trainable
    parameters (EMA targets and frozen layers have ``requires_grad=False`` and are ignored) and
    broadcasts rank 0's parameters and buffers once, at construction. Buffers are not broadcast at
    every forward (``broadcast_buffers=False``): queues, banks and centres are kept identical by
    the methods, and per-process BN statistics by :func:`average_batchnorm_statistics`."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        method,
        device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False,
        gradient_as_bucket_view=True,  # no second copy of the gradients
    )


def launch(num_processes: int, argv: list[str]) -> int:
    """Run ``selfsup <argv>`` on ``num_processes`` processes of this machine under torchrun
    (``torch.distributed.run --standalone``) and return its exit status. No shell is involved.

    Ctrl-C reaches torchrun and its workers directly (they share the terminal's process group),
    so this launcher ignores SIGINT and waits for them to save and stop; a SIGTERM sent to the
    launcher alone is passed on to torchrun, which passes it to the workers."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}",
        "-m", "selfsup", *argv,
    ]
    child = subprocess.Popen(command)
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum)),
    }
    try:
        return child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
