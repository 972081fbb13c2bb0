"""A memory bank: one L2-normalized vector per training sample, kept on the device.

The non-parametric classifier of InstDisc (Wu et al. 2018, arXiv 1805.01978, section 3.2) and
CMC's per-view memories (Tian et al. 2019, arXiv 1906.05849) keep an ``N x D`` table ``V`` of
embeddings. It starts as random unit vectors; after each optimizer step the entries of the
samples just seen move toward their new embeddings with momentum and are renormalized:

    v_i <- (m * v_i + (1 - m) * f_i) / || m * v_i + (1 - m) * f_i ||

Negatives are drawn uniformly from the bank (the uniform noise distribution ``P_n = 1/N``).
The table is a registered buffer, so it is checkpointed with the model and moves with ``.to()``.
This module knows nothing of the methods that use it; they call :meth:`update` after the step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .dist import get_world_size, rank_slice


def random_unit_vectors(size: int, dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``size`` vectors drawn uniformly on the unit sphere of R^dim (normalized Gaussians)."""
    return F.normalize(torch.randn(size, dim, device=device), dim=1)


class MemoryBank(nn.Module):
    """``size`` x ``dim`` L2-normalized vectors with a momentum update of given rows.

    ``resize_on_load``: when the size is not known at construction (it is the dataset's), a
    placeholder bank takes the size of the bank it is loaded from; :meth:`resize` fixes the size
    and turns this off, so that a checkpoint of another size is then refused as usual.
    """

    bank: torch.Tensor

    def __init__(self, size: int, dim: int, momentum: float = 0.5, resize_on_load: bool = False) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"a memory bank needs size >= 1 and dim >= 1, got {size} x {dim}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"memory-bank momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.resize_on_load = resize_on_load
        self.register_buffer("bank", random_unit_vectors(size, dim))

    @property
    def size(self) -> int:
        return int(self.bank.shape[0])

    @property
    def dim(self) -> int:
        return int(self.bank.shape[1])

    def resize(self, size: int) -> None:
        """Re-initialize the bank with ``size`` random unit vectors (on its current device)."""
        if size < 1:
            raise ValueError(f"a memory bank needs size >= 1, got {size}")
        self.bank = random_unit_vectors(size, self.dim, self.bank.device)
        self.resize_on_load = False

    @torch.no_grad()
    def update(self, index: torch.Tensor, features: torch.Tensor) -> None:
        """Move rows ``index`` toward ``features`` (L2-normalized embeddings) with the bank's
        momentum and renormalize them. ``index`` must not repeat (one entry per sample)."""
        index = index.to(self.bank.device).long()
        old = self.bank.index_select(0, index)
        new = self.momentum * old + (1.0 - self.momentum) * features.detach().to(self.bank.device, self.bank.dtype)
        self.bank.index_copy_(0, index, F.normalize(new, dim=1))

    def sample(self, batch: int, count: int) -> torch.Tensor:
        """``(batch, count)`` indices drawn uniformly (with replacement) from ``0 .. size - 1``,
        from the default generator of the bank's device (saved in the engine's checkpoints)."""
        return torch.randint(0, self.size, (batch, count), device=self.bank.device)

    def sample_local(self, batch: int, count: int) -> torch.Tensor:
        """This process's ``(batch, count)`` rows of a :meth:`sample` for the global batch: every
        rank draws the same indices from the same generator state and keeps its own rows."""
        return rank_slice(self.sample(batch * get_world_size(), count), batch)

    def similarity(self, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``features . v_j`` for the rows ``index``: ``(B, D)`` and ``(B, K)`` -> float32 ``(B, K)``.

        Gradients flow to ``features`` only (the bank is not a parameter). Computed in float32
        outside autocast: divided by a temperature of 0.07, bf16 similarities would move the
        logits by about 0.05. Two equal ways: gathering the ``(B, K, D)`` rows (memory traffic
        ``B K D``), or scoring against the whole bank and picking the columns (``B N D`` flops in
        one matmul, ``B N`` memory); the second is used when ``N <= 8 K`` (e.g. 16,384 negatives
        from CIFAR-10's 50,000 entries), where it is the cheaper on GPUs and CPUs alike.
        """
        index = index.to(self.bank.device)
        with torch.autocast(device_type=features.device.type, enabled=False):
            if self.size <= 8 * index.shape[1]:
                return (features.float() @ self.bank.T).gather(1, index)
            rows = self.bank[index]  # (B, K, D)
            return torch.einsum("bd,bkd->bk", features.float(), rows)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        stored = state_dict.get(prefix + "bank")
        if self.resize_on_load and stored is not None and stored.dim() == 2 and stored.shape != self.bank.shape:
            self.bank = torch.empty(stored.shape, device=self.bank.device, dtype=self.bank.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, momentum={self.momentum}"
