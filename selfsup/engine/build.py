"""Pure construction: a resolved :class:`TrainConfig` (plus the training set's size and image
side) -> the method, its view recipe, the optimizer with its parameter groups and the per-step
learning-rate and weight-decay schedules; and the config's training set. Nothing here writes to
disk, and only :func:`load_training_set` (and :func:`training_set_shape`, which uses it) reads data.

The :class:`~selfsup.engine.trainer.Trainer` builds its run with these functions; ``selfsup train
--dry-run`` calls :func:`build` on the ``meta`` device (modules and optimizer without storage:
an ImageNet-scale run is described in seconds and a few megabytes) and prints
:meth:`Built.describe`, which is also what ``tests/test_recipes_reference.py`` checks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..augment import Recipe, create_recipe
from ..data import ImageSet, load_dataset
from ..errors import ConfigError, DataError, SelfsupError
from ..methods import Method, Progress, create
from ..nn import create_backbone
from .config import TrainConfig
from .heldout import training_val_fraction
from .optim import build_optimizer, cosine_schedule, scaled_lr, step_schedule

# ImageNet-1k's training split (ILSVRC-2012): what --assume-samples stands for in the ImageNet configs.
IMAGENET_TRAIN_SAMPLES = 1_281_167


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_method(config: TrainConfig, image_size: int) -> Method:
    """The backbone and method of a resolved config, initialized from ``config.seed``."""
    seed_everything(config.seed)
    backbone = _built("backbone", config.backbone, config.backbone_args, create_backbone, image_size=image_size)
    return _built("method", config.method, config.method_args, create, backbone=backbone)


def _built(part: str, name: str, args: dict[str, Any], make: Any, **fixed: Any) -> Any:
    """``make(name, **fixed, **args)``. A value no check caught (a negative width, an argument
    the builder does not take) fails inside torch or the builder; it is still the config's fault,
    so say which part of it."""
    try:
        return make(name, **fixed, **args)
    except SelfsupError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{part} '{name}' cannot be built with {part}_args {args}: {exc}") from None


def build_recipe(config: TrainConfig, method: Method, image_size: int) -> Recipe:
    """The method's views (its recipe and overrides) with the config's ``recipe``/``augment``."""
    choice = method.default_recipe(image_size)
    name = config.recipe or choice.name
    overrides = {**(choice.overrides if name == choice.name else {}), **config.augment}
    return create_recipe(name, image_size, **overrides)


def build_optimizer_for(config: TrainConfig, method: Method) -> torch.optim.Optimizer:
    """The optimizer over ``method.param_groups()`` at the config's peak learning rate."""
    peak = scaled_lr(config.lr, config.batch_size, config.lr_scaling)
    return build_optimizer(
        method.param_groups(), config.optimizer, peak, config.weight_decay, config.momentum,
        betas=tuple(config.adamw_betas or (0.9, 0.999)), exclude_bias_norm=config.exclude_bias_norm, lars_eta=config.lars_eta,
        lars_clip_lr=config.lars_clip_lr, lars_trust=config.lars_trust,
    )


@dataclass
class Schedules:
    """Per-step values computed up front (as in DINO): the learning rate of the scheduled groups
    and, when it changes, the weight decay of the decayed groups."""

    lr: np.ndarray  # one value per step of the planned run (epochs x steps per epoch)
    weight_decay: np.ndarray | None  # None: constant
    warmup_steps: int
    total_steps: int  # steps the run takes: epochs x steps per epoch, or max_steps if fewer
    milestone_steps: list[int]  # steps where a step schedule drops


def build_schedules(config: TrainConfig, steps_per_epoch: int) -> Schedules:
    """Learning rate: linear warmup from ``warmup_start_lr`` over ``warmup_epochs``, then cosine
    to ``min_lr`` (or ``peak * min_lr_ratio``), steps of ``lr_decay_factor`` at ``lr_milestones``
    (epochs), or constant. Weight decay: cosine from ``weight_decay`` to ``weight_decay_end``."""
    planned = config.epochs * steps_per_epoch
    peak = scaled_lr(config.lr, config.batch_size, config.lr_scaling)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    milestones = [int(round(e * steps_per_epoch)) for e in config.lr_milestones] if config.lr_schedule == "step" else []
    if config.lr_schedule == "cosine":
        final = config.min_lr if config.min_lr is not None else peak * config.min_lr_ratio
        lr = cosine_schedule(peak, final, planned, warmup, config.warmup_start_lr)
    else:
        lr = step_schedule(peak, planned, milestones, config.lr_decay_factor, warmup, config.warmup_start_lr)
    changes = config.weight_decay_end is not None and config.weight_decay_end != config.weight_decay
    wd = cosine_schedule(config.weight_decay, config.weight_decay_end, planned) if changes else None
    total = min(planned, config.max_steps) if config.max_steps else planned
    return Schedules(lr, wd, min(warmup, planned), total, milestones)


def check_batch_size(batch_size: int, num_samples: int) -> None:
    """Refuse a batch larger than the training set (an epoch would have no step)."""
    if batch_size > num_samples:
        raise ConfigError(
            f"batch_size {batch_size} is larger than the training set ({num_samples} images); use a smaller batch_size."
        )


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Full batches per epoch (the loader drops the last partial batch)."""
    return num_samples // batch_size


@dataclass
class Built:
    """Everything a run is made of, before any data is read."""

    config: TrainConfig
    method: Method
    recipe: Recipe
    optimizer: torch.optim.Optimizer
    schedules: Schedules
    num_samples: int
    image_size: int
    steps_per_epoch: int
    samples_assumed: bool = False

    def describe(self) -> dict[str, Any]:
        """What the run would use, as plain JSON-able values (``selfsup train --dry-run --json``)."""
        config, schedules, method = self.config, self.schedules, self.method
        points = _schedule_points(schedules)
        lr = {name: float(schedules.lr[step]) for name, step in points.items()}
        groups = []
        for group in self.optimizer.param_groups:
            entry = {
                "tensors": len(group["params"]),
                "parameters": sum(p.numel() for p in group["params"]),
                "lr": float(group["lr"]),
                "weight_decay": float(group["weight_decay"]),
                "lr_scheduled": not group.get("fixed_lr", False),
            }
            if "lars_exclude" in group:
                entry.update(
                    lars_adapted=not group["lars_exclude"], lars_eta=group["eta"], lars_clip_lr=group["clip_lr"],
                    lars_trust=group["trust"],
                )
            if "betas" in group:  # Adam(W): MAE's (0.9, 0.95) against the default (0.9, 0.999)
                entry["betas"] = [float(b) for b in group["betas"]]
            groups.append(entry)
        ema = {
            name: float(method.ema_momentum(Progress(step, schedules.total_steps, self.steps_per_epoch)))
            for name, step in points.items()
        } if method.ema_pairs() else None
        return {
            "method": config.method,
            "backbone": config.backbone,
            "backbone_args": dict(method.backbone.build_args),
            "data": {
                "source": config.data,
                "train_samples": self.num_samples,
                "train_samples_assumed": self.samples_assumed,
                "image_size": self.image_size,
                "batch_size": config.batch_size,
                "steps_per_epoch": self.steps_per_epoch,
                "epochs": config.epochs,
                "total_steps": schedules.total_steps,
            },
            "optimizer": {
                "class": type(self.optimizer).__name__,
                "base_lr": config.lr,
                "lr_scaling": config.lr_scaling,
                "peak_lr": scaled_lr(config.lr, config.batch_size, config.lr_scaling),
                # SGD and LARS use momentum; Adam(W) its betas (in each group)
                "momentum": None if "betas" in self.optimizer.defaults else config.momentum,
                "groups": groups,
            },
            "schedule": {
                "lr_schedule": config.lr_schedule,
                "lr_decay_factor": config.lr_decay_factor,
                "warmup_epochs": config.warmup_epochs,
                "warmup_steps": schedules.warmup_steps,
                "milestone_steps": schedules.milestone_steps,
                "steps": points,
                "lr": lr,
                "weight_decay": (
                    {"start": config.weight_decay, "end": config.weight_decay_end}
                    if schedules.weight_decay is not None else {"constant": config.weight_decay}
                ),
                "grad_clip": config.grad_clip,
            },
            "ema_momentum": ema,
            "views": self.recipe.describe(),
            "parameters": {
                "total": sum(p.numel() for p in method.parameters()),
                "trainable": sum(p.numel() for p in method.parameters() if p.requires_grad),
                "backbone": sum(p.numel() for p in method.backbone.parameters()),
            },
            "method_details": method.describe(),
        }


def _schedule_points(schedules: Schedules) -> dict[str, int]:
    """The steps a description reports: the first, the first after the warmup, the last."""
    last = max(schedules.total_steps - 1, 0)
    return {"start": 0, "end_of_warmup": min(schedules.warmup_steps, last), "end": last}


def build(
    config: TrainConfig, num_samples: int, image_size: int, device: torch.device | str = "meta",
    samples_assumed: bool = False,
) -> Built:
    """Resolve ``config`` and build its method, recipe, optimizer and schedules for a training set
    of ``num_samples`` images of ``image_size`` px, on ``device`` (``meta`` by default: shapes and
    values of every setting, no memory for weights). No data is read and nothing is written."""
    config = config.resolve()
    check_batch_size(config.batch_size, num_samples)
    with torch.device(device):
        method = build_method(config, image_size)
        method.bind_dataset(num_samples)
    recipe = build_recipe(config, method, image_size)
    optimizer = build_optimizer_for(config, method)
    per_epoch = steps_per_epoch(num_samples, config.batch_size)
    return Built(
        config, method, recipe, optimizer, build_schedules(config, per_epoch), num_samples, image_size, per_epoch,
        samples_assumed,
    )


def load_training_set(config: TrainConfig) -> ImageSet:
    """The config's training images, without the fraction held out for the probes (heldout.py)."""
    return load_dataset(
        config.data, "train", data_dir=config.data_dir, image_size=config.image_size, limit=config.train_subset,
        seed=config.seed, max_image_pixels=config.max_image_pixels,
        val_fraction=training_val_fraction(config.data, config.val_data, config.val_fraction),
    )


def training_set_shape(config: TrainConfig, assume_samples: int | None = None) -> tuple[int, int, bool]:
    """``(samples, image side, assumed)`` of a config's training set: read from the data when it
    is here, or ``assume_samples`` images of the config's ``image_size`` (32 px for the built-in
    sources, 64 for folders) when given, e.g. 1,281,167 for ImageNet-1k's train split."""
    if assume_samples is not None:
        if assume_samples < 1:
            raise ConfigError(f"--assume-samples must be >= 1, got {assume_samples}.")
        side = config.image_size or (32 if config.data in ("digits", "cifar10", "cifar100") else 64)
        samples = min(assume_samples, config.train_subset) if config.train_subset else assume_samples
        return samples, side, True
    try:
        train = load_training_set(config)
    except DataError as exc:
        raise ConfigError(
            f"{exc} A dry run can describe the run without the data: pass --assume-samples N, the training-set size "
            f"(ImageNet-1k: {IMAGENET_TRAIN_SAMPLES:,})."
        ) from None
    return len(train), int(train.image_size or 32), False


def format_description(d: dict[str, Any]) -> str:
    """:meth:`Built.describe` as the lines ``selfsup train --dry-run`` prints."""
    data, opt, sched = d["data"], d["optimizer"], d["schedule"]
    lines = [
        f"method {d['method']} / backbone {d['backbone']} {d['backbone_args']}",
        f"data {data['source']}: {data['train_samples']:,} training images{' (assumed)' if data['train_samples_assumed'] else ''} "
        f"of {data['image_size']} px; batch {data['batch_size']}, {data['steps_per_epoch']:,} steps per epoch, "
        f"{data['epochs']} epochs = {data['total_steps']:,} steps",
        f"optimizer {opt['class']}: base lr {opt['base_lr']:g} ({opt['lr_scaling']} scaling) -> peak {opt['peak_lr']:g}, "
        + (f"momentum {opt['momentum']}" if opt["momentum"] is not None else f"betas {tuple(opt['groups'][0]['betas'])}"),
    ]
    for i, g in enumerate(opt["groups"]):
        lars = (
            f", LARS {'adapted' if g['lars_adapted'] else 'excluded'} (eta {g['lars_eta']:g}, clip_lr {g['lars_clip_lr']}, "
            f"{g['lars_trust']})" if "lars_adapted" in g else ""
        )
        lines.append(
            f"  group {i}: {g['tensors']} tensors, {g['parameters']:,} parameters, weight decay {g['weight_decay']:g}"
            f"{'' if g['lr_scheduled'] else ', lr held at its peak'}{lars}"
        )
    lr = sched["lr"]
    lines.append(
        f"lr {sched['lr_schedule']}: {lr['start']:.6g} at step 0, {lr['end_of_warmup']:.6g} after {sched['warmup_steps']:,} warmup "
        f"steps ({sched['warmup_epochs']:g} epochs), {lr['end']:.6g} at step {sched['steps']['end']:,}"
        + (f"; x{sched['lr_decay_factor']:g} at steps {sched['milestone_steps']}" if sched["milestone_steps"] else "")
    )
    wd = sched["weight_decay"]
    lines.append(f"weight decay {wd['constant']:g} (constant)" if "constant" in wd else f"weight decay cosine {wd['start']:g} -> {wd['end']:g}")
    if sched["grad_clip"]:
        lines.append(f"gradient norm clipped to {sched['grad_clip']:g}")
    if m := d["ema_momentum"]:
        lines.append(f"EMA momentum {m['start']:.6g} at step 0, {m['end_of_warmup']:.6g} after the warmup, {m['end']:.6g} at the end")
    views = d["views"]
    extra = {k: v for k, v in views.items() if k not in ("name", "views")}
    lines.append(f"views: recipe {views['name']}{' ' + str(extra) if extra else ''}")
    for v in (v for v in views["views"] if v["count"]):
        lines.append(
            f"  {v['count']} x {v['size']} px: crop scale {tuple(v['crop_scale'])}, flip {v['flip_p']}, jitter p {v['jitter_p']} "
            f"({v['brightness']}, {v['contrast']}, {v['saturation']}, {v['hue']}), grayscale {v['grayscale_p']}"
            f"{' (before jitter)' if v['grayscale_first'] else ''}, blur {v['blur_p']}, solarize {v['solarize_p']}"
        )
    p = d["parameters"]
    lines.append(f"parameters: {p['total']:,} ({p['trainable']:,} trainable; backbone {p['backbone']:,})")
    if d["method_details"]:
        lines.append("method: " + ", ".join(f"{k} {v}" for k, v in d["method_details"].items()))
    return "\n".join(lines)


__all__ = [
    "IMAGENET_TRAIN_SAMPLES", "Built", "Schedules", "build", "build_method", "build_optimizer_for", "build_recipe",
    "build_schedules", "check_batch_size", "format_description", "load_training_set", "seed_everything",
    "steps_per_epoch", "training_set_shape",
]
