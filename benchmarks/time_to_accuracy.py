"""Time to accuracy on this machine: selfsup against lightly, SimCLR, the same wall-clock budget.

Both train the same backbone (selfsup's tiny convnet unless ``--backbone``) on the same fixed
subset of CIFAR-10 training images for the same wall-clock budget, then get the same probe: the
weighted kNN (k 200, T 0.1, float32 features, selfsup's ``knn_accuracy``) of the same test images
against the same training images, beside the random-init backbone of the same seed.

- selfsup: ``selfsup.engine.train`` at its defaults for SimCLR on this device (on a CPU with
  native bf16: bf16 autocast + channels_last; batched augmentation on the device).
- lightly: lightly 1.6.0 as its CIFAR-10 benchmark script runs SimCLR (``SimCLRTransform`` with
  colour-jitter strength 0.5 and no blur, PIL per sample in a DataLoader with one worker per core,
  ``SimCLRProjectionHead``, ``NTXentLoss(temperature=0.5)``, SGD lr 0.06 per 256 images, momentum
  0.9, weight decay 5e-4, cosine), in a plain float32 loop (its default precision).

The budget is met by step count: each pipeline is first timed for ``--calibrate`` seconds, the steps
that fit into the budget are computed from that rate, and the run gets that many steps with its
learning-rate schedule spread over them. The wall time each run actually took is reported.

lightly is a benchmark-only dependency:  pip install --no-deps lightly==1.6.0 lightning_utilities aenum

Usage: python benchmarks/time_to_accuracy.py [--minutes 5] [--train-subset 5000] [--write]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import selfsup  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch loads)
import torch  # noqa: E402
from _common import DEFAULT_DATA_DIR, hardware, update_section  # noqa: E402
from throughput import PILDataset, endless, endless_batches, loader_of  # noqa: E402

from selfsup.data import load_dataset  # noqa: E402
from selfsup.engine import TrainConfig, train  # noqa: E402
from selfsup.engine.hardware import configure_cpu_threads  # noqa: E402
from selfsup.eval import extract_features, knn_accuracy  # noqa: E402
from selfsup.nn import create_backbone  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "time_to_accuracy.jsonl"


def knn(backbone: torch.nn.Module, train_set, test_set) -> float:  # noqa: ANN001
    """Weighted kNN top-1 of float32 features, the same probe for every row."""
    from selfsup.augment import ops
    from selfsup.augment.recipes import IMAGENET_MEAN, IMAGENET_STD

    backbone = backbone.eval().to(memory_format=torch.contiguous_format)

    def transform(images: torch.Tensor) -> torch.Tensor:
        return ops.normalize(ops.to_float(images), IMAGENET_MEAN, IMAGENET_STD)

    device = torch.device("cpu")
    bank = extract_features(backbone, transform, train_set, device, crop_size=train_set.image_size)
    queries = extract_features(backbone, transform, test_set, device, crop_size=test_set.image_size)
    return knn_accuracy(bank, train_set.labels, queries, test_set.labels, train_set.num_classes, 200, 0.1)["top1"]


def selfsup_config(args: argparse.Namespace, tmp: str, steps_per_epoch: int, epochs: int, max_steps: int | None) -> TrainConfig:
    return TrainConfig(
        method="simclr", backbone=args.backbone, data="cifar10", data_dir=args.data_dir, train_subset=args.train_subset,
        batch_size=args.batch_size, epochs=epochs, max_steps=max_steps, eval_every=0, progress=False, device="cpu",
        seed=args.seed, run_dir=tmp, name=f"tta-{time.monotonic_ns()}", checkpoint_every=0,
    )


def run_selfsup(args: argparse.Namespace, train_set, test_set) -> dict:  # noqa: ANN001
    from selfsup.engine import Trainer, load_method

    steps_per_epoch = args.train_subset // args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        probe = Trainer(selfsup_config(args, tmp, steps_per_epoch, 1000, None))
        batches = endless_batches(probe)
        rate = steps_per_second(lambda: probe.train_step(next(batches).images, None), args.calibrate)
        probe.close()
        steps = max(1, int(rate * args.minutes * 60))
        epochs = math.ceil(steps / steps_per_epoch)
        start = time.perf_counter()
        summary = train(selfsup_config(args, tmp, steps_per_epoch, epochs, steps))
        wall = time.perf_counter() - start
        method, _, _ = load_method(summary["checkpoint"])
        accuracy = knn(method.backbone, train_set, test_set)
    return {"pipeline": "selfsup", "steps": summary["steps"], "wall_s": round(wall, 1), "train_s": summary["wall_time_s"],
            "images_per_s": summary["images_per_s"], "knn_top1": accuracy, "precision": summary.get("precision")}


def steps_per_second(step, seconds: float, warmup: int = 2) -> float:  # noqa: ANN001
    """Steps per second of ``step`` after ``warmup`` untimed steps (first-call set-up excluded)."""
    for _ in range(warmup):
        step()
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step()
        done += 1
    return done / (time.perf_counter() - start)


def run_lightly(args: argparse.Namespace, train_set, test_set) -> dict:  # noqa: ANN001
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    torch.manual_seed(args.seed)
    backbone = create_backbone(args.backbone, image_size=train_set.image_size)
    model = torch.nn.Sequential(backbone, SimCLRProjectionHead(backbone.feature_dim, 2048, 128))
    criterion = NTXentLoss(temperature=0.5)
    lr = 0.06 * args.batch_size / 256
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    transform = SimCLRTransform(input_size=train_set.image_size, cj_strength=0.5, gaussian_blur=0.0)
    batches = endless(loader_of(PILDataset(train_set.images, transform), args.batch_size, args.workers))

    def step(index: int, total: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * index / total))
        x0, x1 = next(batches)
        loss = criterion(model(x0), model(x1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    rate = steps_per_second(lambda: step(0, 1), args.calibrate)  # then the model restarts from its seed
    torch.manual_seed(args.seed)
    backbone = create_backbone(args.backbone, image_size=train_set.image_size)
    model = torch.nn.Sequential(backbone, SimCLRProjectionHead(backbone.feature_dim, 2048, 128)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = max(1, int(rate * args.minutes * 60))
    start = time.perf_counter()
    for index in range(steps):
        step(index, steps)
    wall = time.perf_counter() - start
    accuracy = knn(backbone, train_set, test_set)
    return {"pipeline": "lightly", "steps": steps, "wall_s": round(wall, 1), "train_s": round(wall, 1),
            "images_per_s": round(steps * args.batch_size / wall, 1), "knn_top1": accuracy, "precision": "fp32"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--calibrate", type=float, default=20.0, help="seconds of timing before each run")
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-subset", type=int, default=5000)
    parser.add_argument("--test-subset", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md and benchmarks/results")
    args = parser.parse_args()
    threads = configure_cpu_threads()
    train_set = load_dataset("cifar10", "train", data_dir=args.data_dir, limit=args.train_subset, seed=args.seed)
    test_set = load_dataset("cifar10", "test", data_dir=args.data_dir, limit=args.test_subset, seed=args.seed)
    torch.manual_seed(args.seed)
    random_init = knn(create_backbone(args.backbone, image_size=train_set.image_size), train_set, test_set)
    rows = [run_selfsup(args, train_set, test_set), run_lightly(args, train_set, test_set)]
    for row in rows:
        print(json.dumps(row), flush=True)
    print(f"random init: {100 * random_init:.2f}%")
    if args.write:
        write(args, rows, random_init, threads)


def write(args: argparse.Namespace, rows: list[dict], random_init: float, threads: int) -> None:
    stamp = {"date": time.strftime("%Y-%m-%d"), "hardware": hardware("cpu"), "minutes": args.minutes, "seed": args.seed,
             "backbone": args.backbone, "batch_size": args.batch_size, "train_subset": args.train_subset,
             "test_subset": args.test_subset, "knn_random_top1": random_init}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        for row in rows:
            handle.write(json.dumps({**stamp, **row}) + "\n")
    table = "\n".join(
        f"| {r['pipeline']} | {r['precision']} | {r['steps']:,} | {r['wall_s']:.0f} s | {r['images_per_s']:,.0f} | "
        f"{100 * r['knn_top1']:.2f}% | {100 * (r['knn_top1'] - random_init):+.2f} |" for r in rows
    )
    update_section("time-to-accuracy-cpu", f"""
### Time to accuracy: selfsup vs lightly, SimCLR, {args.minutes:g} minutes each, CPU

`python benchmarks/time_to_accuracy.py --minutes {args.minutes:g} --write` on {hardware('cpu')}, {threads} threads,
{stamp['date']}: the {args.backbone} backbone, batch {args.batch_size}, {args.train_subset:,} CIFAR-10 training images, seed {args.seed}; then
the same weighted kNN (k 200, T 0.1, float32 features) of {args.test_subset:,} test images against the training images.
Random-init backbone: {100 * random_init:.2f}%. Each run's steps were set from a {args.calibrate:g} s timing so as to fill the budget.

| pipeline | precision | steps | wall time | images/s | kNN top-1 | vs random init |
|---|---|---:|---:|---:|---:|---:|
{table}
""")


if __name__ == "__main__":
    main()
