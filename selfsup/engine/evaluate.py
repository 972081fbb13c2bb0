"""Evaluate a trained run or checkpoint: the kNN and linear probes, each beside the same probe on
the random-init backbone (the run's own initialization, rebuilt from its seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data import ImageSet
from ..eval import extract_features, knn_accuracy, linear_probe
from ..eval.finetune import finetune, low_label_subset
from ..eval.knn import choose_k
from ..methods import Method
from . import checkpoint as ckpt
from .config import TrainConfig
from .hardware import autocast_dtype, pick_device
from .heldout import eval_datasets
from .init import load_method
from .build import build_recipe


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
    k: int | None = None,
    temperature: float = 0.1,
    linear_epochs: int = 100,
    train_subset: int | None = None,
    test_subset: int | None = None,
    baseline: bool = True,
    labels_per_class: int | None = None,
    label_fraction: float | None = None,
    finetune_args: dict[str, Any] | None = None,
    record: bool = True,
    test_data: str | None = None,
    val_fraction: float | None = None,
) -> dict[str, Any]:
    """Run ``probe`` ('knn', 'linear' or 'finetune') on the trained weights and on the random-init
    ones. ``labels_per_class`` / ``label_fraction`` train the probe on a fixed class-balanced
    subset (the low-label protocol). The probe learns from (or, for kNN, searches) ``data`` and is
    scored on ``test_data`` (defaults: :func:`~selfsup.engine.heldout.eval_datasets`). kNN's ``k``
    defaults to the run's ``knn_k`` or else :func:`~selfsup.eval.knn.choose_k` of the bank, the
    same for both backbones. With ``record`` the result is appended to the run's ``evals.jsonl``
    (read by ``selfsup compare`` and ``selfsup report``)."""
    torch_device = pick_device(device)
    results: dict[str, Any] = {"checkpoint": str(ckpt.resolve_checkpoint(path_or_run)), "probe": probe}
    sets = None
    for label, random_init in (("learned", False), ("random", True)):
        if random_init and not baseline:
            break
        method, config, image_size = load_method(path_or_run, torch_device, random_init=random_init)
        if sets is None:
            full_train, test = eval_datasets(config, data, data_dir, image_size, test_subset, train_subset, test_data, val_fraction)
            sets = low_label_subset(full_train, labels_per_class, label_fraction, config.seed), test
            results.update(data=data or config.data, test_data=test_data or (config.val_data if data is None else None),
                           bank=full_train.describe(), queries=test.describe(),
                           baseline="the initial backbone" if getattr(config, "init", None) else "random-init")
            if probe == "knn":
                k = choose_k(sets[0].labels, k if k is not None else config.knn_k)
                results["k"] = k
        train, test = sets
        results["train_images"] = len(train)
        if probe == "finetune":
            crop = build_recipe(config, method, image_size).views[0].size
            amp = autocast_dtype(config.precision, torch_device)
            results[label] = finetune(method, train, test, torch_device, crop_size=crop, autocast_dtype=amp,
                                      seed=config.seed, **(finetune_args or {}))
            continue
        # no torch.no_grad() needed: extract_features runs without autograd
        train_features, test_features = (probe_features(method, config, image_size, s, torch_device) for s in sets)
        if probe == "knn":
            acc = knn_accuracy(train_features, train.labels, test_features, test.labels, train.num_classes, k, temperature)
        else:
            acc = linear_probe(train_features, train.labels, test_features, test.labels, train.num_classes, epochs=linear_epochs)
        results[label] = acc
    if record:
        settings = {
            "knn": dict(k=k, temperature=temperature), "linear": dict(epochs=linear_epochs),
            "finetune": {name: v for name, v in (finetune_args or {}).items() if name != "progress"},
        }.get(probe, {})
        settings.update(labels_per_class=labels_per_class, label_fraction=label_fraction,
                        train_subset=train_subset, test_subset=test_subset, val_fraction=val_fraction)
        _record(results, settings)
    return results


def _record(results: dict[str, Any], settings: dict[str, Any]) -> None:
    """Append a probe's result to ``<run>/evals.jsonl`` when the checkpoint lives in a run."""
    import json
    import time

    run_dir = Path(results["checkpoint"]).parent.parent
    if not (run_dir / "config.yaml").is_file():
        return
    line = {"time": round(time.time(), 3), **results, "settings": {k: v for k, v in settings.items() if v is not None}}
    with open(run_dir / "evals.jsonl", "a") as handle:
        handle.write(json.dumps(line, default=str) + "\n")
