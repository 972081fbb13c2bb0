"""Embeddings of a folder of images, nearest neighbours and near-duplicates.

``embed_dataset`` runs a loaded backbone (``selfsup.load_backbone``: a module with ``.preprocess``)
over a dataset in batches on its device; the files written are ``embeddings.npy`` (float32
``(N, D)``, the raw features), ``embeddings.csv`` (row, path, class) and ``embeddings.json`` (the
checkpoint, so a query image can be embedded the same way later). Similarity is the cosine of the
embeddings centred on their mean (see :func:`_center_of`), or the raw cosine on request.
"""

from __future__ import annotations

import csv
import json
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import BatchLoader, ImageSet
from ..errors import ConfigError, DataError


@torch.no_grad()
def embed_dataset(
    model: nn.Module,
    dataset: ImageSet,
    batch_size: int = 256,
    progress: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """``model(model.preprocess(images))`` over ``dataset`` in order: float32 ``(N, D)``.

    Batches are index lookups into the device-resident uint8 images (or streamed by decoding
    workers for large folders), preprocessed on the device; one progress bar on stderr.
    """
    preprocess = model.preprocess
    device = preprocess.device
    loader = BatchLoader(dataset, min(batch_size, len(dataset)), device, shuffle=False, drop_last=False)
    context = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    from tqdm import tqdm

    bar = tqdm(total=len(dataset), unit="img", desc="embedding", file=sys.stderr, dynamic_ncols=True,
               disable=not progress)
    parts, indices = [], []
    with context:
        for batch in loader.epoch(0):
            parts.append(model(preprocess(batch.images)).float().cpu())
            indices.append(batch.index.cpu())
            bar.update(len(batch.index))
    bar.close()
    # Rows are placed by index: those of unreadable files a streamed loader dropped stay NaN, aligned.
    features = torch.full((len(dataset), parts[0].shape[1]), float("nan"))
    features[torch.cat(indices)] = torch.cat(parts)
    return features.numpy().astype(np.float32)


def sidecar_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """(embeddings.npy, its .csv of file names, its .json of provenance)."""
    out = Path(out)
    if out.suffix != ".npy":
        raise ConfigError(f"embeddings are written to a .npy file, got '{out}'.")
    return out, out.with_suffix(".csv"), out.with_suffix(".json")


def write_embeddings(out: str | Path, features: np.ndarray, dataset: ImageSet, info: dict[str, Any]) -> Path:
    npy, table, meta = sidecar_paths(out)
    npy.parent.mkdir(parents=True, exist_ok=True)
    np.save(npy, features)
    paths = dataset.paths or [f"{dataset.name}[{i}]" for i in range(len(dataset))]
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "path", "class"])
        for i, (path, label) in enumerate(zip(paths, dataset.labels.tolist())):
            writer.writerow([i, path, dataset.classes[label] if label >= 0 else ""])
    meta.write_text(json.dumps({**info, "count": len(dataset), "dim": int(features.shape[1])}, indent=2))
    return npy


def read_embeddings(path: str | Path) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """(features, file names, provenance) written by :func:`write_embeddings`."""
    npy, table, meta = sidecar_paths(path)
    if not npy.is_file():
        raise DataError(f"embeddings file '{npy}' does not exist; write one with `selfsup embed`.")
    features = np.load(npy, allow_pickle=False)
    names = [f"row {i}" for i in range(len(features))]
    if table.is_file():
        with open(table, newline="") as handle:
            names = [row["path"] for row in csv.DictReader(handle)]
    info = json.loads(meta.read_text()) if meta.is_file() else {}
    return features, names, info


def _normalized(features: np.ndarray | torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    x = torch.nan_to_num(torch.as_tensor(features).float())
    return F.normalize(x - mean if mean is not None else x, dim=-1)


def _center_of(features: np.ndarray, center: bool) -> torch.Tensor | None:
    """The mean embedding of the folder, or None for raw cosine similarity.

    Backbone features come after a ReLU and an average pool, so they all lie in the positive
    orthant and raw cosines between unrelated images crowd near 1 (0.99 and up for a briefly trained
    net). Centring on the folder's mean spreads them, so a threshold such as 0.95 separates
    near-duplicates from merely similar images (measured in tests/test_embed.py)."""
    return torch.nan_to_num(torch.as_tensor(features).float()).mean(dim=0) if center else None


def nearest(
    features: np.ndarray, query: np.ndarray | torch.Tensor, k: int = 5, center: bool = True
) -> list[tuple[int, float]]:
    """The ``k`` rows most cosine-similar to ``query`` ``(D,)`` (both centred on the mean row
    when ``center``), as (row, similarity), best first."""
    mean = _center_of(features, center)
    bank = _normalized(features, mean)
    q = _normalized(torch.as_tensor(query).float().reshape(1, -1), mean)
    if q.shape[1] != bank.shape[1]:
        raise ConfigError(f"the query has {q.shape[1]} dimensions but the embeddings have {bank.shape[1]}.")
    sim = (bank @ q.T).flatten()
    top = sim.topk(min(k, len(sim)))
    return [(int(i), float(s)) for s, i in zip(top.values, top.indices)]


def near_duplicates(
    features: np.ndarray, threshold: float = 0.95, center: bool = True, chunk: int = 2048
) -> list[tuple[int, int, float]]:
    """Every pair (i < j) with cosine similarity >= ``threshold`` (of the centred embeddings when
    ``center``), most similar first.

    Computed block by block (``chunk`` rows against all rows), so memory stays ``chunk x N`` for
    any folder size."""
    if not -1 <= threshold <= 1:
        raise ConfigError(f"--threshold is a cosine similarity in [-1, 1], got {threshold}.")
    bank = _normalized(features, _center_of(features, center))
    pairs: list[tuple[int, int, float]] = []
    n = bank.shape[0]
    for start in range(0, n, chunk):
        block = bank[start : start + chunk] @ bank.T  # (c, N)
        rows = torch.arange(start, min(start + chunk, n))[:, None]
        upper = torch.arange(n)[None, :] > rows  # each pair once, never an image with itself
        i, j = torch.nonzero((block >= threshold) & upper, as_tuple=True)
        pairs += [(int(a + start), int(b), float(block[a, b])) for a, b in zip(i, j)]
    return sorted(pairs, key=lambda p: -p[2])
