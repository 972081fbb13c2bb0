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
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, closest
from .folder import load_folder
from .imageset import DEFAULT_MAX_IMAGE_PIXELS, ImageSet
from .packed import load_packed, packed_splits

BUILTIN = ("digits", "cifar10", "cifar100")
_CIFAR = {
    "cifar10": {"folder": "cifar-10-batches-py", "packed": "cifar10.npz", "tv": "CIFAR10"},
    "cifar100": {"folder": "cifar-100-python", "packed": "cifar100.npz", "tv": "CIFAR100"},
}


def search_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for built-in datasets, in order."""
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir))
    if os.environ.get("SELFSUP_DATA"):
        dirs.append(Path(os.environ["SELFSUP_DATA"]))
    dirs.append(Path(os.environ.get("SELFSUP_CACHE", Path.home() / ".cache" / "selfsup")))
    return dirs


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


def _download_cifar(name: str, target: Path) -> Path:
    import torchvision

    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        target.mkdir(parents=True, exist_ok=True)
        getattr(torchvision.datasets, _CIFAR[name]["tv"])(root=str(target), train=True, download=True)
    finally:
        socket.setdefaulttimeout(old_timeout)
    return target / _CIFAR[name]["folder"]


def _subset_indices(count: int, limit: int | None, seed: int) -> np.ndarray | None:
    if limit is None or limit >= count:
        return None
    generator = torch.Generator().manual_seed(seed)
    return np.sort(torch.randperm(count, generator=generator)[:limit].numpy())


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
            dataset = _load_cifar_folder(folder, name, split)
            indices = _subset_indices(len(dataset), limit, seed)
            return dataset if indices is None else dataset.subset(indices)
        if packed.is_file():
            with np.load(packed, allow_pickle=False) as archive:
                count = len(archive[f"{split}_labels"]) if f"{split}_labels" in archive.files else 0
            return load_packed(packed, split, indices=_subset_indices(count, limit, seed), name=name)
    offline = os.environ.get("SELFSUP_OFFLINE", "") not in ("", "0")
    reason = "SELFSUP_OFFLINE is set" if offline else ""
    if not offline:
        target = search_dirs(data_dir)[0]
        try:
            _download_cifar(name, target)
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
    test_idx = []
    for c in range(10):
        members = torch.nonzero(target == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        test_idx.append(members[: len(members) // 5])
    test_mask = torch.zeros(len(target), dtype=torch.bool)
    test_mask[torch.cat(test_idx)] = True
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
) -> ImageSet:
    """Load one split of a source: a built-in name, a folder, or a packed ``.npz`` file.

    ``limit`` keeps a fixed random subset of that many images (drawn with ``seed``; for packed
    files only those are decoded). ``image_size`` is the stored size of folder images (shorter
    side resized, then centre-cropped) and defaults to 64 for folders.
    """
    if split not in ("train", "test", "val"):
        raise DataError(f"unknown split '{split}'; use train, test or val.")
    if source == "digits":
        dataset = load_digits_set(split, image_size or 32)
    elif source in _CIFAR:
        dataset = load_cifar(source, split, data_dir, limit, seed)
        limit = None
    else:
        path = Path(source).expanduser()
        if path.suffix == ".npz":
            if not path.is_file():
                raise DataError(f"packed file '{path}' does not exist.")
            splits = packed_splits(path)
            if split != "train" and split not in splits:
                alternatives = [s for s in ("test", "val") if s in splits]
                if not alternatives:
                    raise DataError(f"packed file '{path}' has no test or val split to evaluate on.")
                split = alternatives[0]
            with np.load(path, allow_pickle=False) as archive:
                count = len(archive[f"{split}_labels"]) if f"{split}_labels" in archive.files else 0
            dataset = load_packed(path, split, _subset_indices(count, limit, seed), image_size=image_size)
            limit = None
        elif path.exists():
            dataset = load_folder(
                path, image_size or 64, split, max_memory_bytes=max_memory_bytes, max_image_pixels=max_image_pixels
            )
        elif "/" in source or "\\" in source or "." in source:
            raise DataError(f"data path '{source}' does not exist.")
        else:
            raise DataError(
                f"unknown data source '{source}'.{closest(source, BUILTIN)} "
                f"Use one of {', '.join(BUILTIN)}, a folder of images, or a packed .npz file."
            )
    indices = _subset_indices(len(dataset), limit, seed)
    return dataset if indices is None else dataset.subset(indices)
