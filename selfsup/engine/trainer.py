"""The training loop: a plain PyTorch loop that knows nothing method-specific.

Per step: views = recipe(uint8 batch) on the device; ``out = method(views, index)``; backward;
optional clipping; ``method.before_optimizer_step``; optimizer step; EMA pairs updated;
``method.after_optimizer_step``. Learning rate and weight decay come from per-step arrays
computed up front. Everything the run needs to continue bit-exactly (model, optimizer, RNG
states, the method's buffers, the position in the epoch) is in each checkpoint.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..augment import Recipe
from ..config import safe_dump
from ..data import BatchLoader, ImageSet, load_dataset
from ..errors import ConfigError, DataError, NonFiniteLossError, SelfsupError, TrainingInterrupted
from ..eval import extract_features, knn_accuracy
from ..eval.knn import choose_k
from ..methods import Method, Progress
from ..nn import all_reduce_mean, ema_update, get_rank, get_world_size
from . import checkpoint as ckpt
from . import distributed
from .build import build_method, build_optimizer_for, build_recipe, build_schedules, seed_everything  # noqa: F401 (re-exported)
from .config import TrainConfig
from .estimate import estimate_run, fit_defaults, free_memory
from .hardware import autocast_dtype, choose_compute, configure_cpu_threads, pick_device  # noqa: F401 (re-exported)
from .heldout import probe_datasets, training_val_fraction
from .init import apply_init, init_note
from .lock import RunLock
from .logger import MetricsLogger
from .logger import Progress as ProgressBar
from .optim import apply_schedule
from .signals import StopSignals


# Views per image a recipe may ask for. The papers use at most 12 (DINO: 2 global + 10 local;
# SwAV: 2 + 6); a count far beyond is a typo (num_local=60 for 6) that would otherwise only show
# as an out-of-memory error, or hours per epoch, after training has started.
MAX_VIEWS_PER_IMAGE = 64


def check_views_memory(recipe: Recipe, batch_size: int, device: torch.device) -> None:
    """Refuse, before training, a recipe with more views than :data:`MAX_VIEWS_PER_IMAGE` or whose
    float32 views alone exceed the free memory of ``device``. The views are a lower bound of what
    a step needs (the activations take many times more), so the memory check refuses only what
    cannot possibly run; a step that still runs out of memory is reported as such, naming its step."""
    kinds = " + ".join(f"{spec.count} of {spec.size} px" for spec in recipe.views)
    count = sum(spec.count for spec in recipe.views)
    if count > MAX_VIEWS_PER_IMAGE:
        raise ConfigError(
            f"the recipe asks for {count} views per image ({kinds}); selfsup allows at most {MAX_VIEWS_PER_IMAGE} "
            "(the papers use up to 12). Lower augment.num_local (or the views' count)."
        )
    need = batch_size * sum(spec.count * 3 * spec.size**2 * 4 for spec in recipe.views)
    free = free_memory(device)
    if free is not None and need > free:
        raise ConfigError(
            f"the augmented views alone would need {need / 2**30:.1f} GiB per step (batch {batch_size} x views "
            f"{kinds}), more than the {free / 2**30:.1f} GiB free on {device}. Use fewer or smaller crops "
            "(e.g. augment.num_local, augment.local_size) or a smaller batch_size."
        )


def load_eval_sets(config: TrainConfig, train: ImageSet) -> tuple[ImageSet, ImageSet] | None:
    """(bank, queries) for kNN monitoring: the labelled training set and images held out from it
    (the source's test split, ``val_data``, or the held-out fraction of a folder; see
    :mod:`selfsup.engine.heldout`). None when there is nothing labelled to probe with (an
    unlabelled source, or nothing held out)."""
    if not train.labelled:
        return None
    try:
        return probe_datasets(
            config.data, config.val_data, config.val_fraction, data_dir=config.data_dir, image_size=train.image_size,
            seed=config.seed, test_subset=config.test_subset, explicit_test=config.val_data is not None, bank=train,
        )
    except DataError:
        if config.val_data:
            raise
        return None  # nothing held out (val_fraction 0), or a packed file without a test split


class OnlineProbe:
    """A linear classifier trained during pretraining on detached features of the first view
    (solo-learn's online probe): a cheap running estimate of linear accuracy. It has its own SGD
    optimizer (lr 0.1 following the run's cosine shape) and never affects the method's gradients.
    The features come from ``method.representation`` under ``no_grad``: one extra forward of one
    view per step, and the same for every method."""

    def __init__(self, feature_dim: int, num_classes: int, device: torch.device, synchronized: bool = False) -> None:
        # BN without affine parameters standardizes the features (as in MAE's linear probe), so one
        # learning rate suits every backbone whatever the scale of its features.
        self.head = torch.nn.Sequential(
            torch.nn.BatchNorm1d(feature_dim, affine=False), torch.nn.Linear(feature_dim, num_classes)
        ).to(device)
        # On several processes: BN over the global batch and gradients averaged, as for the model,
        # so the probe is the same on every rank (and equals the one-process probe).
        self.synchronized = synchronized
        if synchronized:
            self.head = distributed.convert_sync_batchnorm(self.head, device)
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=0.1, momentum=0.9)

    def step(self, method: Method, view: torch.Tensor, labels: torch.Tensor, lr_factor: float, context: Any) -> torch.Tensor:
        keep = labels >= 0
        with torch.no_grad(), context:
            features = method.representation(view).float()
        logits = self.head(features)
        loss = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
        for group in self.optimizer.param_groups:
            group["lr"] = 0.1 * lr_factor
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.synchronized:
            distributed.average_gradients(self.head.parameters())
        self.optimizer.step()
        return (logits.argmax(1)[keep] == labels[keep]).float().mean().detach()

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])


@dataclass
class RunState:
    """What is saved besides model and optimizer: where the run stands."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_knn: float = -1.0
    knn_random: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Build everything from a :class:`TrainConfig` and run the loop (``fit``)."""

    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        config, defaults_note = fit_defaults(config)  # backbone, image size, batch: the machine's where unset
        self.config = config = config.resolve()
        # Under torchrun: join the process group; each process takes the GPU of its local rank.
        self.device = distributed.setup(pick_device(config.device))
        self.rank, self.world_size = get_rank(), get_world_size()
        self.is_main = self.rank == 0
        if self.device.type == "cpu":
            configure_cpu_threads()
        self.compute = choose_compute(config.precision, config.channels_last, self.device)
        self.amp_dtype = self.compute.autocast_dtype
        if self.is_main:
            print(f"selfsup: computing in {self.compute.reason}", file=sys.stderr)
            for line in (defaults_note, init_note(config.init) if config.init else None):
                if line:
                    print(line, file=sys.stderr)
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not config.deterministic
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        self.train_set = load_dataset(
            config.data, "train", data_dir=config.data_dir, image_size=config.image_size,
            limit=config.train_subset, seed=config.seed, max_image_pixels=config.max_image_pixels,
            val_fraction=training_val_fraction(config.data, config.val_data, config.val_fraction),
        )
        if config.batch_size > len(self.train_set):
            raise ConfigError(
                f"batch_size {config.batch_size} is larger than the training set ({len(self.train_set)} images); "
                "use a smaller batch_size."
            )
        self.image_size = int(self.train_set.image_size or 32)
        self.eval_sets = load_eval_sets(config, self.train_set) if (config.eval_every is not None) else None

        self.method = build_method(config, self.image_size).to(self.device)
        apply_init(self.method, config.init)  # continued pretraining: the backbone (and its EMA targets) from init
        self.method.bind_dataset(len(self.train_set))  # per-sample memories, sized before any restore
        # BN over the global batch where the method's paper uses it (or the config says so); the
        # other BN layers normalize per process and their running statistics are averaged.
        sync_bn = config.sync_bn if config.sync_bn is not None else self.method.sync_batchnorm
        if self.world_size > 1 and sync_bn:
            self.method = distributed.convert_sync_batchnorm(self.method, self.device)
        self._local_bns = distributed.local_batchnorms(self.method) if self.world_size > 1 else []
        if self.compute.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.recipe = build_recipe(config, self.method, self.image_size)
        check_views_memory(self.recipe, config.batch_size // self.world_size, self.device)

        self.loader = BatchLoader(
            self.train_set, config.batch_size, self.device, seed=config.seed,
            rank=self.rank, world_size=self.world_size, num_workers=config.num_workers,
        )
        self.steps_per_epoch = len(self.loader)
        # Optimizer and per-step schedules: engine/build.py (what `selfsup train --dry-run` shows).
        self.optimizer = build_optimizer_for(config, self.method)
        schedules = build_schedules(config, self.steps_per_epoch)
        self.total_steps, self.lr_schedule, self.wd_schedule = schedules.total_steps, schedules.lr, schedules.weight_decay
        self.augment_generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.online_probe = (
            OnlineProbe(self.method.feature_dim, self.train_set.num_classes, self.device, synchronized=self.world_size > 1)
            if config.online_probe and self.train_set.labelled else None
        )

        # The default name has the time in it: rank 0's, so that every rank names the same run.
        self.run_dir = Path(config.run_dir) / (config.name or distributed.broadcast_object(self._default_name()))
        self.state = RunState()
        self._prepare_run_dir(resume)
        self.logger = MetricsLogger(self.run_dir, enabled=self.is_main)
        try:
            # DDP after any restore: it starts every rank from rank 0's parameters and buffers.
            self.ddp = distributed.wrap(self.method, self.device) if self.world_size > 1 else None
        except BaseException:
            self.close()
            raise
        model = self.ddp if self.ddp is not None else self.method
        self.forward = torch.compile(model) if config.compile else model

    # -- run directory and resume ------------------------------------------------------------
    def _default_name(self) -> str:
        data = Path(self.config.data).stem if ("/" in self.config.data or "." in self.config.data) else self.config.data
        return f"{self.config.method}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"

    def _prepare_run_dir(self, resume: bool) -> None:
        """Create the run directory and hold its lock (one process per run, see lock.py) until
        :meth:`close`; with ``resume``, restore the newest checkpoint that loads."""
        self._lock: RunLock | None = None
        failure: SelfsupError | None = None
        if self.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self._lock = RunLock(self.run_dir)
                self._lock.acquire()
            except OSError as exc:
                failure = ConfigError(
                    f"cannot write the run directory '{self.run_dir}': {exc.strerror or exc}. "
                    "Choose a writable --run-dir with free space."
                )
            except SelfsupError as exc:  # the run is held by another process
                failure = exc
        # Only rank 0 touches the run directory; the other ranks share its outcome (no shared
        # filesystem needed, and every rank stops with the same message).
        failure = distributed.broadcast_object(failure)
        if failure is not None:
            raise failure
        try:
            self._open_run(resume)
        except BaseException:
            self.close()
            raise

    def _open_run(self, resume: bool) -> None:
        exists = distributed.broadcast_object((self.run_dir / "config.yaml").is_file() if self.is_main else None)
        if exists and not resume:
            raise ConfigError(
                f"run directory '{self.run_dir}' already holds a run. Continue it with --resume, "
                "or choose another --name."
            )
        if self.is_main:
            ckpt.remove_stale_temp_files(self.run_dir)  # left by a process killed mid-write
        if resume and exists:
            found, failure = None, None
            if self.is_main:
                # Read on rank 0 and broadcast: every rank restores the same checkpoint, which
                # may come from a run on any number of processes.
                location = self.device if self.world_size == 1 else torch.device("cpu")
                try:
                    found = ckpt.latest_good_checkpoint(self.run_dir, map_location=location, quarantine=True)
                except SelfsupError as exc:
                    failure = exc
            found, failure = distributed.broadcast_object((found, failure))
            if failure is not None:
                raise failure
            if found is not None:
                self._restore(*found)
            elif self.is_main:
                print(f"selfsup: '{self.run_dir}' has no checkpoint yet; starting it from step 0.", file=sys.stderr)
        elif resume and self.is_main:
            print(f"selfsup: nothing to resume in '{self.run_dir}'; starting a new run there.", file=sys.stderr)
        if self.is_main:
            text = safe_dump(self.config.to_dict())
            try:
                ckpt.atomic_write_bytes(self.run_dir / "config.yaml", text.encode())
            except OSError as exc:
                raise ConfigError(f"cannot write '{self.run_dir / 'config.yaml'}': {exc.strerror or exc}.") from None

    def close(self) -> None:
        """Release the run directory's lock (:meth:`fit` does this when it ends)."""
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.release()

    def _restore(self, path: Path, state: dict[str, Any]) -> None:
        try:
            self.method.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise SelfsupError(f"checkpoint '{path}' does not match this run's model or optimizer: {exc}") from None
        self.state = RunState(**state["run_state"])
        if self.online_probe is not None and "online_probe" in state:
            self.online_probe.load_state_dict(state["online_probe"])
        rng = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in state["rng"].items()}
        torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.augment_generator.set_state(rng["augment"])
        np.random.set_state(_numpy_state_from(rng["numpy"]))
        if self.is_main:
            print(f"selfsup: resumed from {path} (epoch {self.state.epoch}, step {self.state.step})", file=sys.stderr)

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint (rank 0; the others check the parameters only, so that every rank
        stops alike on NaN). Returns its path (None on the other ranks)."""
        if not self.is_main:
            self._refuse_nonfinite(self.method.state_dict())
            return None
        rng = {
            "torch": torch.get_rng_state(),
            "augment": self.augment_generator.get_state(),
            "numpy": _numpy_state_to(np.random.get_state()),
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state = {
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "run_state": self.state.__dict__.copy(),
            "rng": rng,
            "config": self.config.to_dict(),
            "image_size": self.image_size,
        }
        if self.online_probe is not None:
            state["online_probe"] = self.online_probe.state_dict()
        self._refuse_nonfinite(state["model"])
        path = ckpt.save_checkpoint(ckpt.checkpoint_path(self.run_dir, self.state.step), state)
        ckpt.prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        return path

    def _refuse_nonfinite(self, model_state: dict[str, Any]) -> None:
        broken = [k for k, v in model_state.items() if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if broken:  # never let a diverged model replace a good checkpoint
            last = ckpt.list_checkpoints(self.run_dir)
            raise NonFiniteLossError(
                f"the parameters became NaN/Inf by step {self.state.step} ({', '.join(broken[:3])}); not saving them, "
                f"{'the last good checkpoint is ' + str(last[0]) if last else 'no checkpoint had been written yet'}. "
                "Lower the learning rate or enable grad_clip."
            )

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def knn(self) -> dict[str, float] | None:
        if self.eval_sets is None:
            return None
        bank, queries = self.eval_sets
        was_training = self.method.training
        self.method.eval()
        # On several processes the kNN bank stays sharded (each rank encodes and searches its
        # own block of training images; the k best candidates of every rank are merged), and only
        # the test features are gathered: no rank holds the whole training set's features.
        merge, bank_labels = None, bank.labels
        try:
            if self.world_size > 1:
                start, stop = distributed.shard_bounds(len(bank), self.rank, self.world_size)
                train_features = self._features(bank, gather=False)
                bank_labels, merge = bank.labels[start:stop], distributed.gather_columns
            else:
                train_features = self._features(bank)
            test_features = self._features(queries)
        finally:
            self.method.train(was_training)
        self.knn_k = choose_k(bank.labels, self.config.knn_k)  # the same k for the random-init baseline
        return knn_accuracy(
            train_features, bank_labels, test_features, queries.labels,
            max(bank.num_classes, 1), self.knn_k, self.config.knn_temperature, merge=merge,
        )

    def _features(self, dataset: ImageSet, gather: bool = True) -> torch.Tensor:
        """Probe features of a whole dataset. On several processes each rank encodes its
        contiguous share (:func:`distributed.shard_bounds`) and, with ``gather``, the shares are
        all-gathered (every rank then holds all of them); without, the rank's share is returned."""
        kwargs = dict(crop_size=self.recipe.views[0].size, autocast_dtype=self.amp_dtype)
        encode, transform = self.method.representation, self.method.eval_transform
        if self.world_size == 1:
            return extract_features(encode, transform, dataset, self.device, **kwargs)
        start, stop = distributed.shard_bounds(len(dataset), self.rank, self.world_size)
        if stop > start:
            part = extract_features(encode, transform, dataset.subset(torch.arange(start, stop)), self.device, **kwargs)
        else:  # more ranks than rows
            part = torch.zeros((0, self.method.feature_dim), device=self.device)
        return distributed.gather_rows(part, len(dataset)) if gather else part

    # -- the loop ----------------------------------------------------------------------------
    def make_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The recipe's views of a uint8 batch, in the memory format the model runs in."""
        # Parameters drawn for the global batch, this rank's slice kept: the views do not depend
        # on the number of processes.
        views = self.recipe(images, self.augment_generator, shard=(self.rank, self.world_size))
        if self.compute.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for v in views]
        return views

    def train_step(
        self, images: torch.Tensor, index: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step on a uint8 batch: augment on the device, then :meth:`step_on_views`."""
        return self.step_on_views(self.make_views(images), index, labels)

    def step_on_views(
        self, views: list[torch.Tensor], index: torch.Tensor | None, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward, backward, optimizer step and the method's hooks on ready views."""
        config, progress = self.config, Progress(self.state.step, self.total_steps, self.steps_per_epoch)
        self.method.progress = progress
        lr = float(self.lr_schedule[min(self.state.step, len(self.lr_schedule) - 1)])
        wd = float(self.wd_schedule[min(self.state.step, len(self.wd_schedule) - 1)]) if self.wd_schedule is not None else None
        apply_schedule(self.optimizer, lr, wd)
        context = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        with context:
            out = self.forward(views, index if self.method.needs_index else None)
        loss = out["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.skip_nonfinite and distributed.max_over_ranks(int(not bool(torch.isfinite(loss))), self.device):
            # Decided on every rank alike: the gradients were averaged, a NaN on one rank is on all.
            self.state.extra["skipped_steps"] = self.state.extra.get("skipped_steps", 0) + 1
            self.optimizer.zero_grad(set_to_none=True)
            return loss.detach(), out
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), config.grad_clip)
        self.method.before_optimizer_step(progress)
        self.optimizer.step()
        distributed.average_batchnorm_statistics(self._local_bns)  # every rank's BN statistics alike
        pairs = self.method.ema_pairs()
        if pairs:
            momentum = self.method.ema_momentum(progress)
            for online, target in pairs:
                ema_update(online, target, momentum)
        self.method.after_optimizer_step(progress)
        if self.online_probe is not None and labels is not None:
            # float(): a numpy scalar in the probe optimizer's lr would make the checkpoint unloadable (weights_only)
            factor = lr / float(self.lr_schedule.max())
            out["online_probe_acc"] = self.online_probe.step(self.method, views[0], labels, factor, context)
            distributed.average_batchnorm_statistics(self._local_bns)  # the probe's pass moved them again
        return loss.detach(), out

    def fit(self) -> dict[str, Any]:
        """Train to the end and return the summary. SIGINT/SIGTERM save a checkpoint after the
        current step and raise :class:`TrainingInterrupted`; the run directory is released
        whatever happens."""
        self._catch_stop_signals()
        try:
            return self._fit()
        except RuntimeError as exc:  # torch.OutOfMemoryError (CUDA) or the CPU allocator's error
            if self.world_size > 1 and distributed.is_communication_error(exc):
                last = ckpt.list_checkpoints(self.run_dir) if self.is_main else []
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
            last = ckpt.list_checkpoints(self.run_dir)
            raise SelfsupError(
                f"cannot write '{exc.filename}': {exc.strerror}. Training stopped; "
                f"{'the last checkpoint is ' + str(last[0]) if last else 'no checkpoint had been written yet'}. "
                "Free disk space, then continue with --resume."
            ) from None
        finally:
            self._signals.restore()
            self.close()

    def _catch_stop_signals(self) -> None:
        """Ctrl-C or SIGTERM (a cluster's pre-emption) asks the loop to save a checkpoint after
        the current step and stop; a second one stops the process at once, even mid-step (the
        last checkpoint stays; see :mod:`selfsup.engine.signals`)."""
        self._signals = StopSignals(self.world_size, self.is_main, self._on_stop_signal, self._last_checkpoint)
        self._signals.install()

    def _on_stop_signal(self, signum: int) -> None:
        if not self.is_main:
            return
        os.write(2, (
            f"\nselfsup: {signal.Signals(signum).name} received: saving a checkpoint after this step, then stopping "
            "(send it again to stop at once).\n"
        ).encode())

    def _last_checkpoint(self) -> str | None:
        found = ckpt.list_checkpoints(self.run_dir)
        return str(found[0]) if found else None

    def _stop_requested(self) -> bool:
        """Whether to stop for a signal after this step. Processes may receive a signal at
        different steps; on several processes the ranks agree every :data:`STOP_SYNC_STEPS` steps
        (one small all-reduce), so that all stop after the same step and rank 0's checkpoint is
        the state of every rank."""
        if self.world_size == 1:
            return self._signals.signum is not None
        if self.state.step % STOP_SYNC_STEPS:
            return False
        signum = distributed.max_over_ranks(self._signals.signum or 0, self.device)
        if signum and self._signals.signum is None:
            self._signals.signum, self._signals.time = signum, time.monotonic()
        return bool(signum)

    def _stop_for_signal(self, pending: tuple[int, torch.Tensor] | None) -> None:
        if pending is not None:
            self._check_finite(*pending)
        path = self.save_checkpoint() or ckpt.checkpoint_path(self.run_dir, self.state.step)
        signum = int(self._signals.signum or signal.SIGINT)
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} at step {self.state.step} (epoch {self.state.epoch}); "
            f"checkpoint saved: {path}. Continue with: selfsup train --run-dir {self.config.run_dir} "
            f"--name {self.run_dir.name} --resume",
            exit_code=128 + signum,
        )

    def _fit(self) -> dict[str, Any]:
        config, state = self.config, self.state
        estimate_run(self)  # refuses a step that cannot fit in memory; prints the time it will take
        start_time = time.time()
        if state.step == 0 and state.knn_random is None:
            result = self.knn()
            state.knn_random = result["top1"] if result else None
            if result:
                self.logger.log({"epoch": 0, "knn_top1": result["top1"], "knn_top5": result["top5"], "random_init": True}, 0)
        bar = ProgressBar(self.total_steps, state.step, config.progress and self.is_main)
        interval_loss = torch.zeros((), device=self.device)
        interval_steps, interval_start = 0, time.perf_counter()
        pending: tuple[int, torch.Tensor] | None = None
        images_per_step = config.batch_size
        self.method.train()
        try:
            while state.epoch < config.epochs and state.step < self.total_steps:
                for batch in self.loader.epoch(state.epoch, state.step_in_epoch):
                    loss, out = self.train_step(batch.images, batch.index, batch.labels)
                    # Check the previous step's loss now that this step is queued: the host sync
                    # then waits for work that is already done, so the device never idles.
                    if pending is not None:
                        self._check_finite(*pending)
                    pending = (state.step, loss)
                    interval_loss += torch.where(torch.isfinite(loss), loss, 0.0)
                    interval_steps += 1
                    state.step += 1
                    state.step_in_epoch += 1
                    if state.step % config.log_every == 0 or state.step == self.total_steps:
                        self._check_finite(*pending)
                        elapsed = max(time.perf_counter() - interval_start, 1e-9)
                        loss_sum, scalars = self._interval_means(interval_loss, out)
                        record = {
                            "epoch": state.epoch,
                            "loss": loss_sum / interval_steps,
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "images_per_s": interval_steps * images_per_step / elapsed,
                            **scalars,
                        }
                        self.logger.log(record, state.step)
                        bar.update(interval_steps, state.epoch, config.epochs, loss=record["loss"],
                                   lr=record["lr"], img_s=round(record["images_per_s"]))
                        interval_loss.zero_()
                        interval_steps, interval_start = 0, time.perf_counter()
                    every = config.checkpoint_every_steps
                    if every and state.step % every == 0 and state.step < self.total_steps:
                        self._check_finite(*pending)
                        self.save_checkpoint()
                    if self._stop_requested():
                        self._stop_for_signal(pending)
                    if state.step >= self.total_steps:
                        break
                if pending is not None:
                    self._check_finite(*pending)
                if state.step_in_epoch >= self.steps_per_epoch:
                    state.epoch += 1
                    state.step_in_epoch = 0
                self._end_of_epoch(bar)
                if state.step >= self.total_steps:
                    break
        finally:
            bar.close()
        result = self._final(time.time() - start_time)
        self.logger.close()
        return result

    def _interval_means(self, loss_sum: torch.Tensor, out: dict[str, Any]) -> tuple[float, dict[str, float]]:
        """The logged loss and scalars: each rank's are of its share of the batch, so on several
        processes they are averaged over the ranks (one all-reduce per logged step). Every method's
        loss is a mean over its share, so the average is the global batch's loss, never scaled by
        the number of processes."""
        names = [k for k, v in out.items() if k != "loss" and torch.is_tensor(v) and v.numel() == 1]
        values = [loss_sum.float().reshape(())] + [out[k].detach().float().reshape(()).to(loss_sum.device) for k in names]
        packed = all_reduce_mean(torch.stack(values)) if self.world_size > 1 else torch.stack(values)
        numbers = packed.tolist()
        return numbers[0], dict(zip(names, numbers[1:]))

    def _check_finite(self, step: int, loss: torch.Tensor) -> None:
        if self.config.skip_nonfinite:
            return
        value = float(loss)
        if not math.isfinite(value):
            last = ckpt.list_checkpoints(self.run_dir)
            if last and ckpt.checkpoint_step(last[0]) == step:
                # Saved before this loss was seen: its parameters are the ones that produced it.
                where = f"the newest checkpoint {last[0]} holds the parameters that gave this loss" + (
                    f"; the one before it is {last[1]}" if len(last) > 1 else ""
                )
            else:
                where = f"the last good checkpoint is {last[0]}" if last else "no checkpoint had been written yet"
            raise NonFiniteLossError(
                f"the loss became {value} at step {step} (epoch {self.state.epoch}); training stopped and {where}. "
                "Lower the learning rate, enable grad_clip, or set skip_nonfinite=true to skip such steps."
            )

    def _end_of_epoch(self, bar: ProgressBar) -> None:
        config, state = self.config, self.state
        finished = state.epoch >= config.epochs or state.step >= self.total_steps
        if config.eval_every and (state.epoch % config.eval_every == 0 or finished) and state.step_in_epoch == 0 and not finished:
            result = self.knn()
            if result:
                state.best_knn = max(state.best_knn, result["top1"])
                self.logger.log({"epoch": state.epoch, "knn_top1": result["top1"], "knn_top5": result["top5"]}, state.step)
                if self.is_main:
                    bar.write(f"epoch {state.epoch}: kNN top-1 {100 * result['top1']:.2f}%")
        if config.checkpoint_every and state.step_in_epoch == 0 and state.epoch % config.checkpoint_every == 0 and not finished:
            self.save_checkpoint()

    def _final(self, wall_time: float) -> dict[str, Any]:
        state = self.state
        result = self.knn() if self.config.eval_every is not None else None
        if result:
            state.best_knn = max(state.best_knn, result["top1"])
            self.logger.log({"epoch": state.epoch, "knn_top1": result["top1"], "knn_top5": result["top5"]}, state.step)
        path = self.save_checkpoint()
        steps_run = max(1, state.step)
        summary = {
            "run_dir": str(self.run_dir),
            "method": self.config.method,
            "backbone": self.config.backbone,
            "data": self.config.data,
            "epochs": state.epoch,
            "steps": state.step,
            "batch_size": self.config.batch_size,
            "knn_top1": result["top1"] if result else None,
            "knn_top5": result["top5"] if result else None,
            "best_knn_top1": state.best_knn if state.best_knn >= 0 else None,
            "knn_random_top1": state.knn_random,
            "knn_k": getattr(self, "knn_k", None) if result else None,
            "knn_bank": self.eval_sets[0].describe() if result and self.eval_sets else None,
            "knn_queries": self.eval_sets[1].describe() if result and self.eval_sets else None,
            "wall_time_s": round(wall_time, 2),
            "images_per_s": round(steps_run * self.config.batch_size / max(wall_time, 1e-9), 1),
            "device": str(self.device),
            "precision": self.compute.precision,
            "channels_last": self.compute.channels_last,
            "init": self.config.init,
            "checkpoint": str(path) if path else None,
            "skipped_steps": state.extra.get("skipped_steps", 0),
        }
        if self.is_main:
            ckpt.atomic_write_bytes(self.run_dir / "summary.json", json.dumps(summary, indent=2).encode())
        return summary


# Steps between the ranks' agreement on a stop signal (see Trainer._stop_requested): a fraction of a
# millisecond each time, and a stop comes within seconds, well inside torchrun's 30 s grace period.
STOP_SYNC_STEPS = 10

# Write failures that are the machine's, not a bug: disk full, quota, file too large, read-only, denied.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def _numpy_state_to(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from(state: dict[str, Any]) -> tuple:
    return ("MT19937", state["keys"].cpu().numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["cached"])


def train(config: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train from a config; returns the run's summary (also written to ``summary.json``)."""
    return Trainer(config, resume=resume).fit()
