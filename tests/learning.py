"""The harness the slow tests use to show a method learns on real CIFAR-10.

Pretrain with the tiny backbone on a fixed subset of CIFAR-10 training images on the CPU (at the
engine's defaults there: bf16 autocast and channels_last where the CPU computes bf16 natively),
then compare the weighted kNN (T 0.1; k = min(200, training images per class), the engine's rule)
on a fixed subset of test images with the same probe on the random-init backbone of the same seed
(``knn_random_top1``). ``SETTINGS`` holds each method's test setting; ``benchmarks/learning.py
METHOD --test-settings`` runs exactly it, so every margin a test asserts comes from measured rows
of ``benchmarks/results/learning.jsonl``. Each test averages the gain over ``SEEDS`` and states
its margin against the measured seed-to-seed spread.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path
from typing import Any

import torch

from selfsup.engine import TrainConfig, train
from selfsup.losses import normalized_output_std

from .conftest import shared_data_dir

# The tiny ViT of the CPU learning tests (MAE): ViT-Tiny's design (timm's vit_tiny_patch16_224) cut
# to 4 blocks of 96 channels with 3 heads, patch 4 on 32 px images (64 patches); 0.46 M parameters.
TINY_VIT = {"depth": 4, "embed_dim": 96, "num_heads": 3}


def learning_run(
    method: str,
    run_dir: Path,
    epochs: int = 6,
    train_subset: int = 5000,
    test_subset: int = 2000,
    batch_size: int = 256,
    seed: int = 0,
    method_args: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train and return the run summary (``knn_top1`` and ``knn_random_top1`` among others)."""
    config = TrainConfig(
        method=method,
        method_args=method_args or {},
        backbone=overrides.pop("backbone", "tiny"),
        data="cifar10",
        data_dir=str(shared_data_dir()),
        train_subset=train_subset,
        test_subset=test_subset,
        epochs=epochs,
        batch_size=batch_size,
        eval_every=overrides.pop("eval_every", 0),
        seed=seed,
        run_dir=str(run_dir),
        name=f"{method}-seed{seed}",
        progress=False,
        device="cpu",
        **overrides,
    )
    return train(config)


def output_std(summary: dict[str, Any], images: int = 1000) -> tuple[float, int]:
    """The collapse monitor of SimSiam's Figure 2 on a trained run: the std over ``images`` CIFAR-10
    test images (eval mode) of each channel of the L2-normalized embedding the method's loss is
    built on, averaged over channels, and the embedding's dimension d. Spread outputs give about
    1/sqrt(d), a collapsed one (every image the same direction) 0.

    The embedding is the projector's output for BYOL, SimSiam, SwAV, Barlow Twins and VICReg (SwAV scores it against the
    prototypes), and DINO's teacher head bottleneck (the L2-normalized vector its last layer maps
    to K outputs; the teacher is what DINO evaluates)."""
    from selfsup.data import load_dataset
    from selfsup.engine import load_method

    method, config, _ = load_method(summary["checkpoint"])
    test = load_dataset("cifar10", "test", data_dir=config.data_dir, limit=images, seed=1)
    with torch.no_grad():
        features = method.representation(method.eval_transform(test.images))
        if hasattr(method, "teacher_head"):
            z = method.teacher_head.embed(features)
        else:
            z = method.projector(features)
    return float(normalized_output_std(z)), z.shape[1]


# Each method's slow-test setting: what the test trains, beside the harness defaults above (6
# epochs of 5,000 images at batch 256). Values the method's defaults no longer have are pinned
# here, with the reason in the test's docstring.
SETTINGS: dict[str, dict[str, Any]] = {
    # a 2,048-wide projector without BN on its output (the method now defaults to the official head)
    "simclr": dict(epochs=6, method_args={"proj_hidden_dim": 2048, "proj_last_bn": False}),
    # m = 0.99 for a 114-step run (0.999 barely moves the key encoder); v1 with a cosine schedule
    # and torchvision's jitter-before-grayscale order, as measured
    "moco_v1": dict(epochs=6, lr_schedule="cosine", method_args={"ema_momentum": 0.99}, augment={"grayscale_first": False}),
    "moco_v2": dict(epochs=6, method_args={"ema_momentum": 0.99}),
    "moco_v3": dict(epochs=6),
    # BYOL's target needs steps: 480 of batch 64; LARS at solo-learn's CIFAR lr 1.0; heads of 1,024
    "byol": dict(
        epochs=30, train_subset=1000, batch_size=64, lr=1.0, weight_decay=1.5e-6,
        method_args={"proj_hidden_dim": 1024, "pred_hidden_dim": 1024, "tau_base": 0.99},
    ),
    # every bank entry needs many updates: 60 passes over 1,000 images
    "instdisc": dict(
        epochs=60, train_subset=1000, batch_size=128, lr=0.06, weight_decay=5e-4, warmup_epochs=0,
        lr_scaling="linear", lr_schedule="cosine", method_args={"loss": "softmax", "temperature": 0.1},
        augment={"grayscale_first": False},
    ),
    "cmc": dict(
        epochs=60, train_subset=1000, batch_size=128, lr_scaling="linear", lr_schedule="cosine", warmup_epochs=6.0,
        method_args={"num_negatives": 16384}, augment={"crop_scale": [0.2, 1.0]},
    ),
    "cpc": dict(epochs=3, batch_size=64, lr=0.002, method_args={"directions": ["down"]}),
    "dino": dict(
        epochs=30, train_subset=1000, batch_size=64, optimizer="adamw", lr=5e-4, weight_decay=0.04,
        weight_decay_end=0.4, min_lr=0.0, warmup_epochs=3.0,
        method_args={"teacher_temperature": 0.07, "warmup_teacher_temperature_epochs": 30},
        augment={"num_local": 2, "global_scale": [0.4, 1.0], "local_scale": [0.05, 0.4]},
    ),
    # SimSiam needs steps, not images: 936 of batch 64; appendix D's 2-layer projector, 4:1 bottleneck
    "simsiam": dict(
        epochs=12, batch_size=64, lr=0.2,
        method_args={"proj_layers": 2, "proj_hidden_dim": 512, "proj_output_dim": 512, "pred_hidden_dim": 128},
    ),
    # Sinkhorn epsilon 0.03, the official README's remedy for a loss stuck at ln K
    "swav": dict(
        epochs=6, lr=0.15, warmup_epochs=0.6, min_lr_ratio=0.0, lars_trust="update_norm", exclude_bias_norm=True,
        augment={"num_local": 2, "global_scale": [0.14, 1.0]},
        method_args={"epsilon": 0.03, "num_prototypes": 300, "queue_length": 0},
    ),
}

# The seeds every learning test averages over (a single seed's paired gain is noise of about 1.4
# points; the mean of three has 1/sqrt(3) of it).
SEEDS = (0, 1, 2)


def learning_runs(method: str, run_dir: Path, seeds: tuple[int, ...] = SEEDS, **extra: Any) -> list[dict[str, Any]]:
    """:func:`learning_run` of ``SETTINGS[method]`` (updated by ``extra``) for each seed."""
    settings = {**copy.deepcopy(SETTINGS[method]), **extra}
    return [learning_run(method, Path(run_dir) / f"seed{seed}", seed=seed, **copy.deepcopy(settings)) for seed in seeds]


def gains(summaries: list[dict[str, Any]]) -> list[float]:
    """kNN top-1 gain over the random-init backbone of each run, in points."""
    return [100 * (s["knn_top1"] - s["knn_random_top1"]) for s in summaries]


def assert_mean_gain_above(summaries: list[dict[str, Any]], margin: float) -> None:
    """The mean gain over the runs (in points) must exceed ``margin``."""
    values = gains(summaries)
    assert statistics.mean(values) > margin, f"mean gain {statistics.mean(values):.2f} points over seeds {values} not above {margin}"
