"""Short real runs shared by the tests of finetune, compare, report, export and embed.

Each run is trained once per test session (cached here, whichever test file asks first) on a few
CIFAR-10 images from ../shared/data, on the CPU, with a narrow tiny net so the whole set of these
tests stays fast. They prove plumbing, not learning: the learning proofs are the slow tests.
They run in float32 whatever the CPU (``precision: auto`` is bf16 on CPUs with native bf16), so
the numbers the tests measured on them hold on every machine, and the probes of these runs can
be checked against an independent float64 computation.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from selfsup.engine import TrainConfig, train

from .conftest import shared_data_dir

_RUNS: dict[str, Path] = {}


def _train(tmp_path_factory: pytest.TempPathFactory, name: str, **values: Any) -> Path:
    if name not in _RUNS:
        root = tmp_path_factory.mktemp(f"run-{name}")
        config = TrainConfig(
            method="simclr", data="cifar10", data_dir=str(shared_data_dir()), run_dir=str(root), name=name,
            progress=False, device="cpu", seed=0, precision="fp32", method_args={"proj_hidden_dim": 32, "proj_output_dim": 16},
            **values,
        )
        train(config)
        _RUNS[name] = root / name
    return _RUNS[name]


def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SimCLR, tiny net of width 8 (32-d features), 96 images, 3 epochs of 3 steps, kNN each epoch."""
    return _train(
        tmp_path_factory, "tiny", backbone="tiny", backbone_args={"width": 8}, train_subset=96, test_subset=64,
        epochs=3, batch_size=32, eval_every=1, log_every=1,
    )


def resnet18_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SimCLR, ResNet-18 with the CIFAR stem, one step of 8 images (weights and BN statistics
    moved away from their initialization)."""
    return _train(
        tmp_path_factory, "resnet18", backbone="resnet18", train_subset=8, test_subset=8, epochs=1, batch_size=8,
        eval_every=0,
    )


def vit_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SimCLR, ViT-Tiny cut to 2 blocks (patch 4 at 32 px), one step of 8 images."""
    return _train(
        tmp_path_factory, "vit", backbone="vit_tiny", backbone_args={"depth": 2}, train_subset=8, test_subset=8, epochs=1, batch_size=8,
        eval_every=0,
    )


def write_jpeg_folder(root: Path, per_class: int = 4, classes: int = 3, offset: int = 0) -> list[Path]:
    """Real CIFAR-10 test JPEGs (the bytes of the .npz, unchanged) as ``root/<class>/<n>.jpg``."""
    with np.load(shared_data_dir() / "cifar10.npz") as archive:
        names, labels = archive["classes"], archive["test_labels"]
        blob, offsets = archive["test_jpeg"], archive["test_offsets"]
    written = []
    for c in range(classes):
        members = np.nonzero(labels == c)[0][offset : offset + per_class]
        folder = root / str(names[c])
        folder.mkdir(parents=True, exist_ok=True)
        for i in members:
            path = folder / f"{i:05d}.jpg"
            path.write_bytes(blob[offsets[i] : offsets[i + 1]].tobytes())
            written.append(path)
    return written


def reencode(path: Path, out: Path, quality: int = 90) -> Path:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=quality)
    out.write_bytes(buffer.getvalue())
    return out
