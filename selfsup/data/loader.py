"""Batches of uint8 images, labels and sample indices, on the training device.

Small datasets live on the device as one uint8 tensor (as in airbench): a batch is an index into
it, so there are no workers, no collation and no host-to-device copies in the hot path. Large
folders are streamed by DataLoader workers that only decode. Either way the order of an epoch is
a permutation drawn from ``(seed, epoch)``, so it is the same on every run and every rank, and a
resumed run continues with exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..errors import DataError
from .folder import FolderStream
from .imageset import ImageSet


class Batch(NamedTuple):
    images: torch.Tensor  # uint8 (B, H, W, 3) on the device
    labels: torch.Tensor  # int64 (B,), -1 where unknown
    index: torch.Tensor  # int64 (B,), position in the dataset


def epoch_permutation(size: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(size, generator=generator)


@dataclass(eq=False)
class BatchLoader:
    """Iterate over a dataset in batches on ``device``.

    ``batch_size`` is the global batch; with ``world_size`` processes each rank receives its own
    contiguous ``batch_size // world_size`` slice of every global batch, so the union over ranks is
    exactly the single-process batch.
    """

    dataset: ImageSet
    batch_size: int
    device: torch.device | str = "cpu"
    shuffle: bool = True
    drop_last: bool = True
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    num_workers: int = 2

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise DataError(f"batch size must be positive, got {self.batch_size}.")
        if self.drop_last and self.batch_size > len(self.dataset):
            raise DataError(
                f"batch size {self.batch_size} is larger than the dataset ({len(self.dataset)} images); "
                "use a smaller batch_size or more data."
            )
        if self.batch_size % self.world_size:
            raise DataError(f"batch size {self.batch_size} is not divisible by the {self.world_size} processes.")
        self.device = torch.device(self.device)
        self.local_batch = self.batch_size // self.world_size
        self.labels = self.dataset.labels.to(self.device)
        self.bad_files = 0  # unreadable files dropped from streamed batches so far
        self.images: torch.Tensor | None = self.dataset.images  # None when streamed; moved to a GPU
        if self.images is not None and self.device.type == "cuda":
            self.images = self.images.to(self.device, non_blocking=True)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _global_slices(self, epoch: int, start_step: int) -> Iterator[torch.Tensor]:
        n = len(self.dataset)
        order = epoch_permutation(n, self.seed, epoch) if self.shuffle else torch.arange(n)
        for step in range(start_step, len(self)):
            chunk = order[step * self.batch_size : (step + 1) * self.batch_size]
            local = chunk[self.rank * self.local_batch : (self.rank + 1) * self.local_batch]
            yield local if self.world_size > 1 else chunk

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch``, beginning at step ``start_step`` within it (for resuming)."""
        if self.images is not None:
            for index in self._global_slices(epoch, start_step):
                index = index.to(self.device, non_blocking=True)
                yield Batch(self.images[index], self.labels[index], index)
            return
        yield from self._stream(epoch, start_step)

    def _stream(self, epoch: int, start_step: int) -> Iterator[Batch]:
        stream = FolderStream(self.dataset.paths or [], self.dataset.image_size or 64)
        batches = [b.tolist() for b in self._global_slices(epoch, start_step)]
        loader = torch.utils.data.DataLoader(
            stream,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for ids, (images, ok) in zip(batches, loader):
            index = torch.tensor(ids, dtype=torch.long)
            if not bool(ok.all()):
                # Drop unreadable files from the batch rather than stopping the epoch.
                if self.bad_files == 0:
                    bad = [self.dataset.paths[i] for i, good in zip(ids, ok.tolist()) if not good]
                    print(f"selfsup: skipping unreadable image(s), first: {bad[0]}", file=sys.stderr)
                self.bad_files += int((~ok).sum())
                images, index = images[ok], index[ok]
            index = index.to(self.device, non_blocking=True)
            yield Batch(images.to(self.device, non_blocking=True), self.labels[index], index)
