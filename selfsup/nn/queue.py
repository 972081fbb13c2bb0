"""A FIFO queue of keys: MoCo's dictionary of negatives (He et al. 2019, arXiv 1911.05722, section 3.2).

The queue is a registered buffer (``keys``, ``(size, dim)``, one key per row) with a write pointer,
so it is saved in checkpoints and moves with the module between devices. It is updated only by
:meth:`KeyQueue.enqueue`, which a method calls after the optimizer step (never inside
``forward``): the keys of step *t* become negatives from step *t + 1* on.

Batch sizes that do not divide the queue size: the official code asserts divisibility; here the
write wraps around the end of the buffer (row indices are taken modulo ``size``), so the queue
stays exactly first-in, first-out for any batch size: each enqueue overwrites the ``n`` oldest
keys. A batch larger than the queue cannot be enqueued without dropping keys of the same batch
and is refused with a :class:`~selfsup.errors.ConfigError`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["KeyQueue"]


class KeyQueue(nn.Module):
    """``size`` keys of dimension ``dim``, initialized at random on the unit sphere (as the
    official code: the first steps see random negatives until the queue has been filled once).

    ``keys[i]`` is row ``i`` of the ring buffer; ``pointer`` is the row the next key is written to,
    i.e. the oldest key. All updates are tensor operations on the buffer's device (no host sync).
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ConfigError(f"a key queue needs size >= 1 and dim >= 1, got size={size}, dim={dim}.")
        self.size, self.dim = int(size), int(dim)
        self.register_buffer("keys", F.normalize(torch.randn(self.size, self.dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def check_batch(self, batch: int) -> None:
        """Refuse a (global) batch of keys larger than the queue, naming the fix."""
        if batch > self.size:
            raise ConfigError(
                f"the queue holds {self.size} keys but a step enqueues {batch} (the global batch): a queue smaller "
                "than the batch would drop keys of the same step. Set queue_size >= batch_size "
                "(MoCo: 65,536 on ImageNet, 4,096 on CIFAR)."
            )

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` ``(n, dim)`` over the ``n`` oldest entries and advance the pointer.

        The keys are stored as given (MoCo passes L2-normalized keys) in the buffer's dtype.
        """
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"expected keys of shape (n, {self.dim}), got {tuple(keys.shape)}")
        n = keys.shape[0]
        self.check_batch(n)
        rows = (self.pointer + torch.arange(n, device=self.keys.device)) % self.size
        self.keys.index_copy_(0, rows, keys.detach().to(self.keys.dtype))
        self.pointer.copy_((self.pointer + n) % self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"
