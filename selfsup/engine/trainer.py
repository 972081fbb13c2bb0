"""The trainer: a config in, a trained run out.

``Trainer(config)`` builds the run's parts (build.py: method, recipe, optimizer, schedules; the
data and the kNN monitor's held-out images), opens its directory (run.py: lock, resume, config),
and ``fit`` runs the loop (loop.py: the step and the epoch) to the end, where the final kNN, the
last checkpoint and ``summary.json`` are written.
"""

from __future__ import annotations

import errno
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..data import BatchLoader
from ..errors import SelfsupError
from ..nn import get_rank, get_world_size
from . import checkpoint as ckpt
from . import distributed
from .build import build_method, build_optimizer_for, build_recipe, build_schedules, check_batch_size, load_training_set
from .config import TrainConfig
from .estimate import check_views_memory, estimate_run, fit_defaults
from .hardware import choose_compute, configure_cpu_threads, pick_device
from .heldout import monitor_sets
from .init import apply_init, init_note
from .loop import Loop, OnlineProbe, RunState
from .run import Run

# Write failures that are the machine's, not a bug: disk full, quota, file too large, read-only, denied.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


class Trainer(Loop):
    """Build everything from a :class:`TrainConfig` and run the loop (``fit``)."""

    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        config, defaults_note = fit_defaults(config)  # backbone, image size, batch: the machine's where unset
        self.config = config = config.resolve()
        # Under torchrun: join the process group; each process takes the GPU of its local rank.
        self.device = device = distributed.setup(pick_device(config.device))
        self.rank, self.world_size = get_rank(), get_world_size()
        self.is_main = self.rank == 0
        if device.type == "cpu":
            configure_cpu_threads()
        self.compute = choose_compute(config.precision, config.channels_last, device)
        if self.is_main:
            notes = filter(None, (defaults_note, config.init and init_note(config.init)))
            print(f"selfsup: computing in {self.compute.reason}", *notes, sep="\n", file=sys.stderr)
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = not config.deterministic
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        self.train_set = load_training_set(config)
        check_batch_size(config.batch_size, len(self.train_set))
        self.image_size = int(self.train_set.image_size or 32)
        self.eval_sets = monitor_sets(config, self.train_set)

        method = build_method(config, self.image_size).to(device)
        apply_init(method, config.init)  # continued pretraining: the backbone (and its EMA targets) from init
        method.bind_dataset(len(self.train_set))  # per-sample memories, sized before any restore
        # BN over the global batch where the method's paper uses it (or the config says so); the
        # other BN layers normalize per process and their running statistics are averaged.
        sync_bn = config.sync_bn if config.sync_bn is not None else method.sync_batchnorm
        if self.world_size > 1 and sync_bn:
            method = distributed.convert_sync_batchnorm(method, device)
        self.local_bns = distributed.local_batchnorms(method) if self.world_size > 1 else []
        self.method = method.to(memory_format=torch.channels_last) if self.compute.channels_last else method
        self.recipe = build_recipe(config, self.method, self.image_size)
        check_views_memory(self.recipe, config.batch_size // self.world_size, device)

        self.loader = BatchLoader(
            self.train_set, config.batch_size, device, seed=config.seed,
            rank=self.rank, world_size=self.world_size, num_workers=config.num_workers,
        )
        self.steps_per_epoch = len(self.loader)
        # Optimizer and per-step schedules: engine/build.py (what `selfsup train --dry-run` shows).
        self.optimizer = build_optimizer_for(config, self.method)
        schedules = build_schedules(config, self.steps_per_epoch)
        self.total_steps, self.lr_schedule, self.wd_schedule = schedules.total_steps, schedules.lr, schedules.weight_decay
        self.augment_generator = torch.Generator(device=device).manual_seed(config.seed + 1)
        self.online_probe = (
            OnlineProbe(self.method.feature_dim, self.train_set.num_classes, device, synchronized=self.world_size > 1)
            if config.online_probe and self.train_set.labelled else None
        )

        # The default name has the time in it: rank 0's, so that every rank names the same run.
        self.run_dir = Path(config.run_dir) / (config.name or distributed.broadcast_object(_default_name(config)))
        self.state = RunState()
        self.run = Run(self.run_dir, self.is_main, self.world_size)
        self.run.open(config, resume, self.restore, device)
        try:
            # DDP after any restore: it starts every rank from rank 0's parameters and buffers.
            model = distributed.wrap(self.method, device) if self.world_size > 1 else self.method
        except BaseException:
            self.close()
            raise
        self.forward = torch.compile(model) if config.compile else model

    def close(self) -> None:
        """Release the run directory's lock (:meth:`fit` does this when it ends)."""
        self.run.close()

    def fit(self) -> dict[str, Any]:
        """Train to the end and return the summary. SIGINT/SIGTERM save a checkpoint after the
        current step and raise :class:`TrainingInterrupted`; the run directory is released
        whatever happens."""
        self.run.catch_stop_signals()
        try:
            return self._fit()
        except RuntimeError as exc:  # torch.OutOfMemoryError (CUDA) or the CPU allocator's error
            if self.world_size > 1 and distributed.is_communication_error(exc):
                last = self.run.checkpoints() if self.is_main else []
                raise SelfsupError(
                    f"process {self.rank} of {self.world_size} lost contact with the others at step {self.state.step} "
                    f"({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__}): another "
                    "process has stopped (its own error, or the launcher's report, says why). "
                    + (f"The last checkpoint is {last[0]}. " if last else "")
                    + "Continue with --resume, on any number of processes."
                ) from None
            if not isinstance(exc, torch.OutOfMemoryError) and "can't allocate memory" not in str(exc):
                raise
            raise SelfsupError(
                f"out of memory at step {self.state.step} on {self.device} (batch_size {self.config.batch_size}, "
                f"{self.recipe.num_views} views). Lower batch_size, use fewer or smaller crops, or precision=bf16 on a GPU."
            ) from None
        except OSError as exc:
            if exc.errno not in _WRITE_ERRNOS:
                raise
            raise SelfsupError(
                f"cannot write '{exc.filename}': {exc.strerror}. Training stopped; {self.run.where_last()}. "
                "Free disk space, then continue with --resume."
            ) from None
        finally:
            self.run.signals.restore()
            self.close()

    def _fit(self) -> dict[str, Any]:
        estimate_run(self)  # refuses a step that cannot fit in memory; prints the time it will take
        start_time = time.time()
        if self.state.step == 0 and self.state.knn_random is None:
            result = self.knn_logged(random_init=True)
            self.state.knn_random = result["top1"] if result else None
        self.train_epochs()
        wall_time = time.time() - start_time
        # The end: the last kNN and checkpoint, and the run's summary (summary.json).
        config, state = self.config, self.state
        result = self.knn_logged() if config.eval_every is not None else None
        if result:
            state.best_knn = max(state.best_knn, result["top1"])
        path = self.save_checkpoint()
        summary = {
            "run_dir": str(self.run_dir),
            "method": config.method,
            "backbone": config.backbone,
            "data": config.data,
            "epochs": state.epoch,
            "steps": state.step,
            "batch_size": config.batch_size,
            "knn_top1": result["top1"] if result else None,
            "knn_top5": result["top5"] if result else None,
            "best_knn_top1": state.best_knn if state.best_knn >= 0 else None,
            "knn_random_top1": state.knn_random,
            "knn_k": self.knn_k if result else None,
            "knn_bank": self.eval_sets[0].describe() if result and self.eval_sets else None,
            "knn_queries": self.eval_sets[1].describe() if result and self.eval_sets else None,
            "wall_time_s": round(wall_time, 2),
            "images_per_s": round(max(1, state.step) * config.batch_size / max(wall_time, 1e-9), 1),
            "device": str(self.device),
            "precision": self.compute.precision,
            "channels_last": self.compute.channels_last,
            "init": config.init,
            "checkpoint": str(path) if path else None,
            "skipped_steps": state.extra.get("skipped_steps", 0),
        }
        if self.is_main:
            ckpt.atomic_write_bytes(self.run_dir / "summary.json", json.dumps(summary, indent=2).encode())
        self.run.logger.close()
        return summary


def _default_name(config: TrainConfig) -> str:
    data = Path(config.data).stem if ("/" in config.data or "." in config.data) else config.data
    return f"{config.method}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(config: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train from a config; returns the run's summary (also written to ``summary.json``)."""
    return Trainer(config, resume=resume).fit()
