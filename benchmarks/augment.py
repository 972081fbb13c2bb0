"""Images/s of each augmentation recipe: the batched path against torchvision per sample.

    python benchmarks/augment.py                 # all recipes, ~6 s per measurement (< 3 min)
    python benchmarks/augment.py --quick         # ~1.5 s per measurement (< 1 min), for a smoke test
    python benchmarks/augment.py --recipes simclr,byol --batch-size 512 --seconds 10 --no-write

Side by side, in one run, on the same CIFAR-10 images (../shared/data/cifar10.npz, 32 px):

* batched: ``selfsup.augment`` recipes on uint8 batches held on the device (CUDA when present,
  else the CPU with torch's default intra-op threads), as the trainer runs them;
* per sample: the same views built with ``torchvision.transforms.v2`` image by image, the usual
  way: a Dataset of PIL images (as ``torchvision.datasets.CIFAR10`` returns them; faster than
  tensors per image at 32 px) in a DataLoader with one worker per core, collated into batches
  (and copied to the GPU when there is one).

Both produce the recipe's float views of every input image. Throughput counts input images per
second (each with all its views), measured after a warm-up (worker start-up excluded). The result
goes to the "Augmentation" section of BENCHMARKS.md, one block per device kind, with the hardware.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCHMARKS, DEFAULT_DATA_DIR, hardware  # noqa: E402

from selfsup.augment import LabRecipe, PatchRecipe, Recipe, ViewSpec, create_recipe, ops  # noqa: E402
from selfsup.data import load_dataset  # noqa: E402
from selfsup.cli import without_option  # noqa: E402

RECIPES = ("simclr", "byol", "multicrop", "cmc_lab", "cpc_patches")
TARGET = {"cpu": 8.0, "cuda": 10.0}  # the targets for the ratio


# -- torchvision per-sample equivalents of the recipes -----------------------------------------


def torchvision_view(spec: ViewSpec, to_float: bool = True) -> v2.Compose:
    """The torchvision.transforms.v2 pipeline of one ViewSpec (same parameters, same order)."""
    steps: list = [
        v2.RandomResizedCrop(spec.size, scale=spec.crop_scale, ratio=spec.crop_ratio, antialias=True),
        v2.RandomHorizontalFlip(spec.flip_p),
    ]
    if spec.jitter_p > 0:
        jitter = v2.ColorJitter(spec.brightness, spec.contrast, spec.saturation, spec.hue)
        steps.append(v2.RandomApply([jitter], p=spec.jitter_p))
    if spec.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(spec.grayscale_p))
    if spec.blur_p > 0:
        kernel = ops.gaussian_kernel_size(spec.size, spec.blur_kernel_fraction)
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, spec.blur_sigma)], p=spec.blur_p))
    if spec.solarize_p > 0:  # on PIL / uint8 images the threshold is in 0..255
        steps.append(v2.RandomSolarize(spec.solarize_threshold * 255, p=spec.solarize_p))
    if to_float:
        steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        if spec.normalize:
            steps.append(v2.Normalize(list(spec.mean), list(spec.std)))
    return v2.Compose(steps)


class PerSample(torch.utils.data.Dataset):
    """CIFAR-10 images as PIL images, each turned into the recipe's views by torchvision."""

    def __init__(self, images: np.ndarray, recipe: Recipe, length: int):
        self.images = images
        self.recipe = recipe
        self.length = length
        if isinstance(recipe, PatchRecipe):
            whole, per_patch = recipe.views
            self.whole = torchvision_view(whole, to_float=False)
            self.patch = torchvision_view(per_patch)
        else:
            to_float = not isinstance(recipe, LabRecipe)  # Lab is computed from the uint8 crop
            self.views = [torchvision_view(spec, to_float) for spec in recipe.views for _ in range(spec.count)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        image = Image.fromarray(self.images[index % len(self.images)])
        if isinstance(self.recipe, LabRecipe):
            return self._lab(image)
        if isinstance(self.recipe, PatchRecipe):
            return self._patches(image)
        return [view(image) for view in self.views]

    def _lab(self, image: Image.Image) -> list[torch.Tensor]:
        # CMC's official loader: crop and flip the PIL image, skimage's rgb2lab, normalize.
        from skimage.color import rgb2lab

        from selfsup.augment.recipes import _LAB_HALF_RANGE, _LAB_MEAN

        out = []
        for view in self.views:
            lab = torch.from_numpy(rgb2lab(np.asarray(view(image))).astype(np.float32))
            lab = (lab.permute(2, 0, 1) - torch.tensor(_LAB_MEAN).view(3, 1, 1)) / torch.tensor(_LAB_HALF_RANGE).view(3, 1, 1)
            out += [lab[:1], lab[1:]]
        return out

    def _patches(self, image: Image.Image) -> list[torch.Tensor]:
        # CPC as usually written: crop the image, cut the grid, then a Python loop over patches.
        recipe = self.recipe
        whole = v2.functional.pil_to_tensor(self.whole(image))
        p, s = recipe.patch_size, recipe.stride
        grid = whole.unfold(1, p, s).unfold(2, p, s).permute(1, 2, 0, 3, 4)  # (gh, gw, 3, p, p)
        patches = [v2.functional.to_pil_image(patch) for patch in grid.reshape(-1, 3, p, p)]
        out = torch.stack([self.patch(patch) for patch in patches])
        if recipe.channel_drop_p > 0:
            drop = torch.rand(len(out)) < recipe.channel_drop_p
            keep = torch.randint(0, 3, (len(out),))
            for i in torch.nonzero(drop).flatten().tolist():
                kept = out[i, keep[i]].clone()
                out[i] = torch.randn_like(out[i]) * 0.01 * kept.std()
                out[i, keep[i]] = kept
        return [out.view(grid.shape[0], grid.shape[1], 3, *out.shape[-2:])]


# -- measurements --------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) used so far by other processes (the DataLoader workers)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def batched_rate(recipe: Recipe, images: torch.Tensor, batch: int, seconds: float, device: torch.device) -> tuple[float, float]:
    """(images per second of wall time, images per CPU-second of this process)."""
    generator = torch.Generator(device=device).manual_seed(0)
    starts = list(range(0, len(images) - batch + 1, batch))
    for start in starts[:2]:  # warm-up (allocator, kernels, lazy imports)
        recipe(images[start : start + batch], generator)
    sync(device)
    done, begin, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        for start in starts:
            recipe(images[start : start + batch], generator)
            done += batch
            if time.perf_counter() - begin >= seconds:
                break
        sync(device)
        elapsed = time.perf_counter() - begin
        if elapsed >= seconds:
            return done / elapsed, done / max(time.process_time() - cpu, 1e-9)


def per_sample_rate(
    recipe: Recipe, images: np.ndarray, batch: int, seconds: float, workers: int, device: torch.device
) -> tuple[float, float]:
    """(images per second of wall time, images per CPU-second of the workers and this process)."""
    # Enough items for the measurement at a generous rate; iteration stops when time is up.
    dataset = PerSample(images, recipe, length=batch * 100_000)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers else None, persistent_workers=False,
    )
    done, begin, cpu = 0, None, 0.0
    iterator = iter(loader)
    pids = [w.pid for w in getattr(iterator, "_workers", [])]
    try:
        for views in iterator:
            views = [v.to(device, non_blocking=True) for v in views]
            if begin is None:  # the first batch pays for the workers' start-up: not counted
                sync(device)
                begin, cpu = time.perf_counter(), time.process_time() + cpu_seconds(pids)
                continue
            done += views[0].shape[0]
            if time.perf_counter() - begin >= seconds:
                break
        sync(device)
        used = time.process_time() + cpu_seconds(pids) - cpu
        return done / (time.perf_counter() - begin), done / max(used, 1e-9)
    finally:
        del iterator  # shuts the workers down


def views_per_image(recipe: Recipe) -> str:
    if isinstance(recipe, PatchRecipe):
        side = (recipe.views[0].size - recipe.patch_size) // recipe.stride + 1
        return f"{side * side} patches"
    return str(recipe.num_views)


# -- BENCHMARKS.md -------------------------------------------------------------------------------

INTRO = """## Augmentation

`benchmarks/augment.py`: images/s of each recipe (every input image with all its views, 32 px
CIFAR-10) on the batched path of `selfsup.augment`, against the same views built by
`torchvision.transforms.v2` per sample (PIL images, as `torchvision.datasets.CIFAR10` gives them)
in a DataLoader with one worker per core, measured side by side in one run. Target: batched >= 8x
the per-sample DataLoader on the CPU, >= 10x on a GPU. Rerun: `python benchmarks/augment.py`."""


def write_section(device_kind: str, markdown: str, path: Path = BENCHMARKS) -> None:
    """Keep one intro and one block per device kind inside the Augmentation section."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    intro = f"<!-- begin augment -->\n{INTRO}\n<!-- end augment -->"
    pattern = re.compile(r"<!-- begin augment -->.*?<!-- end augment -->", re.S)
    text = pattern.sub(lambda _: intro, text) if pattern.search(text) else text.rstrip() + "\n\n" + intro + "\n"
    name = f"augment-{device_kind}"
    block = f"<!-- begin {name} -->\n{markdown.strip()}\n<!-- end {name} -->"
    own = re.compile(re.escape(f"<!-- begin {name} -->") + r".*?" + re.escape(f"<!-- end {name} -->"), re.S)
    if own.search(text):
        text = own.sub(lambda _: block, text)
    else:  # after the last augment block, so the section stays together
        last = max(m.end() for m in re.finditer(r"<!-- end augment(-\w+)? -->", text))
        text = text[:last] + "\n\n" + block + text[last:]
    path.write_text(text)


def command_line() -> str:
    """How this run was started, without the --note text."""
    return shlex.join(["python", "benchmarks/augment.py", *without_option(sys.argv[1:], "--note")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe names")
    parser.add_argument("--batch-size", type=int, default=256, help="batch of the batched path")
    parser.add_argument("--loader-batch", type=int, default=64,
                        help="DataLoader batch of the per-sample path (its speed hardly depends on it; smaller "
                             "batches time the slow recipes more finely)")
    parser.add_argument("--images", type=int, default=8192, help="CIFAR-10 training images cycled through")
    parser.add_argument("--seconds", type=float, default=6.0, help="duration of each measurement")
    parser.add_argument("--quick", action="store_true", help="1.5 s per measurement and 2,048 images (a smoke test)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers (default: all cores)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--note", default="", help="a remark printed under the table (e.g. the machine was busy)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.images = min(args.seconds, 1.5), min(args.images, 2048)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]

    data = load_dataset("cifar10", "train", data_dir=args.data_dir, limit=args.images, seed=0)
    host = data.images.numpy()
    on_device = data.images.to(device)
    threads = torch.get_num_threads()
    print(f"{hardware(device)}; batched on {device} ({threads} threads, batch {args.batch_size}), per-sample "
          f"DataLoader with {args.workers} workers (batch {args.loader_batch}); {args.seconds:g} s per measurement", flush=True)
    rows = []
    for name in names:
        recipe = create_recipe(name, 32)
        fast, fast_cpu = batched_rate(recipe, on_device, args.batch_size, args.seconds, device)
        slow, slow_cpu = per_sample_rate(recipe, host, args.loader_batch, args.seconds, args.workers, device)
        rows.append((name, views_per_image(recipe), fast, slow, fast_cpu, slow_cpu))
        print(f"{name:12s} batched {fast:9,.0f} img/s  per-sample {slow:7,.0f} img/s  ratio {fast / slow:5.1f}x   "
              f"| per CPU-second {fast_cpu:9,.0f} vs {slow_cpu:7,.0f}: {fast_cpu / slow_cpu:5.1f}x", flush=True)

    kind = device.type
    target = TARGET.get(kind, 8.0)
    table = [
        f"### {'GPU' if kind == 'cuda' else 'CPU'}: {hardware(device)}",
        "",
        f"Batched on {device} ({threads} intra-op threads, batches of {args.batch_size}) vs per-sample DataLoader "
        f"with {args.workers} workers (batches of {args.loader_batch}); {args.seconds:g} s per measurement, "
        f"{time.strftime('%Y-%m-%d')}, "
        f"`{command_line()}`.",
        "",
        "| recipe | views per image | batched (img/s) | per-sample DataLoader (img/s) | ratio "
        "| batched (img per CPU-s) | per-sample (img per CPU-s) | ratio per CPU-s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    on_cpu = device.type == "cpu"  # a GPU's work does not show in CPU time
    for name, views, fast, slow, fast_cpu, slow_cpu in rows:
        mark = "" if fast / slow >= target else f" (below the {target:g}x target)"
        per_cpu = f"{fast_cpu:,.0f} | {slow_cpu:,.0f} | {fast_cpu / slow_cpu:.1f}x" if on_cpu else f"n/a | {slow_cpu:,.0f} | n/a"
        table.append(f"| {name} | {views} | {fast:,.0f} | {slow:,.0f} | {fast / slow:.1f}x{mark} | {per_cpu} |")
    geo = math.exp(sum(math.log(r[2] / r[3]) for r in rows) / len(rows)) if rows else float("nan")
    table += [
        "",
        "Images/s is wall-clock throughput (the target's measure); images per CPU-second divides by the CPU time "
        "the path used (all threads, workers included), which stays meaningful on a shared machine.",
        "",
        f"Geometric mean of the wall-clock ratios: {geo:.1f}x." + (f" {args.note}" if args.note else ""),
    ]
    markdown = "\n".join(table)
    print()
    print(markdown)
    if not args.no_write:
        write_section(kind, markdown)
        print(f"\nupdated {BENCHMARKS}")


if __name__ == "__main__":
    main()
