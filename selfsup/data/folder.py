"""A directory of images, searched recursively; first-level subfolders are the classes."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import DataError
from .imageset import DEFAULT_MAX_IMAGE_PIXELS, ImageSet, decode_to_array

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
REPORT_FIRST = 5


def scan_folder(root: str | Path) -> tuple[list[str], list[int], list[str], list[str]]:
    """Find image files under ``root``.

    Returns (paths, labels, classes, other_files). Classes are the first-level subfolders that
    hold images (sorted by name); images directly in ``root`` are labelled -1. Symbolic links are
    followed, including links that point outside ``root`` (a dataset assembled from links is a
    common layout); a link cycle is visited once.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder '{root}' does not exist.")
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder (give a folder of images, a .npz file, or a built-in name).")
    found: list[tuple[str, str]] = []  # (class name or "", path)
    others: list[str] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        top = "" if rel == "." else rel.split(os.sep)[0]
        for filename in sorted(filenames):
            if filename.startswith("."):
                continue
            path = os.path.join(dirpath, filename)
            if os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS:
                found.append((top, path))
            else:
                others.append(path)
    class_names = sorted({c for c, _ in found if c})
    empty = sorted(
        d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in class_names
    )
    if class_names and empty:
        raise DataError(
            f"class folder(s) {', '.join(repr(e) for e in empty)} in '{root}' hold no image. "
            "Remove them, or add images to them."
        )
    index = {c: i for i, c in enumerate(class_names)}
    paths = [p for _, p in found]
    labels = [index[c] if c else -1 for c, _ in found]
    return paths, labels, class_names, others


def _report_skipped(root: Path, skipped: list[tuple[str, str]]) -> None:
    if not skipped:
        return
    lines = [f"selfsup: skipped {len(skipped)} unreadable file(s) in '{root}':"]
    lines += [f"  {path}: {reason}" for path, reason in skipped[:REPORT_FIRST]]
    if len(skipped) > REPORT_FIRST:
        lines.append(f"  ... and {len(skipped) - REPORT_FIRST} more")
    print("\n".join(lines), file=sys.stderr)


def split_paired(paths: list[str], modalities: Sequence[str]) -> tuple[list[int], dict[str, list[str | None]]]:
    """Separate paired modality files from images: ``name.<modality>.<ext>`` beside ``name.<ext>``
    (e.g. ``0001.jpg`` and ``0001.depth.png``; CMC's views beyond colour, arXiv 1906.05849).

    Returns the positions in ``paths`` of the images proper and, per modality, the file paired
    with each of them (None where it is missing).
    """
    tags = {f".{m}" for m in modalities}
    paired: dict[tuple[str, str], str] = {}
    images: list[int] = []
    for i, path in enumerate(paths):
        base, tag = os.path.splitext(os.path.splitext(path)[0])
        if tag in tags:
            paired[(base, tag[1:])] = path
        else:
            images.append(i)
    found = {m: [paired.get((os.path.splitext(paths[i])[0], m)) for i in images] for m in modalities}
    return images, found


def _decode_gray(path: str, image_size: int, max_image_pixels: int) -> np.ndarray:
    """A modality file as 8-bit grayscale ``(S, S)`` (16-bit depth maps are scaled, not clipped)."""
    rgb = decode_to_array(path, image_size, max_image_pixels).astype(np.uint32)
    return ((299 * rgb[..., 0] + 587 * rgb[..., 1] + 114 * rgb[..., 2] + 500) // 1000).astype(np.uint8)


def load_folder(
    root: str | Path,
    image_size: int,
    split: str = "train",
    max_memory_bytes: int = 8 << 30,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    workers: int | None = None,
    progress: bool = True,
    modalities: Sequence[str] = (),
) -> ImageSet:
    """Load a folder of images, decoded to ``image_size`` (shorter side, then centre crop).

    A folder whose decoded images fit in ``max_memory_bytes`` is decoded once, in parallel, and
    held as one uint8 tensor; a larger one is streamed (``paths`` only) by DataLoader workers
    that only read and decode. Unreadable files are skipped, counted and reported once.

    ``modalities`` names data stored beside each image (``name.depth.png`` for ``depth``, see
    :func:`split_paired`): each is decoded to 8-bit grayscale at the image's geometry and appended
    as one more channel, so ``images`` is ``(N, S, S, 3 + len(modalities))`` and every crop of a
    batch cuts all of them alike. An image without one of its modalities is skipped and reported.
    """
    root = Path(root)
    paths, labels, classes, others = scan_folder(root)
    keep, paired = split_paired(paths, modalities)  # without modalities: every path, none paired
    paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    if not paths:
        what = f"{len(others)} file(s), none with an image extension" if others else "no files"
        raise DataError(
            f"data folder '{root}' holds {what}. Expected images "
            f"({', '.join(sorted(e.lstrip('.') for e in IMAGE_EXTENSIONS))}), optionally in one subfolder per class."
        )
    label_tensor = torch.tensor(labels, dtype=torch.long)
    if len(paths) * image_size * image_size * (3 + len(modalities)) > max_memory_bytes:
        if modalities:
            raise DataError(
                f"data folder '{root}' with modalities {', '.join(modalities)} does not fit in memory "
                f"({max_memory_bytes:,} bytes); paired modalities are not streamed. Use a smaller image_size."
            )
        return ImageSet(
            name=root.name, split=split, labels=label_tensor, classes=classes, paths=paths, image_size=image_size
        )

    def decode(position: int) -> np.ndarray | str:
        try:
            channels = [decode_to_array(paths[position], image_size, max_image_pixels)]
            for modality in modalities:
                path = paired[modality][position]
                if path is None:
                    return f"no '{modality}' file beside it (expected {Path(paths[position]).stem}.{modality}.<ext>)"
                channels.append(_decode_gray(path, image_size, max_image_pixels)[..., None])
            return np.concatenate(channels, axis=2) if modalities else channels[0]
        except ValueError as exc:
            return str(exc)

    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(decode, range(len(paths)), chunksize=64)
        if progress and len(paths) > 2000:
            from tqdm import tqdm

            results = tqdm(results, total=len(paths), desc=f"decoding {root.name}", unit="img", file=sys.stderr)
        results = list(results)
    good = [i for i, r in enumerate(results) if not isinstance(r, str)]
    skipped = [(paths[i], r) for i, r in enumerate(results) if isinstance(r, str)]
    _report_skipped(root, skipped)
    if not good:
        raise DataError(
            f"data folder '{root}' holds {len(paths)} image file(s) but none could be read "
            f"(first: {skipped[0][0]}: {skipped[0][1]})."
        )
    kept_labels = label_tensor[good]
    counts = torch.bincount(kept_labels[kept_labels >= 0], minlength=len(classes)).tolist()
    empty = [name for name, count in zip(classes, counts) if count == 0]
    if empty:
        raise DataError(
            f"class folder(s) {', '.join(repr(e) for e in empty)} in '{root}' hold no readable image. "
            "Remove them, or add readable images to them."
        )
    return ImageSet(
        name=root.name,
        split=split,
        labels=kept_labels,
        classes=classes,
        images=torch.from_numpy(np.stack([results[i] for i in good])),
        paths=[paths[i] for i in good],
        image_size=image_size,
        skipped=[p for p, _ in skipped],
    )


class FolderStream(torch.utils.data.Dataset):
    """Per-file decoding for DataLoader workers: read and decode to a fixed size, never augment.

    Returns ``(image uint8 (S, S, 3), ok)``; a file that cannot be read gives ``ok=False`` and a
    black image, which the loader drops from its batch, so one bad file never stops an epoch.
    """

    def __init__(self, paths: list[str], image_size: int, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        self.paths = paths
        self.image_size = image_size
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, bool]:
        try:
            array = decode_to_array(self.paths[index], self.image_size, self.max_image_pixels)
            return torch.from_numpy(array), True
        except ValueError:
            return torch.zeros(self.image_size, self.image_size, 3, dtype=torch.uint8), False
