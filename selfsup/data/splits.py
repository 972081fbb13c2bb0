"""Train and held-out splits of a user's own data, so that probes never score an image they
were given as a neighbour (or trained on).

Two conventions, in this order:

- **ImageFolder layout** (torchvision's ``ImageFolder`` per split, the layout most downloaded
  datasets ship in): a folder whose subfolders are ``train/`` and ``val/`` and/or ``test/``, with
  one subfolder per class below each. ``train`` is the training split; ``test`` (or ``val``) the
  held-out one. Class indices are those of ``train/``; a held-out class folder is matched by name.
- **A fixed held-out fraction**: a labelled source without a split of its own (a folder of class
  subfolders, a raw ``.npz`` with ``images`` + ``labels``, a packed file with only ``train``) keeps
  ``val_fraction`` of the images of every class apart (rounded, at least one image of each class
  with two or more; at least one left to train on), drawn once with :data:`SPLIT_SEED`. The seed
  does not depend on a run's seed, so runs of different seeds are scored on the same images.
  Unlabelled images always stay in the training split.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

SPLIT_SEED = 0
# Names of the split folders of the ImageFolder layout, and which one serves each requested split.
SPLIT_FOLDERS = ("train", "val", "test")
_HELDOUT_ORDER = {"test": ("test", "val"), "val": ("val", "test")}


def split_layout(root: str | Path) -> dict[str, Path] | None:
    """``{"train": root/train, "val": ..., "test": ...}`` (those present) when ``root`` follows the
    ImageFolder layout: its visible subfolders are ``train`` and at least one of ``val``/``test``,
    and nothing else. None otherwise (then its subfolders are classes)."""
    try:  # not a folder (or missing, or unreadable): OSError
        subdirs = {entry.name: Path(entry.path) for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")}
    except OSError:
        return None
    if "train" not in subdirs or not ({"val", "test"} & subdirs.keys()) or set(subdirs) - set(SPLIT_FOLDERS):
        return None
    return {name: subdirs[name] for name in SPLIT_FOLDERS if name in subdirs}


def serving_order(split: str) -> tuple[str, ...]:
    """The splits that can serve ``split``, preferred first: train itself; test or val, either
    standing for the other."""
    return ("train",) if split == "train" else _HELDOUT_ORDER[split]


def layout_folder(layout: dict[str, Path], split: str) -> Path:
    """The folder of ``layout`` that serves ``split`` (train, or test/val, either standing for the other)."""
    return layout[next(name for name in serving_order(split) if name in layout)]  # split_layout guarantees one


def heldout_split(labels: torch.Tensor, fraction: float, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, held-out indices), both sorted: ``fraction`` of every class held out
    (see the module docstring); unlabelled (-1) samples are all in the training part."""
    if not 0 <= fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    held = []
    for c in sorted(set(labels[labels >= 0].tolist())):
        members = torch.nonzero(labels == c).flatten()
        count = len(members)
        take = min(max(int(fraction * count + 0.5), 1), count - 1) if fraction > 0 and count >= 2 else 0
        # One permutation per class, drawn in class order from one generator: the split depends
        # only on the labels, the fraction and the seed.
        held.append(members[torch.randperm(count, generator=generator)[:take]])
    heldout = torch.sort(torch.cat(held)).values if held else torch.zeros(0, dtype=torch.long)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[heldout] = False
    return torch.nonzero(mask).flatten(), heldout
