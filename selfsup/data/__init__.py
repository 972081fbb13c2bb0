"""Data sources (CIFAR, folders, digits, packed files) and the on-device batch loader."""

from .folder import IMAGE_EXTENSIONS, load_folder, scan_folder
from .imageset import ImageSet, decode_to_array, open_image
from .loader import Batch, BatchLoader, epoch_permutation
from .packed import load_packed, write_packed
from .sources import BUILTIN, load_cifar, load_dataset, load_digits_set, search_dirs

__all__ = [
    "BUILTIN",
    "Batch",
    "BatchLoader",
    "IMAGE_EXTENSIONS",
    "ImageSet",
    "decode_to_array",
    "epoch_permutation",
    "load_cifar",
    "load_dataset",
    "load_digits_set",
    "load_folder",
    "load_packed",
    "open_image",
    "scan_folder",
    "search_dirs",
    "write_packed",
]
