"""Fine-tuning the whole representation with a linear classifier, and the low-label protocol.

Fine-tuning follows the semi-supervised evaluation of SimCLR (Chen et al. 2020, arXiv 2002.05709,
section 6 and appendix B.5) and BYOL (Grill et al. 2020, arXiv 2006.07733, appendix C.2): the
pretrained network and a new linear head are trained together with labels, on all of them or on a
fixed, class-balanced 1% / 10% subset, with random crops (with resize) and horizontal flips as the
only augmentation, SGD with Nesterov momentum and a cosine schedule. The backbone gets a smaller
learning rate than the freshly initialized head (``backbone_lr_ratio``), as is usual when a
pretrained network is fine-tuned, so the first steps of a random head do not wreck it.

Everything here works through the method contract only: ``representation(x)`` is what is trained
(the backbone for most methods; both encoders for CMC's concatenation) and ``eval_transform``
turns uint8 images into its input, so fine-tuning knows nothing about any method by name.
"""

from __future__ import annotations

import itertools
import math
import sys
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import ops
from ..data import BatchLoader, ImageSet
from ..errors import ConfigError, DataError
from .knn import center_crop, extract_features, labelled, topk_accuracy


def class_balanced_subset(
    labels: torch.Tensor, per_class: int | None = None, fraction: float | None = None, seed: int = 0
) -> torch.Tensor:
    """Indices (sorted) of a fixed class-balanced subset of the labelled samples.

    Exactly one of ``per_class`` (N images of each class) and ``fraction`` (that share of each
    class, at least one image) is given. The subset depends only on ``labels`` and ``seed``, so the
    pretrained and the random-init backbones, and every run compared, see the same images — as
    the fixed 1% / 10% ImageNet lists of SimCLR and BYOL.
    """
    if (per_class is None) == (fraction is None):
        raise ConfigError("give exactly one of labels_per_class and label_fraction.")
    if per_class is not None and per_class < 1:
        raise ConfigError(f"labels_per_class must be >= 1, got {per_class}.")
    if fraction is not None and not 0 < fraction <= 1:
        raise ConfigError(f"label_fraction must be in (0, 1], e.g. 0.01 or 0.1; got {fraction}.")
    labels = labels.cpu()
    classes = sorted(int(c) for c in labels[labels >= 0].unique())
    if not classes:
        raise DataError("the training set has no labels to draw a labelled subset from.")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in classes:
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        count = per_class if per_class is not None else max(1, round(fraction * len(members)))
        if count > len(members):
            raise DataError(
                f"class {c} has only {len(members)} labelled images, fewer than labels_per_class={per_class}; "
                "ask for fewer labels per class."
            )
        chosen.append(members[:count])
    return torch.cat(chosen).sort().values


def low_label_subset(dataset: ImageSet, per_class: int | None, fraction: float | None, seed: int = 0) -> ImageSet:
    """``dataset`` itself when neither is given, else its class-balanced subset."""
    if per_class is None and fraction is None:
        return dataset
    return dataset.subset(class_balanced_subset(dataset.labels, per_class, fraction, seed))


def random_resized_crop_flip(
    images: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    generator: torch.Generator | None,
) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> uint8 ``(B, size, size, 3)``: a random resized crop (torchvision's
    sampling) and a horizontal flip with probability 1/2, per sample, as one batched resample.

    The result stays uint8 so that the method's own ``eval_transform`` (ImageNet normalization, or
    Lab for CMC) turns it into the network's input exactly as at test time."""
    batch, height, width, _ = images.shape
    boxes = ops.sample_crop_boxes(batch, height, width, scale, (3 / 4, 4 / 3), generator, images.device)
    flip = torch.rand(batch, device=images.device, generator=generator) < 0.5
    views = ops.resized_crop(ops.to_float(images), boxes, size, flip)
    return views.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def finetune(
    method: nn.Module,
    train: ImageSet,
    test: ImageSet,
    device: torch.device | str = "cpu",
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 0.1,
    backbone_lr_ratio: float = 0.1,
    weight_decay: float = 5e-4,
    crop_size: int | None = None,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    max_steps: int | None = None,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``method.representation`` and a new ``Linear`` head on ``train``; top-1/top-5 on ``test``.

    ``method`` is trained in place (pass a copy you can lose). Every parameter the representation
    uses is trained, including ones a method keeps frozen during pretraining (e.g. an EMA teacher
    that DINO probes), because fine-tuning means training the whole feature extractor.

    ``lr`` is the head's learning rate per 256 images (scaled linearly with ``batch_size``); the
    representation's is ``lr * backbone_lr_ratio`` (0 freezes its weights: a linear probe trained
    with augmentation). ``crop_scale`` is the area range of the random resized crop (0.08-1, the
    Inception crop SimCLR fine-tunes with); ``crop_size`` defaults to the images' side.
    """
    device = torch.device(device)
    if epochs <= 0 or batch_size <= 0 or lr <= 0 or backbone_lr_ratio < 0 or weight_decay < 0:
        raise ConfigError(
            "fine-tuning needs epochs > 0, batch_size > 0, lr > 0, backbone_lr_ratio >= 0 and weight_decay >= 0; "
            f"got {epochs}, {batch_size}, {lr}, {backbone_lr_ratio}, {weight_decay}."
        )
    if train.streamed or test.streamed:
        raise DataError("fine-tuning needs data that fits in memory; pass --train-subset/--test-subset or a packed .npz.")
    keep = torch.nonzero(train.labels >= 0).flatten()
    if len(keep) < len(train):
        train = train.subset(keep)
    if len(train) == 0 or not test.labelled:
        raise DataError("fine-tuning needs labelled training and test images.")
    num_classes = max(train.num_classes, int(train.labels.max()) + 1)
    crop_size = crop_size or int(train.image_size or train.images.shape[1])
    batch_size = min(batch_size, len(train))
    torch.manual_seed(seed)

    method = method.to(device).requires_grad_(True)
    method.eval()
    with torch.no_grad():
        # The head's width is whatever the representation returns (a concatenation for CMC).
        probe = method.representation(method.eval_transform(center_crop(train.images[:2].to(device), crop_size)))
    head = nn.Linear(probe.shape[1], num_classes).to(device)  # trained on the representation's float output
    # the usual head init of linear evaluations (MoCo, DINO): N(0, 0.01), zero bias
    nn.init.normal_(head.weight, 0, 0.01)
    nn.init.zeros_(head.bias)

    peak = lr * batch_size / 256
    optimizer = torch.optim.SGD(
        [
            {"params": list(method.parameters()), "lr_scale": backbone_lr_ratio},
            {"params": list(head.parameters()), "lr_scale": 1.0},
        ],
        lr=peak, momentum=0.9, nesterov=True, weight_decay=weight_decay,
    )
    loader = BatchLoader(train, batch_size, device, shuffle=True, drop_last=True, seed=seed)
    total = epochs * len(loader) if max_steps is None else max(0, min(max_steps, epochs * len(loader)))
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    context = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", desc="fine-tuning", file=sys.stderr, dynamic_ncols=True, disable=not progress)
    losses = []
    method.train()
    batches = (batch for epoch in range(epochs) for batch in loader.epoch(epoch))
    for step, batch in enumerate(itertools.islice(batches, total)):
        for group in optimizer.param_groups:
            group["lr"] = peak * group["lr_scale"] * 0.5 * (1 + math.cos(math.pi * step / total))
        images = random_resized_crop_flip(batch.images, crop_size, crop_scale, generator)
        with context:
            logits = head(method.representation(method.eval_transform(images)).float())
        loss = F.cross_entropy(logits.float(), batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        bar.update(1)
    bar.close()
    method.eval()
    with torch.no_grad():
        features = extract_features(
            method.representation, method.eval_transform, test, device, crop_size=crop_size, autocast_dtype=autocast_dtype
        )
        features, labels = labelled(features, test.labels)
        acc = topk_accuracy(head(features), labels)
    final_loss = float(torch.stack(losses[-max(1, len(loader)) :]).mean()) if losses else float("nan")
    return {"top1": acc[1], "top5": acc[5], "train_images": len(train), "steps": len(losses), "final_loss": final_loss}
