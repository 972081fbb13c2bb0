"""Raw image arrays in a ``.npz``, as many datasets ship them (MNIST-, CIFAR- or Kaggle-style dumps).

Two layouts, read without pickle:

- ``images`` (uint8, ``(N, H, W)`` grayscale or ``(N, H, W, 3)`` colour), optional ``labels``
  (integers, -1 where unknown) and ``classes`` (names in label order): one split, which keeps a
  held-out fraction for probes like a folder (:mod:`selfsup.data.splits`);
- ``train_images`` and ``test_images`` (or ``val_images``), each with ``<split>_labels``, and an
  optional ``classes``.

Channel-first colour ``(N, 3, H, W)`` is accepted too. Grayscale is repeated to three channels;
images that are not square, or not of the requested ``image_size``, are resized (shorter side) and
centre-cropped exactly as image files are (:func:`selfsup.data.imageset.resize_center_crop`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .imageset import ImageSet, resize_center_crop

def raw_layout(files: list[str]) -> list[str] | None:
    """The splits of a raw-array archive (``[""]`` for a single ``images`` array), or None when the
    archive is not one (the packed layout, say)."""
    if "images" in files:
        return [""]
    found = [s for s in ("train", "test", "val") if f"{s}_images" in files]
    return found or None


def _as_nhwc(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    if array.dtype != np.uint8:
        hint = " (floats in [0, 1]: multiply by 255 and round)" if np.issubdtype(array.dtype, np.floating) else ""
        raise DataError(f"'{path}': {key} must be uint8 pixel values 0-255, got {array.dtype}{hint}; "
                        f"convert it with images.astype(np.uint8) and save again.")
    nhwc = array[..., None] if array.ndim == 3 else array  # (N, H, W) grayscale
    if nhwc.ndim == 4 and nhwc.shape[3] not in (1, 3) and nhwc.shape[1] in (1, 3):  # channel-first
        nhwc = nhwc.transpose(0, 2, 3, 1)
    if nhwc.ndim != 4 or nhwc.shape[3] not in (1, 3):
        raise DataError(
            f"'{path}': {key} has shape {array.shape}; expected (N, H, W) grayscale or (N, H, W, 3) colour "
            "uint8 images."
        )
    return np.repeat(nhwc, 3, axis=3) if nhwc.shape[3] == 1 else nhwc


def load_raw(path: str | Path, split: str = "", image_size: int | None = None) -> ImageSet:
    """One split of a raw-array archive (``""``: the single ``images`` array) as an :class:`ImageSet`."""
    path = Path(path)
    prefix = f"{split}_" if split else ""
    with np.load(path, allow_pickle=False) as archive:
        files = archive.files
        images = archive[f"{prefix}images"]
        labels = archive[f"{prefix}labels"] if f"{prefix}labels" in files else None
        classes = [str(c) for c in archive["classes"]] if "classes" in files else None
        # Without names, classes are numbered up to the largest label of any split, so that the
        # splits of one file agree on them.
        top = max((int(archive[k].max()) for k in files if k.endswith("labels") and archive[k].size), default=-1)
    images = _as_nhwc(images, path, f"{prefix}images")
    count = len(images)
    labels = np.full(count, -1, dtype=np.int64) if labels is None else np.asarray(labels).reshape(-1)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"'{path}': {prefix}labels must be {count} integers (one per image), got {labels.dtype} {labels.shape}.")
    labels = labels.astype(np.int64)
    if count and labels.min() < -1:
        raise DataError(f"'{path}': {prefix}labels has values below -1 (-1 marks an unknown label).")
    if classes is None:
        classes = [str(c) for c in range(top + 1)]
    elif count and labels.max() >= len(classes):
        raise DataError(f"'{path}': {prefix}labels has values beyond the {len(classes)} names in classes.")
    height, width = images.shape[1:3]
    size = image_size or min(height, width)
    if (height, width) != (size, size):
        images = np.stack([np.asarray(resize_center_crop(Image.fromarray(a), size), dtype=np.uint8) for a in images])
    return ImageSet(
        name=path.stem, split=split or "train", labels=torch.from_numpy(labels),
        classes=classes, images=torch.from_numpy(np.ascontiguousarray(images)),
    )

