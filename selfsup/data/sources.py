"""Data sources by name: ``cifar10``, ``cifar100``, ``digits``, a folder of images, or a packed ``.npz``.

CIFAR is searched, in this order, in ``--data-dir``, ``$SELFSUP_DATA`` and ``~/.cache/selfsup``,
as the official python folder torchvision downloads (``cifar-10-batches-py``,
``cifar-100-python``) or as a packed file (``cifar10.npz``, ``cifar100.npz``; see
:mod:`selfsup.data.packed`). When found nowhere it is downloaded through torchvision into the
first of those folders, unless ``SELFSUP_OFFLINE=1`` is set or the machine is offline, in which
case one error lists the paths searched and how to provide the data.
"""

from __future__ import annotations

import os
import pickle
import socket
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DataError, closest
from .arrays import load_raw, raw_layout
from .folder import load_folder, scan_folder
from .imageset import DEFAULT_MAX_IMAGE_PIXELS, ImageSet
from .packed import load_packed, packed_splits
from .splits import SPLIT_SEED, heldout_split, layout_folder, serving_order, split_layout

BUILTIN = ("digits", "cifar10", "cifar100")
_CIFAR = {
    "cifar10": {"folder": "cifar-10-batches-py", "packed": "cifar10.npz", "tv": "CIFAR10"},
    "cifar100": {"folder": "cifar-100-python", "packed": "cifar100.npz", "tv": "CIFAR100"},
}


def search_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for built-in datasets, in order."""
    given = [Path(d) for d in (data_dir, os.environ.get("SELFSUP_DATA")) if d]
    return given + [Path(os.environ.get("SELFSUP_CACHE", Path.home() / ".cache" / "selfsup"))]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The official CIFAR files are pickles; allow only the numpy array types they contain, so a
    tampered file cannot run code when it is read."""

    # What numpy arrays pickle to: _reconstruct (protocols 0-4, the official Python 2 files),
    # _frombuffer (protocol 5), and _codecs.encode for raw bytes written by Python 3 at protocol <= 2.
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return _NumpyOnlyUnpickler(handle, encoding="latin1").load()
    except Exception as exc:
        raise DataError(f"cannot read CIFAR file '{path}': {type(exc).__name__}: {exc}") from None


def _load_cifar_folder(folder: Path, name: str, split: str) -> ImageSet:
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta = _read_pickle(folder / "batches.meta")
        classes, label_key = list(meta["label_names"]), "labels"
    else:
        files = ["train" if split == "train" else "test"]
        meta = _read_pickle(folder / "meta")
        classes, label_key = list(meta["fine_label_names"]), "fine_labels"
    data, labels = [], []
    for file in files:
        entry = _read_pickle(folder / file)
        data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry[label_key])
    images = torch.from_numpy(np.concatenate(data).transpose(0, 2, 3, 1).copy())
    return ImageSet(name=name, split=split, labels=torch.tensor(labels, dtype=torch.long), classes=classes, images=images)


def _download_cifar(name: str, target: Path) -> None:
    import torchvision

    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        target.mkdir(parents=True, exist_ok=True)
        getattr(torchvision.datasets, _CIFAR[name]["tv"])(root=str(target), train=True, download=True)
    finally:
        socket.setdefaulttimeout(old_timeout)


def _subset_indices(count: int, limit: int | None, seed: int) -> np.ndarray | None:
    if limit is None or limit >= count:
        return None
    generator = torch.Generator().manual_seed(seed)
    return np.sort(torch.randperm(count, generator=generator)[:limit].numpy())


def _limited(dataset: ImageSet, limit: int | None, seed: int) -> ImageSet:
    """A fixed random subset of ``limit`` images of ``dataset`` (all of it without a limit)."""
    indices = _subset_indices(len(dataset), limit, seed)
    return dataset if indices is None else dataset.subset(indices)


def _load_packed_limited(path: Path, split: str, limit: int | None, seed: int, **kwargs: object) -> ImageSet:
    """A packed split, decoding only the ``limit`` images :func:`_limited` would keep."""
    with np.load(path, allow_pickle=False) as archive:
        count = len(archive[f"{split}_labels"]) if f"{split}_labels" in archive.files else 0
    return load_packed(path, split, _subset_indices(count, limit, seed), **kwargs)


def load_cifar(
    name: str, split: str = "train", data_dir: str | Path | None = None, limit: int | None = None, seed: int = 0
) -> ImageSet:
    spec = _CIFAR[name]
    split = "test" if split == "val" else split  # CIFAR has no validation split; its test split serves
    searched = []
    for directory in search_dirs(data_dir):
        folder, packed = directory / spec["folder"], directory / spec["packed"]
        searched += [str(folder), str(packed)]
        if folder.is_dir():
            return _limited(_load_cifar_folder(folder, name, split), limit, seed)
        if packed.is_file():
            return _load_packed_limited(packed, split, limit, seed, name=name)
    reason = "SELFSUP_OFFLINE is set"
    if os.environ.get("SELFSUP_OFFLINE", "") in ("", "0"):
        try:
            _download_cifar(name, search_dirs(data_dir)[0])
            return load_cifar(name, split, data_dir, limit, seed)
        except Exception as exc:  # offline, DNS failure, disk full...
            reason = f"download failed: {type(exc).__name__}: {exc}"
    raise DataError(
        f"{name} was not found and could not be downloaded ({reason}).\nSearched:\n  "
        + "\n  ".join(searched)
        + f"\nProvide it by placing the official '{spec['folder']}' folder or a packed '{spec['packed']}' "
        "in one of those folders (or pass --data-dir DIR, or set SELFSUP_DATA=DIR), or run once with internet access."
    )


def load_digits_set(split: str = "train", image_size: int = 32) -> ImageSet:
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, ten classes), upscaled.

    Shipped inside scikit-learn, so it works on a fresh machine with no data and no internet.
    The split is fixed: a class-stratified 80/20 permutation drawn with seed 0.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)  # (N, 8, 8) in [0, 1]
    target = torch.from_numpy(bunch.target.astype(np.int64))
    generator = torch.Generator().manual_seed(0)
    test_mask = torch.zeros(len(target), dtype=torch.bool)
    for c in range(10):
        members = torch.nonzero(target == c).flatten()
        test_mask[members[torch.randperm(len(members), generator=generator)][: len(members) // 5]] = True
    mask = test_mask if split != "train" else ~test_mask
    # Dark ink on white paper, as a scan looks; bilinear upscaling keeps the strokes smooth.
    ink = torch.nn.functional.interpolate(pixels[mask][:, None], size=image_size, mode="bilinear", align_corners=False)
    images = ((1.0 - ink.clamp(0, 1)) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    return ImageSet(
        name="digits",
        split="train" if split == "train" else "test",
        labels=target[mask].clone(),
        classes=[str(d) for d in range(10)],
        images=images.permute(0, 2, 3, 1).contiguous(),
    )


def load_dataset(
    source: str,
    split: str = "train",
    data_dir: str | Path | None = None,
    image_size: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    max_memory_bytes: int = 8 << 30,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    val_fraction: float | None = None,
) -> ImageSet:
    """Load one split of a source: a built-in name, a folder, or a ``.npz`` file (packed or raw arrays).

    ``limit`` keeps a fixed random subset of that many images (drawn with ``seed``; for packed
    files only those are decoded). ``image_size`` is the stored size of folder images (shorter
    side resized, then centre-cropped) and defaults to 64 for folders.

    A folder in the ImageFolder layout (``train/`` + ``val/`` or ``test/``) gives its split
    folders. Any other labelled source without a test split of its own (a folder of class
    subfolders, a raw ``.npz`` with one ``images`` array, a packed file with only ``train``) is
    split by ``val_fraction`` (:mod:`selfsup.data.splits`): ``train`` is the rest, ``test``/``val``
    the held-out images of every class. ``val_fraction`` None or 0: every split of such a source
    is all of it.
    """
    if split not in ("train", "test", "val"):
        raise DataError(f"unknown split '{split}'; use train, test or val.")
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    if source == "digits":
        dataset = load_digits_set(split, image_size or 32)
        dataset.origin = f"digits ({dataset.split} split)"
    elif source in _CIFAR:
        dataset = load_cifar(source, split, data_dir, limit, seed)
        dataset.origin = f"{source} ({'train' if split == 'train' else 'test'} split)"
        limit = None
    else:
        path = Path(source).expanduser()
        if path.suffix == ".npz":
            if not path.is_file():
                raise DataError(f"packed file '{path}' does not exist.")
            dataset, limit = _load_npz(path, source, split, image_size, limit, seed, val_fraction)
        elif path.exists():
            limits = dict(max_memory_bytes=max_memory_bytes, max_image_pixels=max_image_pixels)
            load = partial(load_folder, image_size=image_size or 64, split=split, **limits)
            layout = split_layout(path)
            if layout is not None:
                dataset = _load_layout(path, layout, split, load)
            else:
                settings = (image_size or 64, max_memory_bytes, max_image_pixels)
                dataset = _split_of(path, settings, source, split, val_fraction, partial(load, path))
        elif "/" in source or "\\" in source or "." in source:
            raise DataError(f"data path '{source}' does not exist.")
        else:
            raise DataError(
                f"unknown data source '{source}'.{closest(source, BUILTIN)} "
                f"Use one of {', '.join(BUILTIN)}, a folder of images, or a packed .npz file."
            )
    return _limited(dataset, limit, seed)


# The other half of the last source split by a held-out fraction: the trainer and the probes ask
# for "train" and then "test" (or the reverse), and this saves decoding the folder twice. Popped
# when asked for, so nothing stays cached beyond that pair.
_PENDING: dict[tuple, ImageSet] = {}


def _split_of(
    path: Path, settings: tuple, source: str, split: str, fraction: float | None, load_whole: Callable[[], ImageSet]
) -> ImageSet:
    """``split`` of a source that has no split of its own: all of it (no ``fraction``, or no
    labels), or its training / held-out part (:func:`selfsup.data.splits.heldout_split`).
    ``path`` and the loading ``settings`` identify the whole (with the file's modification time)."""
    if not fraction:
        dataset = load_whole()
        dataset.origin = dataset.origin or f"{source} (all images)"
        return dataset
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = 0
    key = (str(path.resolve()), *settings, mtime)
    part = "train" if split == "train" else "heldout"
    pending = _PENDING.pop((key, fraction, part), None)
    if pending is not None:
        return pending
    whole = load_whole()
    if not whole.labelled:
        whole.origin = f"{source} (all images; unlabelled, nothing held out)"
        return whole
    train_idx, held_idx = heldout_split(whole.labels, fraction)
    if len(held_idx) == 0:
        raise DataError(
            f"'{source}' has no class with two or more labelled images, so nothing can be held out for evaluation. "
            "Add images, or give separate evaluation data (--val-data / --test-data)."
        )
    parts = {"train": whole.subset(train_idx), "heldout": whole.subset(held_idx)}
    percent = f"{100 * fraction:g}%"
    parts["train"].origin = f"{source} (training part: all but the held-out {percent} of each class)"
    parts["heldout"].origin = f"{source} (held-out {percent} of each class, split seed {SPLIT_SEED})"
    parts["train"].split, parts["heldout"].split = "train", "test"
    other = "heldout" if part == "train" else "train"
    _PENDING.clear()
    _PENDING[(key, fraction, other)] = parts[other]
    return parts[part]


def _load_layout(root: Path, layout: dict[str, Path], split: str, load: Callable[[Path], ImageSet]) -> ImageSet:
    """A split folder of the ImageFolder layout (read by ``load``), with the class indices of ``train/``."""
    folder = layout_folder(layout, split)
    dataset = load(folder)
    dataset.name, dataset.origin = root.name, str(folder)
    if folder == layout["train"]:
        return dataset
    train_classes = scan_folder(layout["train"])[2]
    unknown = [c for c in dataset.classes if c not in train_classes]
    if unknown:
        raise DataError(
            f"class folder(s) {', '.join(repr(c) for c in unknown)} of '{folder}' are not classes of "
            f"'{layout['train']}' ({', '.join(train_classes) or 'none'}); held-out classes must be training classes."
        )
    index = torch.tensor([train_classes.index(c) for c in dataset.classes] + [-1], dtype=torch.long)
    dataset.labels = index[dataset.labels]  # label -1 picks the appended -1
    dataset.classes = list(train_classes)
    return dataset


def _load_npz(
    path: Path, source: str, split: str, image_size: int | None, limit: int | None, seed: int, fraction: float | None
) -> tuple[ImageSet, int | None]:
    """(the split of a packed or raw-array .npz, the ``limit`` still to apply)."""
    splits = packed_splits(path)
    raw = None
    if not splits:
        with np.load(path, allow_pickle=False) as archive:
            raw = raw_layout(archive.files)
    if raw is not None and not {"test", "val"} & set(raw):  # one ``images`` array, or ``train_images`` only
        whole = partial(load_raw, path, raw[0], image_size=image_size)
        return _split_of(path, (raw[0], image_size), source, split, fraction, whole), limit
    if splits == ["train"] and fraction:
        whole = partial(load_packed, path, "train", image_size=image_size)
        return _split_of(path, ("train", image_size), source, split, fraction, whole), limit
    # Otherwise the file's own split: test and val stand for each other.
    order = serving_order(split)
    which = next((name for name in order if name in (raw or splits)), None)
    if raw is not None:
        if which is None:
            held = ", ".join(f"{s}_images" for s in raw)
            raise DataError(f"'{path}' has no {' or '.join(order)} images (it holds: {held}).")
        dataset = load_raw(path, which, image_size=image_size)
    else:
        if which is None and split != "train":
            raise DataError(f"packed file '{path}' has no test or val split to evaluate on.")
        which = which or split  # no train split: load_packed says which splits the file holds
        dataset, limit = _load_packed_limited(path, which, limit, seed, image_size=image_size), None
    dataset.origin = f"{path} ({which} split)"
    return dataset, limit
