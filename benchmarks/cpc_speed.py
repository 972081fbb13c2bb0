"""Training speed and peak memory of CPC beside SimCLR: same backbone, same batch, same device.

CPC encodes every patch of its grid (on 32 px CIFAR: 7x7 patches of 8 px, 3,136 pixels per
image against SimCLR's two 32 px views, 2,048 pixels) and scores each of its B*H*W*K predictions
against all B*H*W patch features of the batch, so its loss grows with the square of the batch.

Each method runs in its own child process, so that peak memory is its own:

- images/s, step:   the engine's full step (index the on-device uint8 data, augment, forward,
                    backward, optimizer), source images per second;
- images/s, model:  the same step on views prepared once (no augmentation);
- peak memory:      on CUDA ``torch.cuda.max_memory_allocated`` over the timed steps; on the CPU the
                    peak resident set size of the process sampled every 5 ms by a thread during the
                    timed steps (and its rise over the RSS before the first step), an approximation
                    of what the steps need on top of the loaded data and libraries.

Usage:  python benchmarks/cpc_speed.py [--backbone tiny] [--batch-size 128] [--steps 5] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA_DIR, hardware, timed, update_section  # noqa: E402

METHODS = ("simclr", "cpc")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssSampler(threading.Thread):
    """The highest resident set size seen while running (CPU peak memory without tracemalloc)."""

    def __init__(self, every: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.every, self.peak, self._stop = every, _rss_mib(), threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mib())
            time.sleep(self.every)

    def stop(self) -> float:
        self._stop.set()
        self.join()
        return max(self.peak, _rss_mib())


def child(args: argparse.Namespace) -> dict:
    """Measure one method in this process; returns the figures as a dict."""
    from selfsup.engine import TrainConfig, Trainer

    config = TrainConfig(
        method=args.child, backbone=args.backbone, data="cifar10", data_dir=args.data_dir,
        train_subset=args.train_subset, batch_size=args.batch_size, epochs=1000, eval_every=None,
        progress=False, device=args.device, compile=args.compile, run_dir=tempfile.mkdtemp(), name="speed",
    )
    trainer = Trainer(config)
    device = trainer.device
    batches = iter(trainer.loader.epoch(0))

    def full_step() -> None:
        nonlocal batches
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(trainer.loader.epoch(0))
            batch = next(batches)
        trainer.train_step(batch.images, batch.index)

    fixed = trainer.make_views(next(iter(trainer.loader.epoch(1))).images)
    results: dict = {"method": args.child, "backbone_args": trainer.config.backbone_args,
                     "views": [tuple(v.shape) for v in fixed]}
    for _ in range(args.warmup):
        full_step()
    rss_before = _rss_mib()
    sampler = RssSampler()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        sampler.start()
    start = timed(device)
    for _ in range(args.steps):
        full_step()
    results["step_images_per_s"] = args.steps * args.batch_size / (timed(device) - start)
    start = timed(device)
    for _ in range(args.steps):
        trainer.step_on_views(fixed, None)
    results["model_images_per_s"] = args.steps * args.batch_size / (timed(device) - start)
    if device.type == "cuda":
        results["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        results["rise_mib"] = None
    else:
        results["peak_mib"] = sampler.stop()
        results["rise_mib"] = results["peak_mib"] - rss_before
    results["device"] = str(device)
    results["hardware"] = hardware(device)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--train-subset", type=int, default=2048)
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    rows = []
    for method in METHODS:
        command = [sys.executable, __file__, "--child", method] + [
            a for a in sys.argv[1:] if a != "--write"
        ]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{method:>7}: {r['step_images_per_s']:,.1f} images/s (step), {r['model_images_per_s']:,.1f} (model only), "
              f"peak {r['peak_mib']:,.0f} MiB, views {r['views']}", flush=True)
    simclr, cpc = rows
    ratio = simclr["step_images_per_s"] / cpc["step_images_per_s"]
    print(f"CPC is {ratio:.1f}x slower per image than SimCLR")
    if args.write:
        device = torch.device(simclr["device"])
        memory = "peak `torch.cuda.max_memory_allocated`" if device.type == "cuda" else "peak RSS of the process during the timed steps (rise over the RSS before them)"

        def mem(r: dict) -> str:
            return f"{r['peak_mib']:,.0f} MiB" + (f" (+{r['rise_mib']:,.0f})" if r["rise_mib"] is not None else "")

        update_section(f"cpc-speed-{device.type}", f"""
### CPC vs SimCLR: speed and memory, {args.backbone}, batch {args.batch_size}, {device.type.upper()}

`python benchmarks/cpc_speed.py --backbone {args.backbone} --batch-size {args.batch_size} --steps {args.steps} --write`
on {simclr['hardware']}; CIFAR-10, each method in its own process with its default recipe and
backbone options, {args.steps} timed steps after {args.warmup} warm-up steps; source images per second.

| method | views per image | images/s, full step | images/s, model only | memory: {memory} |
|---|---|---|---|---|
| SimCLR (backbone norm: BN) | 2 views of 32 px | {simclr['step_images_per_s']:,.1f} | {simclr['model_images_per_s']:,.1f} | {mem(simclr)} |
| CPC (backbone norm: {cpc['backbone_args'].get('norm', 'bn').upper()}) | {cpc['views'][0][1]}x{cpc['views'][0][2]} patches of {cpc['views'][0][-1]} px | {cpc['step_images_per_s']:,.1f} | {cpc['model_images_per_s']:,.1f} | {mem(cpc)} |

CPC runs **{ratio:.1f}x slower per image** than SimCLR here.
""")


if __name__ == "__main__":
    main()
