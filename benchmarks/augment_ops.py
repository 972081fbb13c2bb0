"""How many aten operations one call of each augmentation recipe issues (torch.profiler, CPU).

On a GPU each operation is at least one kernel launch of a few microseconds whatever the batch, so
this count bounds how fast the batched path can go on small images (BENCHMARKS.md, "First GPU
session"). Counted on the CPU, nested calls included, on one batch of CIFAR-10-sized uint8 images.

    python benchmarks/augment_ops.py [--batch-size 512] [--recipes simclr,byol,multicrop]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from selfsup.augment import recipes as R


def count(recipe: R.Recipe, images: torch.Tensor, generator: torch.Generator) -> tuple[int, int]:
    """(aten calls, of which dtype/device copies ``aten::_to_copy``) of one call, after a warm-up call."""
    recipe(images, generator)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        recipe(images, generator)
    events = prof.key_averages()
    total = sum(e.count for e in events if e.key.startswith("aten::"))
    copies = sum(e.count for e in events if e.key == "aten::_to_copy")
    return total, copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--recipes", default="simclr,byol,multicrop")
    args = parser.parse_args()
    images = torch.randint(0, 256, (args.batch_size, 32, 32, 3), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    print(f"aten operations per recipe call, batch {args.batch_size} of 32 px images, CPU, torch {torch.__version__}")
    for name in args.recipes.split(","):
        total, copies = count(getattr(R, name)(32), images, generator)
        print(f"{name}: {total} aten calls, {copies} of them dtype/device copies (aten::_to_copy)")


if __name__ == "__main__":
    main()
