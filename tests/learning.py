"""The harness the slow tests use to show a method learns on real CIFAR-10.

Pretrain with the tiny backbone on a fixed subset of CIFAR-10 training images on the CPU, then
compare the weighted kNN (k=200, T=0.1) on a fixed subset of test images with the same probe on
the random-init backbone of the same seed (``knn_random_top1``). Each method's test states the
margin it asserts and why (measured gains and their spread over seeds).
"""

from __future__ import annotations

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
