"""A run's life on disk: its directory, held by one process (lock.py) until the run ends; the
config it trains with (``config.yaml``); its checkpoints (checkpoint.py: written atomically, the
newest one that loads taken on resume, damaged newer ones set aside); its metrics (logger.py);
and the stop signals (signals.py) that end it after a step, with a checkpoint.

Only rank 0 touches the directory; the other ranks receive its outcome by broadcast (no shared
filesystem needed, and every rank stops with the same message).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import safe_dump
from ..errors import ConfigError, NonFiniteLossError, SelfsupError
from . import checkpoint as ckpt
from . import distributed
from .config import TrainConfig
from .lock import RunLock
from .logger import MetricsLogger
from .signals import StopSignals

# Steps between the ranks' agreement on a stop signal (see Run.stop_requested): a fraction of a
# millisecond each time, and a stop comes within seconds, well inside torchrun's 30 s grace period.
STOP_SYNC_STEPS = 10


class Run:
    """The directory ``path`` of a run trained by ``world_size`` processes: :meth:`open` it, write
    checkpoints with :meth:`save`, log to :attr:`logger`, :meth:`close` it to release the lock."""

    def __init__(self, path: Path, is_main: bool, world_size: int) -> None:
        self.path, self.is_main, self.world_size = path, is_main, world_size
        self._lock: RunLock | None = None
        self.signals: StopSignals | None = None

    def _on_main(self, work: Callable[[], Any]) -> Any:
        """``work()`` on rank 0; its result, or the :class:`SelfsupError` it raised, on every rank."""
        result, failure = None, None
        if self.is_main:
            try:
                result = work()
            except SelfsupError as exc:
                failure = exc
        result, failure = distributed.broadcast_object((result, failure))
        if failure is not None:
            raise failure
        return result

    def _acquire(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = RunLock(self.path)
            self._lock.acquire()  # RunInUseError: the run is held by another process
        except OSError as exc:
            raise ConfigError(
                f"cannot write the run directory '{self.path}': {exc.strerror or exc}. "
                "Choose a writable --run-dir with free space."
            ) from None

    def open(self, config: TrainConfig, resume: bool, restore: Callable[[Path, dict[str, Any]], None],
             device: torch.device) -> None:
        """Create the directory and hold its lock until :meth:`close`; refuse one that holds a run
        unless ``resume``, and then ``restore(path, state)`` its newest checkpoint that loads; write
        ``config.yaml`` and open the metrics log. The lock is released again if anything fails."""
        self._on_main(self._acquire)
        try:
            exists = self._on_main(lambda: (self.path / "config.yaml").is_file())
            if exists and not resume:
                raise ConfigError(
                    f"run directory '{self.path}' already holds a run. Continue it with --resume, "
                    "or choose another --name."
                )
            if self.is_main:
                ckpt.remove_stale_temp_files(self.path)  # left by a process killed mid-write
            if resume and exists:
                # Read on rank 0 and broadcast: every rank restores the same checkpoint, which may
                # come from a run on any number of processes.
                location = device if self.world_size == 1 else torch.device("cpu")
                found = self._on_main(lambda: ckpt.latest_good_checkpoint(self.path, map_location=location, quarantine=True))
                if found is not None:
                    restore(*found)
                elif self.is_main:
                    print(f"selfsup: '{self.path}' has no checkpoint yet; starting it from step 0.", file=sys.stderr)
            elif resume and self.is_main:
                print(f"selfsup: nothing to resume in '{self.path}'; starting a new run there.", file=sys.stderr)
            if self.is_main:
                try:
                    ckpt.atomic_write_bytes(self.path / "config.yaml", safe_dump(config.to_dict()).encode())
                except OSError as exc:
                    raise ConfigError(f"cannot write '{self.path / 'config.yaml'}': {exc.strerror or exc}.") from None
        except BaseException:
            self.close()
            raise
        self.logger = MetricsLogger(self.path, enabled=self.is_main)

    def close(self) -> None:
        """Release the directory's lock."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    # -- checkpoints -----------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """The run's checkpoints, newest first."""
        return ckpt.list_checkpoints(self.path)

    def where_last(self, which: str = "last") -> str:
        """Where the newest checkpoint is, for a message: "the last checkpoint is ..."."""
        found = self.checkpoints()
        return f"the {which} checkpoint is {found[0]}" if found else "no checkpoint had been written yet"

    def save(self, state: dict[str, Any], step: int, keep: int) -> Path | None:
        """Write ``state`` as the checkpoint of ``step`` and keep the newest ``keep`` (rank 0; the
        other ranks pass the model only and check it alike, so that every rank stops on NaN). A model
        with NaN/Inf values is refused: it never replaces a good checkpoint. Returns the path."""
        model = state["model"]
        broken = [k for k, v in model.items() if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if broken:
            raise NonFiniteLossError(
                f"the parameters became NaN/Inf by step {step} ({', '.join(broken[:3])}); not saving them, "
                f"{self.where_last('last good')}. Lower the learning rate or enable grad_clip."
            )
        if not self.is_main:
            return None
        path = ckpt.save_checkpoint(ckpt.checkpoint_path(self.path, step), state)
        ckpt.prune_checkpoints(self.path, keep)
        return path

    # -- stop signals ----------------------------------------------------------------------------
    def catch_stop_signals(self) -> None:
        """Ctrl-C or SIGTERM (a cluster's pre-emption) asks for a checkpoint after the current step
        and a stop; a second one stops the process at once, even mid-step (the last checkpoint
        stays; see :mod:`selfsup.engine.signals`). Undone by ``signals.restore()``."""
        self.signals = StopSignals(self.world_size, self.is_main, self.where_last)
        self.signals.install()

    def stop_requested(self, step: int, device: torch.device) -> bool:
        """Whether to stop for a signal after ``step``. Processes may receive a signal at different
        steps; on several processes the ranks agree every :data:`STOP_SYNC_STEPS` steps (one small
        all-reduce), so that all stop after the same step and rank 0's checkpoint is every rank's state."""
        signals = self.signals
        if self.world_size == 1:
            return signals.signum is not None
        if step % STOP_SYNC_STEPS:
            return False
        signum = distributed.max_over_ranks(signals.signum or 0, device)
        if signum and signals.signum is None:
            signals.signum, signals.time = signum, time.monotonic()
        return bool(signum)
