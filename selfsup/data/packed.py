"""The packed layout: encoded images concatenated, with offsets, labels and class names.

One ``.npz`` file per dataset (``np.load`` reads it without pickle)::

    classes          unicode (C,)          class names in label order (may be empty)
    {split}_jpeg     uint8 (total_bytes,)  every image of the split as a complete encoded file
    {split}_offsets  int64 (N + 1,)        image i is {split}_jpeg[offsets[i]:offsets[i+1]]
    {split}_labels   int64 (N,)            class index, -1 where unknown

``split`` is ``train`` and optionally ``test`` (or ``val``). The key keeps the name ``_jpeg`` of
the layout in ../shared/data even when ``selfsup data pack --format png`` stores PNG files; every
decoder here recognises the format from the bytes.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .imageset import ImageSet, decode_to_array

SPLITS = ("train", "test", "val")


def packed_splits(path: str | Path) -> list[str]:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # not a zip (or a pickle np.load refuses): a user's file, not a bug
        raise DataError(f"'{path}' is not a readable .npz file ({type(exc).__name__}: {str(exc)[:200]}).") from None
    if not hasattr(archive, "files"):  # a bare .npy array saved under a .npz name
        raise DataError(f"'{path}' is not a readable .npz file (it holds a single array, not the packed layout).")
    with archive:
        return [s for s in SPLITS if f"{s}_jpeg" in archive.files]


def _check_layout(path: Path, files: list[str], split: str) -> None:
    missing = [key for key in (f"{split}_jpeg", f"{split}_offsets", f"{split}_labels") if key not in files]
    if missing:
        present = sorted({k.split("_")[0] for k in files if k.endswith("_jpeg")})
        hint = f" It holds the splits: {', '.join(present)}." if present else ""
        raise DataError(
            f"packed file '{path}' has no split '{split}' (missing keys: {', '.join(missing)}).{hint} "
            "The layout is described in selfsup/data/packed.py and written by `selfsup data pack`; raw uint8 "
            "arrays are read from the keys 'images' (+ 'labels', 'classes') or 'train_images'/'test_images' "
            "(+ 'train_labels'/'test_labels'), see selfsup/data/arrays.py."
        )


def load_packed(
    path: str | Path,
    split: str = "train",
    indices: np.ndarray | None = None,
    image_size: int | None = None,
    name: str | None = None,
    workers: int | None = None,
) -> ImageSet:
    """Decode the images of one split (or only ``indices`` of it) into a uint8 tensor.

    Images are decoded on a thread pool (Pillow releases the GIL while decoding). When the images
    differ in size, or ``image_size`` is given, each is resized (shorter side) and centre-cropped.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"'{path}' is not a readable .npz file ({type(exc).__name__}: {exc}).") from None
    with archive:
        _check_layout(path, archive.files, split)
        blob = archive[f"{split}_jpeg"]
        offsets = archive[f"{split}_offsets"].astype(np.int64)
        labels = archive[f"{split}_labels"].astype(np.int64)
        classes = [str(c) for c in archive["classes"]] if "classes" in archive.files else []
    count = len(labels)
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise DataError(f"packed file '{path}': {split}_jpeg must be a 1-D uint8 array, got {blob.dtype} {blob.shape}.")
    if offsets.shape != (count + 1,) or offsets[0] != 0 or offsets[-1] != blob.shape[0] or np.any(np.diff(offsets) <= 0):
        raise DataError(
            f"packed file '{path}': {split}_offsets is inconsistent (expected {count + 1} increasing offsets "
            f"from 0 to {blob.shape[0]}, the size of {split}_jpeg). Re-create it with `selfsup data pack`."
        )
    if classes and count and (labels.max() >= len(classes) or labels.min() < -1):
        raise DataError(f"packed file '{path}': {split}_labels has values outside -1..{len(classes) - 1}.")
    chosen = np.arange(count) if indices is None else np.asarray(indices, dtype=np.int64)
    blobs = [blob[offsets[i] : offsets[i + 1]].tobytes() for i in chosen]
    images = decode_many(blobs, image_size, workers=workers, what=f"{path.name}:{split}")
    return ImageSet(
        name=name or path.stem,
        split=split,
        labels=torch.from_numpy(labels[chosen].copy()),
        classes=classes,
        images=images,
    )


def _decode_jpegs_torchvision(blobs: list[bytes], image_size: int | None, device: str = "cpu") -> torch.Tensor | None:
    """Batched libjpeg-turbo (or nvJPEG on CUDA) decoding: about 4x Pillow on this CPU.

    Returns None when the fast path does not apply (not all JPEG, mixed sizes, a decode error),
    and the caller falls back to Pillow, which also gives the precise error message.
    """
    if not blobs or not all(b[:2] == b"\xff\xd8" for b in blobs):
        return None
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    except Exception:
        return None
    shape = decoded[0].shape
    if any(d.shape != shape for d in decoded) or (image_size is not None and tuple(shape[1:]) != (image_size, image_size)):
        return None
    return torch.stack(decoded).permute(0, 2, 3, 1).contiguous()


def decode_many(
    blobs: list[bytes], image_size: int | None, workers: int | None = None, what: str = "", device: str = "cpu"
) -> torch.Tensor:
    """Decode encoded images to one uint8 ``(N, S, S, 3)`` tensor; a bad one is a DataError.

    ``device="cuda"`` decodes JPEGs with nvJPEG on the GPU, in one batch.
    """
    fast = _decode_jpegs_torchvision(blobs, image_size, device)
    if fast is not None:
        return fast
    workers = workers or min(8, os.cpu_count() or 1)

    def decode(i: int) -> np.ndarray:
        try:
            return decode_to_array(blobs[i], image_size)
        except ValueError as exc:
            raise DataError(f"{what}: image {i} cannot be decoded: {exc}") from None

    with ThreadPoolExecutor(workers) as pool:
        arrays = list(pool.map(decode, range(len(blobs)), chunksize=256))
    if not arrays:
        return torch.zeros(0, image_size or 1, image_size or 1, 3, dtype=torch.uint8)
    if len({a.shape for a in arrays}) > 1:
        # Variable sizes without a requested size: bring all to the smallest shorter side.
        size = min(min(a.shape[:2]) for a in arrays)
        arrays = [decode_to_array(blobs[i], size) for i in range(len(blobs))]
    return torch.from_numpy(np.stack(arrays))


def encode_image(array: np.ndarray, fmt: str = "jpeg", quality: int = 95) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    options = {"format": "PNG", "optimize": False} if fmt == "png" else {"format": "JPEG", "quality": quality}
    Image.fromarray(array).save(buffer, **options)
    return buffer.getvalue()


def write_packed(
    out: str | Path,
    splits: dict[str, tuple[Iterable[np.ndarray], np.ndarray]],
    classes: list[str],
    fmt: str = "jpeg",
    quality: int = 95,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``{split: (arrays, labels)}`` in the packed layout, atomically (temp file + rename)."""
    out = Path(out)
    if out.suffix != ".npz":
        raise DataError(f"the packed output must end in .npz, got '{out}'.")
    arrays_out: dict[str, np.ndarray] = {"classes": np.asarray(classes, dtype=np.str_)}
    for split, (images, labels) in splits.items():
        encoded = []
        for array in images:
            encoded.append(encode_image(array, fmt, quality))
            if progress:
                progress(1)
        offsets = np.cumsum([0] + [len(b) for b in encoded], dtype=np.int64)
        arrays_out[f"{split}_jpeg"] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        arrays_out[f"{split}_offsets"] = offsets
        arrays_out[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, **arrays_out)
    os.replace(tmp, out)
    return out
