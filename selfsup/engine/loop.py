"""The step and the epoch: a plain PyTorch loop that knows nothing method-specific.

Per step: views = recipe(uint8 batch) on the device; ``out = method(views, index)`` under
autocast; backward; optional clipping; ``method.before_optimizer_step``; optimizer step; EMA pairs
updated; ``method.after_optimizer_step``; the online probe's step. Learning rate and weight decay
come from per-step arrays computed up front (build.py). Per epoch: the loss and the method's
scalars logged at intervals, checkpoints at intervals, a stop signal honoured after its step, and
the kNN monitor. Everything the run needs to continue bit-exactly (model, optimizer, RNG states,
the method's buffers, the position in the epoch) is in each checkpoint.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..augment import Recipe
from ..data import BatchLoader, ImageSet
from ..errors import NonFiniteLossError, SelfsupError, TrainingInterrupted
from ..eval import extract_features, knn_accuracy
from ..eval.knn import choose_k
from ..methods import Method, Progress
from ..nn import all_reduce_mean, ema_update
from . import checkpoint as ckpt
from . import distributed
from .config import TrainConfig
from .hardware import Compute
from .logger import Progress as ProgressBar
from .optim import apply_schedule
from .run import Run


@dataclass
class RunState:
    """What is saved besides model and optimizer: where the run stands."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_knn: float = -1.0
    knn_random: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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
        apply_schedule(self.optimizer, 0.1 * lr_factor, None)
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


class Loop:
    """The step and the epoch over a run's parts. :class:`~selfsup.engine.trainer.Trainer`, a
    Loop, builds them from a config (build.py), opens the run (:class:`Run`) and sets the
    attributes below; the methods here (``train_step``, ``step_on_views``, ``knn``, ...) are the
    trainer's."""

    config: TrainConfig
    device: torch.device
    compute: Compute
    rank: int
    world_size: int
    is_main: bool
    image_size: int
    method: Method
    forward: Callable[..., dict[str, torch.Tensor]]  # the method, or its DDP / compiled wrapper
    local_bns: list[torch.nn.Module]  # BN layers that normalize per process (their statistics are averaged)
    recipe: Recipe
    loader: BatchLoader
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    total_steps: int
    lr_schedule: np.ndarray
    wd_schedule: np.ndarray | None
    augment_generator: torch.Generator
    online_probe: OnlineProbe | None
    eval_sets: tuple[ImageSet, ImageSet] | None
    run: Run
    state: RunState
    knn_k: int | None = None

    # -- one step --------------------------------------------------------------------------------
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
        i = min(self.state.step, len(self.lr_schedule) - 1)  # both schedules span the planned run (build.py)
        lr = float(self.lr_schedule[i])
        wd = float(self.wd_schedule[i]) if self.wd_schedule is not None else None
        apply_schedule(self.optimizer, lr, wd)
        amp = self.compute.autocast_dtype
        context = torch.autocast(self.device.type, dtype=amp) if amp else nullcontext()
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
        distributed.average_batchnorm_statistics(self.local_bns)  # every rank's BN statistics alike
        if pairs := self.method.ema_pairs():
            momentum = self.method.ema_momentum(progress)
            for online, target in pairs:
                ema_update(online, target, momentum)
        self.method.after_optimizer_step(progress)
        if self.online_probe is not None and labels is not None:
            # float(): a numpy scalar in the probe optimizer's lr would make the checkpoint unloadable (weights_only)
            factor = lr / float(self.lr_schedule.max())
            out["online_probe_acc"] = self.online_probe.step(self.method, views[0], labels, factor, context)
            distributed.average_batchnorm_statistics(self.local_bns)  # the probe's pass moved them again
        return loss.detach(), out

    # -- the epochs ------------------------------------------------------------------------------
    def train_epochs(self) -> None:
        """Train from where the run stands to its end (``epochs`` or ``max_steps``), logging every
        ``log_every`` steps, saving checkpoints at intervals and stopping after a step on a signal."""
        config, state = self.config, self.state
        bar = ProgressBar(self.total_steps, state.step, config.progress and self.is_main)
        interval_loss = torch.zeros((), device=self.device)
        interval_steps, interval_start = 0, time.perf_counter()
        pending: tuple[int, torch.Tensor] | None = None
        self.method.train()
        try:
            while state.epoch < config.epochs and state.step < self.total_steps:
                for batch in self.loader.epoch(state.epoch, state.step_in_epoch):
                    loss, out = self.train_step(batch.images, batch.index, batch.labels)
                    # Check the previous step's loss now that this step is queued: the host sync
                    # then waits for work that is already done, so the device never idles.
                    self._check_finite(pending)
                    pending = (state.step, loss)
                    interval_loss += torch.where(torch.isfinite(loss), loss, 0.0)
                    interval_steps += 1
                    state.step += 1
                    state.step_in_epoch += 1
                    if state.step % config.log_every == 0 or state.step == self.total_steps:
                        self._check_finite(pending)
                        elapsed = max(time.perf_counter() - interval_start, 1e-9)
                        loss_sum, scalars = self._interval_means(interval_loss, out)
                        record = {
                            "epoch": state.epoch,
                            "loss": loss_sum / interval_steps,
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "images_per_s": interval_steps * config.batch_size / elapsed,
                            **scalars,
                        }
                        self.run.logger.log(record, state.step)
                        bar.update(interval_steps, state.epoch, config.epochs, loss=record["loss"],
                                   lr=record["lr"], img_s=round(record["images_per_s"]))
                        interval_loss.zero_()
                        interval_steps, interval_start = 0, time.perf_counter()
                    every = config.checkpoint_every_steps
                    if every and state.step % every == 0 and state.step < self.total_steps:
                        self._check_finite(pending)
                        self.save_checkpoint()
                    if self.run.stop_requested(state.step, self.device):
                        self._stop_for_signal(pending)
                    if state.step >= self.total_steps:
                        break
                self._check_finite(pending)
                if state.step_in_epoch >= self.steps_per_epoch:
                    state.epoch += 1
                    state.step_in_epoch = 0
                self._end_of_epoch(bar)
        finally:
            bar.close()

    def _interval_means(self, loss_sum: torch.Tensor, out: dict[str, Any]) -> tuple[float, dict[str, float]]:
        """The logged loss and scalars: each rank's are of its share of the batch, so on several
        processes they are averaged over the ranks (one all-reduce per logged step). Every method's
        loss is a mean over its share, so the average is the global batch's loss, never scaled by
        the number of processes."""
        names = [k for k, v in out.items() if k != "loss" and torch.is_tensor(v) and v.numel() == 1]
        values = [loss_sum.float().reshape(())] + [out[k].detach().float().reshape(()).to(loss_sum.device) for k in names]
        numbers = all_reduce_mean(torch.stack(values)).tolist()  # the tensor itself on one process
        return numbers[0], dict(zip(names, numbers[1:]))

    def _check_finite(self, pending: tuple[int, torch.Tensor] | None) -> None:
        """Raise on a non-finite loss of ``(step, loss)`` (None before the first step)."""
        if self.config.skip_nonfinite or pending is None:
            return
        step, loss = pending
        value = float(loss)
        if not math.isfinite(value):
            last = self.run.checkpoints()
            if last and ckpt.checkpoint_step(last[0]) == step:
                # Saved before this loss was seen: its parameters are the ones that produced it.
                where = f"the newest checkpoint {last[0]} holds the parameters that gave this loss" + (
                    f"; the one before it is {last[1]}" if len(last) > 1 else ""
                )
            else:
                where = self.run.where_last("last good")
            raise NonFiniteLossError(
                f"the loss became {value} at step {step} (epoch {self.state.epoch}); training stopped and {where}. "
                "Lower the learning rate, enable grad_clip, or set skip_nonfinite=true to skip such steps."
            )

    def _end_of_epoch(self, bar: ProgressBar) -> None:
        config, state = self.config, self.state
        if state.step_in_epoch or state.epoch >= config.epochs or state.step >= self.total_steps:
            return  # mid-epoch, or the run's end (where fit's final kNN and checkpoint follow)
        if config.eval_every and state.epoch % config.eval_every == 0 and (result := self.knn_logged()):
            state.best_knn = max(state.best_knn, result["top1"])
            if self.is_main:
                bar.write(f"epoch {state.epoch}: kNN top-1 {100 * result['top1']:.2f}%")
        if config.checkpoint_every and state.epoch % config.checkpoint_every == 0:
            self.save_checkpoint()

    def _stop_for_signal(self, pending: tuple[int, torch.Tensor] | None) -> None:
        self._check_finite(pending)
        path = self.save_checkpoint() or ckpt.checkpoint_path(self.run.path, self.state.step)
        signum = int(self.run.signals.signum or signal.SIGINT)
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} at step {self.state.step} (epoch {self.state.epoch}); "
            f"checkpoint saved: {path}. Continue with: selfsup train --run-dir {self.config.run_dir} "
            f"--name {self.run.path.name} --resume",
            exit_code=128 + signum,
        )

    # -- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint (rank 0; the others check the parameters only, so that every rank
        stops alike on NaN). Returns its path (None on the other ranks)."""
        state: dict[str, Any] = {"model": self.method.state_dict()}
        if self.is_main:
            state.update(
                optimizer=self.optimizer.state_dict(),
                run_state=self.state.__dict__.copy(),
                rng=ckpt.rng_states(self.device, self.augment_generator),
                config=self.config.to_dict(),
                image_size=self.image_size,
            )
            if self.online_probe is not None:
                state["online_probe"] = self.online_probe.state_dict()
        return self.run.save(state, self.state.step, self.config.keep_checkpoints)

    def restore(self, path: Path, state: dict[str, Any]) -> None:
        """Continue from a checkpoint that :meth:`save_checkpoint` wrote."""
        try:
            self.method.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise SelfsupError(f"checkpoint '{path}' does not match this run's model or optimizer: {exc}") from None
        self.state = RunState(**state["run_state"])
        if self.online_probe is not None and "online_probe" in state:
            self.online_probe.load_state_dict(state["online_probe"])
        ckpt.set_rng_states(state["rng"], self.device, self.augment_generator)
        if self.is_main:
            print(f"selfsup: resumed from {path} (epoch {self.state.epoch}, step {self.state.step})", file=sys.stderr)

    # -- the kNN monitor -------------------------------------------------------------------------
    def knn_logged(self, **extra: Any) -> dict[str, float] | None:
        """:meth:`knn`, logged at the current step (None without labelled held-out images)."""
        result = self.knn()
        if result:
            record = {"epoch": self.state.epoch, "knn_top1": result["top1"], "knn_top5": result["top5"], **extra}
            self.run.logger.log(record, self.state.step)
        return result

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
        start, stop = distributed.shard_bounds(len(bank), self.rank, self.world_size)
        try:
            train_features = self._features(bank, gather=False)
            test_features = self._features(queries)
        finally:
            self.method.train(was_training)
        self.knn_k = choose_k(bank.labels, self.config.knn_k)  # the same k for the random-init baseline
        return knn_accuracy(
            train_features, bank.labels[start:stop], test_features, queries.labels, max(bank.num_classes, 1),
            self.knn_k, self.config.knn_temperature, merge=distributed.gather_columns if self.world_size > 1 else None,
        )

    def _features(self, dataset: ImageSet, gather: bool = True) -> torch.Tensor:
        """Probe features of a whole dataset. On several processes each rank encodes its
        contiguous share (:func:`distributed.shard_bounds`) and, with ``gather``, the shares are
        all-gathered (every rank then holds all of them); without, the rank's share is returned."""
        kwargs = dict(crop_size=self.recipe.views[0].size, autocast_dtype=self.compute.autocast_dtype)
        encode, transform = self.method.representation, self.method.eval_transform
        if self.world_size == 1:
            return extract_features(encode, transform, dataset, self.device, **kwargs)
        start, stop = distributed.shard_bounds(len(dataset), self.rank, self.world_size)
        if stop > start:
            part = extract_features(encode, transform, dataset.subset(torch.arange(start, stop)), self.device, **kwargs)
        else:  # more ranks than rows
            part = torch.zeros((0, self.method.feature_dim), device=self.device)
        return distributed.gather_rows(part, len(dataset)) if gather else part
