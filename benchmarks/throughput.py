"""Training throughput of SimCLR: selfsup against its ceiling, the usual DataLoader pipeline and the
peer library lightly, side by side in one run.

Pipelines (same backbone, same batch, same projection head shape, same NT-Xent; one process):

- ceiling:     selfsup's step on views already on the device (no augmentation at all);
- selfsup:     selfsup's real step: index the device-resident uint8 dataset, augment the batch on
               the device (selfsup.augment), step;
- dataloader:  torchvision.transforms.v2 per sample in a DataLoader with one worker per core,
               views copied to the device, then selfsup's step;
- lightly:     lightly 1.6.0 as its CIFAR-10 benchmark uses it: ``SimCLRTransform`` (PIL, per
               sample) in a DataLoader with one worker per core, ``SimCLRProjectionHead``,
               ``NTXentLoss``, in a plain PyTorch loop (float32, its default); with
               ``--lightly-bf16`` also the same loop given bf16 autocast and channels_last by hand.

Pipelines are measured in interleaved rounds (each round runs every pipeline once) and the median
round is reported, so a change in the machine's load hits them alike. ``--precision-grid`` adds
the ceiling step in float32 / bf16 autocast x contiguous / channels_last; ``--compile`` the same
step under ``torch.compile`` (compile seconds and steady state).

lightly is a benchmark-only dependency, never a runtime one:
    pip install --no-deps lightly==1.6.0 lightning_utilities aenum

Usage:  python benchmarks/throughput.py [--backbone tiny] [--batch-size 256] [--steps 10]
        [--rounds 3] [--precision-grid] [--compile] [--write]      (--write updates BENCHMARKS.md)
Figures are source images per second (two views each).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import selfsup  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch loads)
import torch  # noqa: E402
from _common import DEFAULT_DATA_DIR, hardware, timed, update_section  # noqa: E402

from selfsup.engine import TrainConfig, Trainer  # noqa: E402
from selfsup.engine.hardware import configure_cpu_threads  # noqa: E402

Step = Callable[[], None]


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


class PILDataset(torch.utils.data.Dataset):
    """PIL images through a per-sample transform (lightly's and torchvision.datasets' way)."""

    def __init__(self, images: torch.Tensor, transform: Callable) -> None:
        self.images = images.numpy()
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):  # noqa: ANN204
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i]))


def endless(loader: torch.utils.data.DataLoader):  # noqa: ANN201
    while True:
        yield from loader


def loader_of(dataset: torch.utils.data.Dataset, batch: int, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
    )


def selfsup_steps(trainer: Trainer, workers: int) -> dict[str, Step]:
    device, batch = trainer.device, trainer.config.batch_size
    fixed = trainer.make_views(next(iter(trainer.loader.epoch(1))).images)
    batches = endless_batches(trainer)
    per_sample = endless(loader_of(PerSampleViews(trainer.train_set.images.cpu(), trainer.image_size), batch, workers))

    def ceiling() -> None:
        trainer.step_on_views(fixed, None)

    def end_to_end() -> None:
        b = next(batches)
        trainer.train_step(b.images, b.index)

    def dataloader() -> None:
        views = [v.to(device, non_blocking=True) for v in next(per_sample)]
        if trainer.compute.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        trainer.step_on_views(views, None)

    return {"ceiling": ceiling, "selfsup": end_to_end, "dataloader": dataloader}


def endless_batches(trainer: Trainer):  # noqa: ANN201
    epoch = 0
    while True:
        yield from trainer.loader.epoch(epoch)
        epoch += 1


def lightly_step(trainer: Trainer, workers: int, bf16: bool) -> Step:
    """lightly's SimCLR on the same backbone: its transform, head and loss, a plain loop."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    from selfsup.nn import create_backbone

    config = trainer.config
    torch.manual_seed(config.seed)
    backbone = create_backbone(config.backbone, image_size=trainer.image_size, **config.backbone_args)
    head = SimCLRProjectionHead(backbone.feature_dim, 2048, 128)  # selfsup's SimCLR head shape
    model = torch.nn.Sequential(backbone, head).to(trainer.device)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    criterion = NTXentLoss(temperature=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06 * config.batch_size / 256, momentum=0.9, weight_decay=5e-4)
    # lightly's CIFAR-10 benchmark transform: colour jitter strength 0.5, no blur.
    transform = SimCLRTransform(input_size=trainer.image_size, cj_strength=0.5, gaussian_blur=0.0)
    batches = endless(loader_of(PILDataset(trainer.train_set.images.cpu(), transform), config.batch_size, workers))

    def step() -> None:
        x0, x1 = (v.to(trainer.device) for v in next(batches))
        if bf16:
            x0, x1 = (v.contiguous(memory_format=torch.channels_last) for v in (x0, x1))
        with torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = criterion(model(x0), model(x1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def rate(step: Step, steps: int, batch: int, device: torch.device) -> float:
    start = timed(device)
    for _ in range(steps):
        step()
    return steps * batch / (timed(device) - start)


def interleaved(pipelines: dict[str, Step], steps: int, warmup: int, rounds: int, batch: int, device: torch.device) -> dict[str, float]:
    """Median images/s of each pipeline over ``rounds`` rounds, every pipeline once per round."""
    for step in pipelines.values():
        for _ in range(warmup):
            step()
    samples: dict[str, list[float]] = {name: [] for name in pipelines}
    for r in range(rounds):
        for name, step in pipelines.items():
            samples[name].append(rate(step, steps, batch, device))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:,.0f}" for n, v in samples.items()), flush=True)
    return {name: statistics.median(values) for name, values in samples.items()}


def make_trainer(args: argparse.Namespace, **fields: object) -> Trainer:
    config = TrainConfig(
        method="simclr", backbone=args.backbone, data="cifar10", data_dir=args.data_dir, train_subset=args.train_subset,
        batch_size=args.batch_size, epochs=1000, eval_every=None, progress=False, device=args.device,
        run_dir="/tmp/selfsup-bench", name=f"throughput-{os.getpid()}-{time.monotonic_ns()}", **fields,
    )
    return Trainer(config)


def precision_grid(args: argparse.Namespace) -> dict[tuple[str, bool], float]:
    """The ceiling step in each precision x layout, interleaved."""
    steps = {}
    for precision in ("fp32", "bf16"):
        for layout in (False, True):
            trainer = make_trainer(args, precision=precision, channels_last=layout)
            fixed = trainer.make_views(next(iter(trainer.loader.epoch(1))).images)
            steps[(precision, layout)] = (lambda t=trainer, v=fixed: t.step_on_views(v, None))
    named = {f"{p} {'channels_last' if c else 'contiguous'}": s for (p, c), s in steps.items()}
    out = interleaved(named, args.steps, args.warmup, args.rounds, args.batch_size, make_device(args))
    return {key: out[f"{key[0]} {'channels_last' if key[1] else 'contiguous'}"] for key in steps}


def make_device(args: argparse.Namespace) -> torch.device:
    from selfsup.engine.hardware import pick_device

    return pick_device(args.device)


def compiled(args: argparse.Namespace) -> tuple[float, float, float]:
    """(compile seconds, eager images/s, compiled images/s) of the ceiling step at the defaults."""
    eager = make_trainer(args)
    fixed = eager.make_views(next(iter(eager.loader.epoch(1))).images)
    compiled_trainer = make_trainer(args, compile=True)
    start = time.perf_counter()
    compiled_trainer.step_on_views(fixed, None)  # the first call compiles forward and backward
    compiled_trainer.step_on_views(fixed, None)
    compile_s = time.perf_counter() - start
    out = interleaved(
        {"eager": lambda: eager.step_on_views(fixed, None), "compiled": lambda: compiled_trainer.step_on_views(fixed, None)},
        args.steps, args.warmup, args.rounds, args.batch_size, eager.device,
    )
    return compile_s, out["eager"], out["compiled"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per pipeline per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--no-lightly", action="store_true")
    parser.add_argument("--lightly-bf16", action="store_true", help="also lightly's loop with bf16 autocast + channels_last added by hand")
    parser.add_argument("--precision-grid", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    threads = configure_cpu_threads()

    trainer = make_trainer(args)
    device, batch = trainer.device, args.batch_size
    pipelines = selfsup_steps(trainer, args.workers)
    if not args.no_lightly and importlib.util.find_spec("lightly") is None:
        print("lightly is not installed: its rows are left out (pip install --no-deps lightly==1.6.0 lightning_utilities aenum)")
        args.no_lightly = True
    if not args.no_lightly:
        pipelines["lightly"] = lightly_step(trainer, args.workers, bf16=False)
        if args.lightly_bf16:
            pipelines["lightly_bf16"] = lightly_step(trainer, args.workers, bf16=True)
    results = interleaved(pipelines, args.steps, args.warmup, args.rounds, batch, device)
    for kind, value in results.items():
        print(f"{kind:>12}: {value:,.0f} images/s", flush=True)
    ratio_ceiling = results["selfsup"] / results["ceiling"]
    print(f"selfsup / ceiling = {ratio_ceiling:.2f}; selfsup / dataloader = {results['selfsup'] / results['dataloader']:.2f}"
          + (f"; selfsup / lightly = {results['selfsup'] / results['lightly']:.2f}" if "lightly" in results else ""))
    grid = precision_grid(args) if args.precision_grid else None
    if grid:
        base = grid[("fp32", False)]
        for (precision, layout), value in grid.items():
            print(f"ceiling {precision} {'channels_last' if layout else 'contiguous'}: {value:,.0f} images/s ({value / base:.2f}x)")
    comp = compiled(args) if args.compile else None
    if comp:
        print(f"torch.compile: {comp[0]:.0f} s to compile; eager {comp[1]:,.0f}, compiled {comp[2]:,.0f} images/s ({comp[2] / comp[1]:.2f}x)")
    if args.write:
        write(args, trainer, results, grid, comp, threads)


def write(args: argparse.Namespace, trainer: Trainer, results: dict[str, float], grid: dict | None, comp: tuple | None, threads: int) -> None:
    device = trainer.device
    rows = [
        ("ceiling: selfsup's step on views already on the device", results["ceiling"]),
        ("**selfsup: on-device uint8 data + batched augmentation + step**", results["selfsup"]),
        (f"torchvision.transforms.v2 per sample, DataLoader with {args.workers} workers, + selfsup's step", results["dataloader"]),
    ]
    if "lightly" in results:
        rows.append((f"lightly 1.6.0: SimCLRTransform, DataLoader with {args.workers} workers, its head and NTXentLoss, float32", results["lightly"]))
    if "lightly_bf16" in results:
        rows.append(("lightly 1.6.0, the same loop with bf16 autocast + channels_last added by hand", results["lightly_bf16"]))
    table = "\n".join(f"| {name} | {value:,.0f} | {value / results['selfsup']:.2f}x |" for name, value in rows)
    flags = " ".join(f for f, on in (("--precision-grid", grid), ("--compile", comp), ("--lightly-bf16", "lightly_bf16" in results)) if on)
    text = f"""
### Training throughput: SimCLR, {args.backbone}, batch {args.batch_size}, {device.type.upper()}

`python benchmarks/throughput.py --backbone {args.backbone} --batch-size {args.batch_size} --steps {args.steps} --rounds {args.rounds} {flags} --write`
on {hardware(device)}, {threads} threads, {time.strftime('%Y-%m-%d')}; CIFAR-10 ({args.train_subset:,} training images); selfsup at
its defaults there ({trainer.compute.reason}); source images/s (two views each), the median of {args.rounds} interleaved rounds of {args.steps} steps.

| pipeline | images/s | vs. selfsup |
|---|---:|---:|
{table}

selfsup reaches **{results['selfsup'] / results['ceiling']:.2f} of its ceiling**""" + (
        f" and **{results['selfsup'] / results['lightly']:.1f}x lightly's images/s**." if "lightly" in results else "."
    )
    if grid:
        base = grid[("fp32", False)]
        text += "\n\nThe ceiling step by precision and memory layout (same run):\n\n| precision | contiguous (NCHW) | channels_last |\n|---|---:|---:|\n"
        for precision, label in (("fp32", "float32"), ("bf16", "bf16 autocast")):
            text += f"| {label} | {grid[(precision, False)]:,.0f} ({grid[(precision, False)] / base:.2f}x) | {grid[(precision, True)]:,.0f} ({grid[(precision, True)] / base:.2f}x) |\n"
    if comp:
        text += (f"\n`torch.compile` of the step at the defaults: {comp[0]:.0f} s to compile (first two steps), then "
                 f"{comp[2]:,.0f} images/s against {comp[1]:,.0f} eager ({comp[2] / comp[1]:.2f}x).\n")
    update_section(f"throughput-{device.type}-{args.backbone}-{args.batch_size}", text)


if __name__ == "__main__":
    main()
