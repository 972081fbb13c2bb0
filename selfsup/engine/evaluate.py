"""Evaluate a trained run or checkpoint: the kNN and linear probes, each beside the same probe on
the random-init backbone (the run's own initialization, rebuilt from its seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import from_dict
from ..data import ImageSet, load_dataset
from ..errors import DataError
from ..eval import extract_features, knn_accuracy, linear_probe
from ..methods import Method
from . import checkpoint as ckpt
from .config import TrainConfig
from .trainer import autocast_dtype, build_method, build_recipe, pick_device


def load_method(path_or_run: str | Path, device: str | torch.device = "cpu", random_init: bool = False) -> tuple[Method, TrainConfig, int]:
    """Rebuild a run's method from a checkpoint (or a run directory's newest checkpoint).

    With ``random_init`` the weights are left as initialized from the run's seed: the baseline
    every probe is compared against.
    """
    path = ckpt.resolve_checkpoint(path_or_run)
    state = ckpt.load_checkpoint(path, map_location="cpu")
    if "config" not in state or "model" not in state:
        raise ckpt.CheckpointError(f"'{path}' is not a selfsup training checkpoint (no config or model).")
    config = from_dict(TrainConfig, state["config"], f"config in {path.name}")
    image_size = int(state.get("image_size", 32))
    method = build_method(config, image_size)
    if not random_init:
        method.load_state_dict(state["model"])
    return method.to(pick_device(str(device))).eval(), config, image_size


def _eval_data(config: TrainConfig, data: str | None, data_dir: str | None, image_size: int, test_subset: int | None, train_subset: int | None) -> tuple[ImageSet, ImageSet]:
    source = data or config.data
    common = dict(data_dir=data_dir or config.data_dir, image_size=image_size, seed=config.seed)
    train = load_dataset(source, "train", limit=train_subset, **common)
    test = load_dataset(source if not config.val_data or data else config.val_data, "test", limit=test_subset, **common)
    if not train.labelled or not test.labelled:
        raise DataError(f"'{source}' has no labels to evaluate with; give a labelled source with --data.")
    return train, test


def probe_features(method: Method, config: TrainConfig, image_size: int, dataset: ImageSet, device: torch.device) -> torch.Tensor:
    recipe = build_recipe(config, method, image_size)
    return extract_features(
        method.representation, method.eval_transform, dataset, device,
        crop_size=recipe.views[0].size, autocast_dtype=autocast_dtype(config.precision, device),
    )


def evaluate(
    path_or_run: str | Path,
    probe: str = "knn",
    data: str | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    k: int = 200,
    temperature: float = 0.1,
    linear_epochs: int = 100,
    train_subset: int | None = None,
    test_subset: int | None = None,
    baseline: bool = True,
) -> dict[str, Any]:
    """Run ``probe`` ('knn' or 'linear') on the trained weights and on the random-init ones."""
    torch_device = pick_device(device)
    results: dict[str, Any] = {"checkpoint": str(ckpt.resolve_checkpoint(path_or_run)), "probe": probe}
    sets = None
    for label, random_init in (("learned", False), ("random", True)):
        if random_init and not baseline:
            break
        method, config, image_size = load_method(path_or_run, torch_device, random_init=random_init)
        if sets is None:
            sets = _eval_data(config, data, data_dir, image_size, test_subset, train_subset)
        train, test = sets
        with torch.no_grad():
            train_features = probe_features(method, config, image_size, train, torch_device)
            test_features = probe_features(method, config, image_size, test, torch_device)
        if probe == "knn":
            acc = knn_accuracy(train_features, train.labels, test_features, test.labels, train.num_classes, k, temperature)
        else:
            acc = linear_probe(train_features, train.labels, test_features, test.labels, train.num_classes, epochs=linear_epochs)
        results[label] = acc
        results["data"] = data or config.data
    return results
