"""Continued pretraining on a small folder of photos, against training from scratch and against the
initial backbone without training; BENCHMARKS.md's "Your own photos" section.

    python benchmarks/continued_pretraining.py [--seeds 0 1] [--steps 120] [--no-write]

1. The photos: 500 CIFAR-10 *test* images (50 per class), upscaled to 64 px and written as JPEG
   files (quality 90) in one folder per class: a labelled folder as a user has one. Every run holds
   out the same 40% of each class (split seed 0): 300 images to train on and search, 200 to score.
2. The initial backbone: the tiny convnet pretrained by selfsup (SimCLR, 6 epochs of batch 256) on
   5,000 CIFAR-10 *training* images: other images than the photos, as an existing backbone would be.
3. The arms, all SimCLR with the same settings, the same number of steps (so the same compute;
   the machine is shared, so wall-clock time would measure the other users too) and the same
   held-out kNN (T = 0.1, k = min(200, bank images per class) = 30):
   - the random-init backbone, untrained;
   - from scratch: STEPS steps on the photos from random weights;
   - the initial backbone, untrained on the photos (``--init`` run's baseline);
   - continued pretraining: STEPS steps on the photos from the initial backbone (``--init``).
   Training runs at 32 px (``--image-size 32``: the photos are decoded from 64 px), the initial
   backbone's resolution, to keep the script to a few CPU minutes, in float32 with NCHW tensors
   (``precision: fp32``, ``channels_last: false``: the settings BENCHMARKS.md's figures were
   measured with; ``auto`` would use bf16 on CPUs that compute it natively).

Each arm's result is a line of benchmarks/results/continued_pretraining.jsonl; with the default the
table between the markers of BENCHMARKS.md is rewritten.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA_DIR, hardware, update_section  # noqa: E402
from learning import commit  # noqa: E402

from selfsup.engine import TrainConfig, train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "continued_pretraining.jsonl"
PER_CLASS, SIDE, VAL_FRACTION = 50, 64, 0.4
BATCH, IMAGE_SIZE = 64, 32


def write_photos(root: Path, data_dir: Path) -> Path:
    """PER_CLASS CIFAR-10 test images of each class, upscaled to SIDE px, as JPEG files."""
    import io

    from PIL import Image

    with np.load(data_dir / "cifar10.npz") as archive:
        names, labels = [str(c) for c in archive["classes"]], archive["test_labels"]
        blob, offsets = archive["test_jpeg"], archive["test_offsets"]
    for c, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in np.nonzero(labels == c)[0][:PER_CLASS]:
            image = Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB")
            image.resize((SIDE, SIDE), Image.Resampling.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def base_run(tmp: Path, data_dir: Path) -> dict:
    """The initial backbone: SimCLR on 5,000 CIFAR-10 training images (the slow test's setting)."""
    return train(TrainConfig(
        method="simclr", backbone="tiny", data="cifar10", data_dir=str(data_dir), train_subset=5000, test_subset=2000,
        epochs=6, batch_size=256, eval_every=0, seed=0, run_dir=str(tmp), name="base", progress=False, device="cpu",
        precision="fp32", channels_last=False,
    ))


def photo_run(tmp: Path, photos: Path, name: str, steps: int, seed: int, init: str | None) -> dict:
    epochs = math.ceil(steps / (int(PER_CLASS * 10 * (1 - VAL_FRACTION)) // BATCH))
    return train(TrainConfig(
        method="simclr", backbone="tiny", data=str(photos), image_size=IMAGE_SIZE, batch_size=BATCH, epochs=epochs,
        max_steps=steps, val_fraction=VAL_FRACTION, eval_every=0, seed=seed, init=init, run_dir=str(tmp), name=name,
        progress=False, device="cpu", precision="fp32", channels_last=False,
    ))


def standard_error(accuracy: float, count: int) -> float:
    return math.sqrt(accuracy * (1 - accuracy) / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    start = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="continued-") as name:
        tmp = Path(name)
        photos = write_photos(tmp / "photos", data_dir)
        base = base_run(tmp / "runs", data_dir)
        print(f"initial backbone: CIFAR-10 test kNN {base['knn_top1']:.4f} vs random-init {base['knn_random_top1']:.4f}",
              file=sys.stderr)
        for seed in args.seeds:
            for arm, init in (("scratch", None), ("continued", base["run_dir"])):
                summary = photo_run(tmp / "runs", photos, f"{arm}-{seed}", args.steps, seed, init)
                row = {
                    "arm": arm, "seed": seed, "steps": summary["steps"], "batch_size": BATCH, "image_size": IMAGE_SIZE,
                    "knn_k": summary["knn_k"], "knn_top1": summary["knn_top1"],
                    "baseline_top1": summary["knn_random_top1"], "baseline": "initial" if init else "random-init",
                    "bank": summary["knn_bank"], "queries": summary["knn_queries"],
                    "base_cifar10_knn": [base["knn_top1"], base["knn_random_top1"]],
                    "hardware": hardware("cpu"), "date": time.strftime("%Y-%m-%d"), "commit": commit(),
                }
                print(json.dumps(row))
                rows.append(row)
    seconds = time.time() - start
    print(f"{seconds:.0f} s", file=sys.stderr)
    if args.no_write:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    update_section("continued-pretraining", markdown(rows, args.steps))


def markdown(rows: list[dict], steps: int) -> str:
    queries = int(PER_CLASS * 10 * VAL_FRACTION)
    k = rows[0]["knn_k"]

    def cell(values: list[float]) -> str:
        mean = sum(values) / len(values)
        seeds = " / ".join(f"{100 * v:.1f}%" for v in values)
        return f"{100 * mean:.1f}% ± {100 * standard_error(mean, queries):.1f}" + (f" (seeds: {seeds})" if len(values) > 1 else "")

    by = {arm: [r for r in rows if r["arm"] == arm] for arm in ("scratch", "continued")}
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        "## Your own photos: continued pretraining (`--init`) vs from scratch, at equal steps",
        "",
        "From `benchmarks/continued_pretraining.py` on " + rows[0]["hardware"] + ", float32, "
        f"seed(s) {', '.join(map(str, seeds))}, commit {rows[0].get('commit')}. A labelled folder of 500 photos (50 per class) written from "
        f"CIFAR-10 test images at {SIDE} px (JPEG); each run holds out the same 40% of each class (split seed 0): "
        f"300 images to train on and search, {queries} to score, weighted kNN with k = min(200, bank images per "
        f"class) = {k}, T = 0.1. The initial backbone is the tiny convnet pretrained by selfsup (SimCLR, 6 epochs "
        "of batch 256) on 5,000 CIFAR-10 training images, other images than the photos; its kNN on 2,000 CIFAR-10 "
        f"test images is {100 * rows[0]['base_cifar10_knn'][0]:.1f}% (random-init "
        f"{100 * rows[0]['base_cifar10_knn'][1]:.1f}%). Both trained arms run SimCLR for {steps} steps of batch "
        f"{BATCH} at {IMAGE_SIZE} px with the same settings and seed: equal steps, so equal compute (the machine "
        "is shared, so wall-clock time would also measure the other users). ± is the binomial standard error of "
        f"{queries} queries.",
        "",
        "| backbone | steps on the photos | held-out kNN top-1 |",
        "|---|---:|---:|",
        f"| random init | 0 | {cell([r['baseline_top1'] for r in by['scratch']])} |",
        f"| from scratch | {steps} | {cell([r['knn_top1'] for r in by['scratch']])} |",
        f"| initial backbone (pretrained on other CIFAR-10 images) | 0 | {cell([r['baseline_top1'] for r in by['continued']])} |",
        f"| continued pretraining from it (`--init`) | {steps} | {cell([r['knn_top1'] for r in by['continued']])} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
