"""Which images a probe searches (the bank, or the probe's training set) and which it scores (the
queries), for training-time kNN monitoring and for ``selfsup eval``.

The rule is the same everywhere: the queries are images the bank does not hold. A built-in or a
file with a test split of its own uses it; a folder in the ImageFolder layout its ``val/`` or
``test/``; any other labelled source its fixed held-out fraction (:mod:`selfsup.data.splits`),
which is also kept out of pretraining. Separate evaluation data (``--val-data``, ``--test-data``)
is used whole, and images it shares with the bank (same file) leave the bank. Probing the bank's
own images (a self-probe, optimistic) happens only when asked for, by naming the same source for
both with nothing held out, and is announced with a warning.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from ..data import ImageSet, load_dataset
from ..data.packed import packed_splits
from ..data.splits import split_layout
from ..errors import DataError
from .config import TrainConfig


def same_source(a: str | None, b: str | None) -> bool:
    """Whether two ``--data`` values name the same source (paths compared after resolving)."""
    if a is None or b is None:
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return os.path.realpath(pa) == os.path.realpath(pb)
    return a == b


def has_own_split(source: str) -> bool:
    """Whether ``source`` has a held-out split of its own (built-ins, a test split in a .npz, the
    ImageFolder layout); otherwise it needs a held-out fraction."""
    path = Path(source).expanduser()
    if not path.exists():
        return True  # a built-in name (load_dataset reports any other)
    if path.is_dir():
        return split_layout(path) is not None
    if path.suffix == ".npz":
        import numpy as np

        from ..data.arrays import raw_layout

        splits = packed_splits(path)
        if not splits:
            with np.load(path, allow_pickle=False) as archive:
                splits = raw_layout(list(archive.files)) or []
        return bool({"test", "val"} & set(splits))
    return False


def training_val_fraction(data: str, val_data: str | None, val_fraction: float) -> float | None:
    """The held-out fraction the training source is split with: none when separate evaluation
    data is given (the whole source trains) or the source has its own test split."""
    if val_data is not None and not same_source(val_data, data):
        return None
    return val_fraction or None


def _warn(message: str) -> None:
    print(f"selfsup: {message}", file=sys.stderr)


def separate_bank(bank: ImageSet, queries: ImageSet, self_probe: bool) -> ImageSet:
    """``bank`` without the files that are also queries (compared by resolved path), unless the
    caller asked for a self-probe. Sets without file paths (arrays, built-ins) are left as they are."""
    if self_probe or not bank.paths or not queries.paths:
        return bank
    asked = {os.path.realpath(p) for p in queries.paths}
    shared = torch.tensor([os.path.realpath(p) in asked for p in bank.paths], dtype=torch.bool)
    if not bool(shared.any()):
        return bank
    if bool(shared.all()):
        raise DataError(
            f"every image of the bank ({bank.describe()}) is also a query ({queries.describe()}); a probe needs "
            "images to search that it is not scored on. Give other evaluation data, or a held-out fraction."
        )
    _warn(f"{int(shared.sum())} image(s) of {bank.origin or bank.name} are also queries; "
          "they are left out of the bank, so no query finds itself.")
    kept = bank.subset(torch.nonzero(~shared).flatten())
    kept.origin = f"{bank.origin or bank.name}, without the query images"
    return kept


def eval_datasets(
    config: TrainConfig, data: str | None = None, data_dir: str | None = None, image_size: int | None = None,
    test_subset: int | None = None, train_subset: int | None = None, test_data: str | None = None,
    val_fraction: float | None = None, bank: ImageSet | None = None,
) -> tuple[ImageSet, ImageSet]:
    """(bank, queries) of a run's probe: by default the run's data and the images it held out (or
    its ``val_data``, what the run is monitored on); ``data`` / ``test_data`` override them.
    Queries named by the caller (``test_data``) may be the bank's own images (a self-probe, with a
    warning). ``bank``: the training set already loaded (the trainer's)."""
    source = data or config.data
    if test_data is None and data is None and config.val_data is not None:
        test_data = config.val_data
    common = dict(data_dir=data_dir or config.data_dir, image_size=image_size, seed=config.seed)
    query_source = test_data or source
    separate = not same_source(query_source, source)
    split_by = None if separate else ((config.val_fraction if val_fraction is None else val_fraction) or None)
    self_probe = not separate and not split_by and not has_own_split(source)
    if self_probe and test_data is None:
        raise DataError(
            f"'{source}' has no images held out from the bank (val_fraction 0 and no split of its own). Give separate "
            "labelled evaluation data (--val-data for training, --test-data for `selfsup eval`), or a val_fraction "
            "> 0; to score the bank's own images anyway, name the same source as --test-data."
        )
    if bank is None:
        bank = load_dataset(source, "train", limit=train_subset, val_fraction=split_by, **common)
    queries = load_dataset(query_source, "test", limit=test_subset, val_fraction=split_by, **common)
    if not bank.labelled or not queries.labelled:
        which = source if not bank.labelled else query_source
        raise DataError(f"'{which}' has no labels to evaluate with; give a labelled source (class subfolders or labels).")
    if self_probe:
        _warn(f"self-probe: the queries are the bank's own images ({bank.describe()}); each finds itself, so the "
              "accuracy is optimistic. Hold images out (val_fraction) or give separate evaluation data for an honest figure.")
    return separate_bank(bank, queries, self_probe), queries


def monitor_sets(config: TrainConfig, train: ImageSet) -> tuple[ImageSet, ImageSet] | None:
    """(bank, queries) of the kNN monitor during training: the labelled training set and the
    images held out from it. None when the config asks for no monitor (``eval_every`` None) or
    there is nothing labelled to probe with (an unlabelled source, nothing held out)."""
    if config.eval_every is None or not train.labelled:
        return None
    try:
        return eval_datasets(config, image_size=train.image_size, test_subset=config.test_subset, bank=train)
    except DataError:
        if config.val_data:
            raise
        return None  # nothing held out (val_fraction 0), or a packed file without a test split
