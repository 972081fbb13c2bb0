"""End-to-end training throughput of SimCLR against its ceiling and the usual DataLoader pipeline.

Three pipelines, same model, same optimizer step, one run:

- ceiling:     the engine's step on views already on the device (no augmentation at all);
- selfsup:     the engine's real step: index the device-resident uint8 dataset, augment the
               batch on the device (selfsup.augment), step;
- dataloader:  torchvision.transforms.v2 applied per sample in a DataLoader with all cores as
               workers (the usual way), views copied to the device, then the same step.

Usage:  python benchmarks/throughput.py [--backbone resnet18] [--batch-size 512] [--steps 30]
        [--compile] [--write]      (--write updates BENCHMARKS.md)
Figures are source images per second (two views each).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA_DIR, hardware, timed, update_section  # noqa: E402

from selfsup.engine import TrainConfig, Trainer  # noqa: E402


class PerSampleViews(torch.utils.data.Dataset):
    """Two views of each image by torchvision.transforms.v2, one image at a time."""

    def __init__(self, images: torch.Tensor, size: int) -> None:
        from torchvision.transforms import v2

        self.images = images  # uint8 (N, H, W, 3) on the CPU
        self.transform = v2.Compose([
            v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i].permute(2, 0, 1)
        return self.transform(image), self.transform(image)


def measure(trainer: Trainer, steps: int, warmup: int, kind: str, workers: int) -> float:
    device = trainer.device
    batch = trainer.config.batch_size
    if kind == "dataloader":
        dataset = PerSampleViews(trainer.train_set.images, trainer.image_size)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
        )
        iterator = iter(loader)

        def step() -> None:
            nonlocal iterator
            try:
                v1, v2 = next(iterator)
            except StopIteration:
                iterator = iter(loader)
                v1, v2 = next(iterator)
            views = [v.to(device, non_blocking=True) for v in (v1, v2)]
            if device.type == "cuda":
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            trainer.step_on_views(views, None)
    else:
        batches = trainer.loader.epoch(0)
        fixed = trainer.make_views(next(iter(trainer.loader.epoch(1))).images)

        def step() -> None:
            nonlocal batches
            if kind == "ceiling":
                trainer.step_on_views(fixed, None)
                return
            try:
                b = next(batches)
            except StopIteration:
                batches = trainer.loader.epoch(0)
                b = next(batches)
            trainer.train_step(b.images, b.index)

    for _ in range(warmup):
        step()
    start = timed(device)
    for _ in range(steps):
        step()
    elapsed = timed(device) - start
    return steps * batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()

    config = TrainConfig(
        method="simclr", backbone=args.backbone, data="cifar10", data_dir=args.data_dir, train_subset=args.train_subset,
        batch_size=args.batch_size, epochs=1000, eval_every=None, progress=False, device=args.device,
        compile=args.compile, run_dir="/tmp/selfsup-bench", name=f"throughput-{os.getpid()}",
    )
    trainer = Trainer(config)
    results = {}
    for kind in ("ceiling", "selfsup", "dataloader"):
        results[kind] = measure(trainer, args.steps, args.warmup, kind, args.workers)
        print(f"{kind:>10}: {results[kind]:,.0f} images/s", flush=True)
    ratio_ceiling = results["selfsup"] / results["ceiling"]
    ratio_loader = results["selfsup"] / results["dataloader"]
    print(f"selfsup / ceiling = {ratio_ceiling:.2f}; selfsup / dataloader = {ratio_loader:.2f}")
    if args.write:
        device = trainer.device
        precision = "bf16 autocast, channels_last" if device.type == "cuda" else "fp32"
        name = f"throughput-{device.type}-{args.backbone}-{args.batch_size}{'-compiled' if args.compile else ''}"
        update_section(name, f"""
### Training throughput: SimCLR, {args.backbone}, batch {args.batch_size}, {device.type.upper()}{' (compiled)' if args.compile else ''}

`python benchmarks/throughput.py --backbone {args.backbone} --batch-size {args.batch_size} --steps {args.steps}{' --compile' if args.compile else ''} --write`
on {hardware(device)}; CIFAR-10 ({args.train_subset:,} training images), {precision}; source images/s (two views each), {args.steps} timed steps after {args.warmup} warm-up steps.

| pipeline | images/s | vs. selfsup |
|---|---|---|
| ceiling: step on views already on the device | {results['ceiling']:,.0f} | {results['ceiling'] / results['selfsup']:.2f}x |
| **selfsup: on-device uint8 data + batched augmentation + step** | **{results['selfsup']:,.0f}** | 1.00x |
| torchvision.transforms.v2 per sample, DataLoader with {args.workers} workers, + step | {results['dataloader']:,.0f} | {results['dataloader'] / results['selfsup']:.2f}x |

selfsup reaches **{ratio_ceiling:.2f} of the ceiling** and **{ratio_loader:.1f}x the DataLoader pipeline**.
""")


if __name__ == "__main__":
    main()
