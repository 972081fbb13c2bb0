"""Checkpoints: written atomically, read without executing code.

A checkpoint is a ``torch.save`` archive of tensors and plain values only, so it loads with
``torch.load(weights_only=True)``: a crafted pickle cannot run code. It is written to a temporary
file in the same folder, flushed to disk, then renamed over the final name, so a crash mid-write
never leaves a half-written file under a name that resume would pick. Each file also records a
SHA-256 of its payload beside it (``.sha256``), so silent corruption is detected too.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import CheckpointError

FORMAT = "selfsup-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step-(\d{9})\.pt$")
TMP_MARK = ".tmp-"  # temporary files are ".<name>.tmp-<pid>": never matched by _NAME
_TMP = re.compile(r"^\..+\.tmp-\d+$")
QUARANTINE_SUFFIX = ".damaged"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step-{step:09d}.pt"


def _digest(path: Path) -> Path:
    """The ``.sha256`` file beside a checkpoint."""
    return path.with_name(path.name + ".sha256")


def _fsync_dir(directory: Path) -> None:
    with suppress(OSError):  # not every filesystem can sync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, payload: bytes, before_replace: Callable[[], None] | None = None) -> None:
    """Write ``payload`` to ``path`` via a temporary file and rename; the old file stays intact
    if anything fails (disk full, permissions, a kill) before the rename. ``before_replace`` runs
    once the new content is safely on disk, just before the rename."""
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Save ``state`` (tensors and plain values) atomically with a checksum beside it."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    payload = buffer.getvalue()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = _digest(path)
        # An older file of the same name (a step replayed after a resume) must not keep its old
        # checksum beside the new content: drop it first. A kill between the two renames leaves a
        # complete checkpoint without checksum, which still loads.
        atomic_write_bytes(path, payload, before_replace=lambda: digest.unlink(missing_ok=True))
        atomic_write_bytes(digest, hashlib.sha256(payload).hexdigest().encode())
    except OSError as exc:
        raise CheckpointError(
            f"could not write checkpoint '{path}': {exc.strerror or exc}. The previous checkpoint is intact; "
            "free disk space or fix the folder's permissions, then resume."
        ) from None
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``), verifying its checksum when present."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist.")
    payload = path.read_bytes()
    digest_file = _digest(path)
    if digest_file.is_file() and hashlib.sha256(payload).hexdigest() != digest_file.read_text().strip():
        raise CheckpointError(f"checkpoint '{path}' is corrupted (its SHA-256 does not match '{digest_file.name}').")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"refusing to load '{path}': it contains Python objects that would run code when unpickled "
                f"({first[:200]}). Only tensor checkpoints are loaded."
            ) from None
        raise CheckpointError(f"checkpoint '{path}' cannot be read (truncated or corrupted?): {first[:200]}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' is not a selfsup checkpoint (it holds a {type(state).__name__}).")
    return state


def checkpoint_step(path: str | Path) -> int | None:
    """The step in a checkpoint's file name (None for other files)."""
    found = _NAME.match(Path(path).name)
    return int(found.group(1)) if found else None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoints, newest (highest step) first."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name) and not p.is_dir()]
    return sorted(found, key=checkpoint_step, reverse=True)


def latest_good_checkpoint(
    run_dir: str | Path, map_location: str | torch.device = "cpu", quarantine: bool = False
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; a damaged newer one is reported and skipped.

    With ``quarantine`` (the caller holds the run's lock) a damaged file is renamed to
    ``<name>.damaged``, kept for inspection but never again taken for a checkpoint: otherwise it
    would count among the newest ones that pruning keeps, and could push out the good ones.
    Raises :class:`CheckpointError` when checkpoints exist but none loads: resuming from scratch
    then would silently throw the run away.
    """
    damaged: list[tuple[Path, str]] = []  # the newer checkpoints that do not load, and why
    for path in list_checkpoints(run_dir):
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as exc:
            damaged.append((path, str(exc)))
            print(f"selfsup: {exc} Falling back to the previous checkpoint.", file=sys.stderr)
            continue
        if quarantine:  # only once a good one is found: with none, nothing is moved
            for newer, _ in damaged:
                for victim in (newer, _digest(newer)):
                    with suppress(OSError):
                        victim.rename(victim.with_name(victim.name + QUARANTINE_SUFFIX))
                print(f"selfsup: renamed the damaged {newer.name} to {newer.name}{QUARANTINE_SUFFIX}.", file=sys.stderr)
        return path, state
    if damaged:
        raise CheckpointError(
            f"none of the {len(damaged)} checkpoint(s) in '{checkpoint_dir(run_dir)}' can be loaded "
            f"(newest: {damaged[0][1]}). Restore a good copy there, or start a new run under another --name."
        )
    return None


def remove_stale_temp_files(run_dir: str | Path) -> None:
    """Delete temporary files left by a process killed mid-write (only while holding the run's
    lock: then no live process is writing them)."""
    for directory in (Path(run_dir), checkpoint_dir(run_dir)):
        for path in directory.iterdir() if directory.is_dir() else ():
            if _TMP.match(path.name) and path.is_file():
                with suppress(OSError):
                    path.unlink()


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    for path in list_checkpoints(run_dir)[keep:]:
        for victim in (path, _digest(path)):
            with suppress(OSError):
                victim.unlink()


def resolve_checkpoint(path_or_run: str | Path) -> Path:
    """A checkpoint file, or a run directory (its newest checkpoint)."""
    path = Path(path_or_run)
    if path.is_file():
        return path
    if path.is_dir():
        if found := list_checkpoints(path):
            return found[0]
        raise CheckpointError(f"run '{path}' has no checkpoint yet (looked in {checkpoint_dir(path)}).")
    raise CheckpointError(f"'{path}' is neither a checkpoint file nor a run directory.")


def rng_states(device: torch.device, augment: torch.Generator) -> dict[str, Any]:
    """Every RNG state a run draws from (torch, CUDA, the augmentation generator, NumPy) as
    tensors and plain values: NumPy's state tuple would not load with ``weights_only``."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    rng = {
        "torch": torch.get_rng_state(),
        "augment": augment.get_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
    }
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def set_rng_states(rng: dict[str, Any], device: torch.device, augment: torch.Generator) -> None:
    """Put back the states :func:`rng_states` saved."""
    rng = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in rng.items()}
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)
    augment.set_state(rng["augment"])
    state = rng["numpy"]
    keys = state["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["pos"], state["has_gauss"], state["cached"]))
