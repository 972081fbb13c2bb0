"""Fit a run to the machine before it starts, and say how long it will take.

Two things happen before the first optimizer step:

1. **Defaults that fit the machine** (:func:`fit_defaults`). When the config leaves ``backbone``,
   ``image_size`` or ``batch_size`` unset, they are chosen from the device, the number of training
   images and the memory available, and one line says what was chosen, why, and how to override
   it. A value the config sets is used exactly as set. The rules:

   - backbone: the ``init`` weights' architecture when given; otherwise ResNet-18 on a GPU and the
     tiny convnet on a CPU (at 64 px a ResNet-18 step costs about 10x the tiny net's, measured per
     image on 2 cores: a batch of 256 took minutes and 10 GB before its first step);
   - image size: 64 px for a folder (built-in and array sources keep the size they have);
   - batch: the largest power of two up to 256 on a GPU or 64 on a CPU that leaves at least four
     steps per epoch and whose predicted memory (below) stays within half of what is available.

2. **An estimate and a memory check** (:func:`estimate_run`). The memory a step needs is predicted
   from two small probe steps (forward and backward at 1/16 and 1/8 of the batch, say): the bytes
   autograd keeps for the backward pass (counted with ``saved_tensors_hooks``) grow linearly with
   the batch, plus the gradients and optimizer state of the parameters. If the prediction exceeds
   the memory available, the run stops before allocating it, naming a batch that fits. Otherwise
   one warm-up step at the full batch (augmentation, forward, backward; on a GPU the second of two,
   the first paying for CUDA initialisation) is timed and its peak memory measured, and one line
   gives seconds per step, time per epoch, the total and the peak memory.

The probes and the warm-up step leave the run exactly as it was: they take no optimizer step, and
the normalization statistics and random-number states they touch are restored, so a run (and its
resume) is bit-for-bit what it would be without them.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import ConfigError, SelfsupError

# Free memory a run may plan to use: the chosen defaults stay within half of it (the machine may be
# shared, and the prediction is a model); an explicit setting is refused above 90%.
DEFAULT_SHARE = 0.5
REFUSE_SHARE = 0.9
CPU_BATCH_CAP, GPU_BATCH_CAP = 64, 256
MIN_STEPS_PER_EPOCH = 4
# Batches of the two probe steps, tried in order until the method takes them.
PROBE_SIZES = ((2, 4), (16, 32), (64, 128))
# Bytes a step holds beyond what autograd saves for the backward pass (the gradient flowing back
# through the largest activations, the augmentation's intermediates), as a share of the saved bytes.
TRANSIENT_FACTOR = 1.25
# What the first full step allocates once on a CPU besides tensors (intra-op thread pools, oneDNN
# primitives and workspaces): 0.1-0.25 GiB measured with ResNet-18 and the tiny net.
CPU_RUNTIME_BYTES = 256 << 20


# Views per image a recipe may ask for. The papers use at most 12 (DINO: 2 global + 10 local;
# SwAV: 2 + 6); a count far beyond is a typo (num_local=60 for 6) that would otherwise only show
# as an out-of-memory error, or hours per epoch, after training has started.
MAX_VIEWS_PER_IMAGE = 64


# -- memory of the machine and of this process -----------------------------------------------------
def _proc_bytes(path: str, field: str) -> int | None:
    """The ``field:`` line of a /proc file (a size in kB), in bytes (None when unreadable or absent)."""
    with suppress(OSError, ValueError):
        with open(path) as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    return None


def free_memory(device: torch.device) -> int | None:
    """Bytes available for new tensors on ``device`` (None when unknown)."""
    with suppress(OSError, ValueError, AttributeError, RuntimeError):
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "cpu":
            available = _proc_bytes("/proc/meminfo", "MemAvailable")
            return available if available is not None else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def _reset_peak(device: torch.device) -> bool:
    """Start measuring this process's peak memory afresh (False where that is not possible)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    with suppress(OSError):  # Linux: writing 5 resets the peak resident set size (VmHWM) to the current one
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    return False


def _memory(device: torch.device, peak: bool = False) -> int | None:
    """This process's memory in use on ``device`` now, or at its peak since :func:`_reset_peak`."""
    if device.type == "cuda":
        return int((torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated)(device))
    return _proc_bytes("/proc/self/status", "VmHWM" if peak else "VmRSS")


def _param_bytes(method: nn.Module) -> int:
    """Bytes of the trained parameters (each gradient or optimizer slot takes as many again)."""
    return sum(p.numel() * p.element_size() for p in method.parameters() if p.requires_grad)


def gib(value: float) -> str:
    return f"{value / 2**30:.1f} GiB" if value >= 2**30 / 10 else f"{value / 2**20:.0f} MiB"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -- probe steps that leave the method as it was -----------------------------------------------
@contextmanager
def preserved(method: nn.Module, device: torch.device) -> Iterator[None]:
    """Run probe steps on ``method`` (in training mode) and put back what a forward/backward pass
    changes: the buffers of normalization layers (running statistics), the RNG states, the gradients
    and the mode. Queues and memory banks change only in ``after_optimizer_step`` (the method
    contract), never here."""
    stats = [
        (m, name, buf.detach().clone())
        for m in method.modules() if hasattr(m, "running_mean")
        for name, buf in m.named_buffers(recurse=False)
    ]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    was_training = method.training
    try:
        method.train()
        yield
    finally:
        with torch.no_grad():
            for module, name, value in stats:
                getattr(module, name).copy_(value)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)
        for p in method.parameters():
            p.grad = None
        method.train(was_training)


def _probe_batch(method: nn.Module, recipe: Any, batch: int, image_size: int, channels: int, device: torch.device,
                 seed: int = 0, channels_last: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    generator = torch.Generator(device=device).manual_seed(seed)
    images = torch.randint(0, 256, (batch, image_size, image_size, channels), dtype=torch.uint8, device=device,
                           generator=generator)
    views = recipe(images, generator)
    if channels_last:  # the layout the run computes in (Loop.make_views)
        views = [v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for v in views]
    return views, torch.arange(batch, device=device)


def _forward_backward(method: Any, views: list[torch.Tensor], index: torch.Tensor, amp: torch.dtype | None,
                      device: torch.device) -> None:
    with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
        out = method(views, index if getattr(method, "needs_index", False) else None)
    out["loss"].backward()


def saved_bytes(method: Any, recipe: Any, batch: int, image_size: int, channels: int, device: torch.device,
                amp: torch.dtype | None = None, channels_last: bool = False) -> int:
    """Bytes autograd keeps for the backward pass of one step at ``batch`` (each storage once; the
    parameters, which exist anyway, not counted), with the views themselves."""
    kept: dict[int, int] = {}  # storage address -> bytes

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    views, index = _probe_batch(method, recipe, batch, image_size, channels, device, channels_last=channels_last)
    for view in views:
        pack(view)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _forward_backward(method, views, index, amp, device)
    params = {p.untyped_storage().data_ptr() for p in method.parameters()}
    return sum(size for address, size in kept.items() if address not in params)


@dataclasses.dataclass
class MemoryModel:
    """New bytes one step allocates at batch ``B`` (per process): ``fixed + per_image * B``."""

    fixed: float
    per_image: float

    def new_bytes(self, batch: int) -> int:
        return int(self.fixed + self.per_image * batch)


def optimizer_slots(optimizer: str | None, momentum: float = 0.9) -> int:
    """Tensors the optimizer keeps per parameter: AdamW two, SGD/LARS one (momentum)."""
    return 2 if optimizer == "adamw" else (1 if momentum else 0)


def memory_model(method: Any, recipe: Any, batch: int, image_size: int, channels: int, device: torch.device,
                 amp: torch.dtype | None = None, slots: int = 1, channels_last: bool = False) -> MemoryModel | None:
    """Fit :class:`MemoryModel` from probe steps at two small batches (the smallest pair the method
    takes: MoCo's shuffled BN, say, needs at least two images per sub-batch); None when the method
    refuses every probe batch of :data:`PROBE_SIZES` (no prediction)."""
    for sizes in PROBE_SIZES:
        # An error is the method's own check of its batch: try larger probes.
        with suppress(Exception), preserved(method, device):
            first, second = (saved_bytes(method, recipe, b, image_size, channels, device, amp, channels_last)
                             for b in sizes)
            break
    else:
        return None
    slope = max(0.0, (second - first) / (sizes[1] - sizes[0]))
    intercept = max(0.0, first - slope * sizes[0])
    runtime = CPU_RUNTIME_BYTES if device.type == "cpu" else 0
    return MemoryModel(fixed=runtime + _param_bytes(method) * (1 + slots) + intercept * TRANSIENT_FACTOR,
                       per_image=slope * TRANSIENT_FACTOR)


# -- 1. defaults that fit the machine ----------------------------------------------------------
def count_images(data: str, val_fraction: float | None) -> int | None:
    """Training images of a source, without decoding any (None when unknown)."""
    from ..data.folder import scan_folder
    from ..data.splits import split_layout

    if data in ("cifar10", "cifar100"):
        return 50_000
    path = Path(data).expanduser()
    try:
        if path.is_dir():
            layout = split_layout(path)
            count = len(scan_folder(layout["train"] if layout else path)[0])
            if layout:  # a split of its own: no images held out of train
                return count
        elif path.suffix == ".npz" and path.is_file():
            shape = _npz_shape(path, ("train_labels", "train_images", "images"))
            if shape is None:
                return None
            count = shape[0]
        else:
            return None
    except (OSError, SelfsupError, ValueError):
        return None
    return int(count * (1 - val_fraction)) if val_fraction else count


def _npz_shape(path: Path, keys: tuple[str, ...]) -> tuple[int, ...] | None:
    """Shape of the first of ``keys`` in a .npz, read from the array header only."""
    import zipfile

    import numpy as np

    fmt = np.lib.format
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        for key in keys:
            if f"{key}.npy" in names:
                with archive.open(f"{key}.npy") as handle:
                    version = fmt.read_magic(handle)
                    header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                    return tuple(int(n) for n in header(handle)[0])
    return None


def _native_side(data: str) -> int:
    """The stored side of a source's images where the config does not set one (raw arrays: from
    the header; otherwise a conservative 64)."""
    if data in ("cifar10", "cifar100"):
        return 32
    path = Path(data).expanduser()
    shape = None
    if path.suffix == ".npz" and path.is_file():
        with suppress(OSError, ValueError):
            shape = _npz_shape(path, ("train_images", "images"))
    if shape and len(shape) >= 3:
        return min(shape[1:3]) if shape[-1] in (1, 3) or len(shape) == 3 else min(shape[2:4])
    return 64


def _pow2_floor(value: int) -> int:
    """The largest power of two up to ``value`` (1 below 2)."""
    return 1 << (max(1, value).bit_length() - 1)


def fit_defaults(config: Any) -> tuple[Any, str | None]:
    """(``config`` with ``backbone``/``image_size``/``batch_size`` chosen where unset, the line that
    says what was chosen and why; None when everything was set or the data source has its own
    defaults). An ``init`` also fills the backbone and its arguments from the weights."""
    from . import distributed
    from .config import SOURCE_DEFAULTS
    from .hardware import pick_device
    from .heldout import training_val_fraction
    from .init import init_architecture

    chosen_backbone = bool(config.init) and config.backbone is None
    if config.init:
        backbone, args = init_architecture(config.backbone, config.backbone_args, config.init)
        config = dataclasses.replace(config, backbone=backbone, backbone_args=args)
    if config.data in SOURCE_DEFAULTS or None not in (config.backbone, config.image_size, config.batch_size):
        return config, None
    device = pick_device(config.device)
    count = count_images(config.data, training_val_fraction(config.data, config.val_data, config.val_fraction))
    if count is not None and config.train_subset:
        count = min(count, config.train_subset)
    # Several processes each decide alone: only what every rank sees alike (not their free memory).
    available = free_memory(device) if distributed.requested_world_size() == 1 else None
    values: dict[str, Any] = {}
    reasons = []
    if config.backbone is None:
        values["backbone"] = "resnet18" if device.type == "cuda" else "tiny"
        reasons.append("a GPU" if device.type == "cuda" else
                       f"a CPU ({os.cpu_count()} cores), where a ResNet-18 step costs about 10x the tiny net's")
    elif chosen_backbone:
        reasons.append(f"the init weights ({config.backbone})")
    if config.image_size is None and Path(config.data).expanduser().is_dir():
        values["image_size"] = 64
    if config.batch_size is None:
        batch = GPU_BATCH_CAP if device.type == "cuda" else CPU_BATCH_CAP
        if count:
            batch = min(batch, max(2, _pow2_floor(count // MIN_STEPS_PER_EPOCH)))
            reasons.append(f"{count} training images (at least {MIN_STEPS_PER_EPOCH} steps per epoch)")
        if available is not None:
            trial = dataclasses.replace(config, **values, batch_size=batch)
            batch = _fit_batch(trial, batch, available * DEFAULT_SHARE, count, device)
            reasons.append(f"{gib(available)} of memory available")
        values["batch_size"] = batch
    config = dataclasses.replace(config, **values)
    # (what was chosen, the flag that overrides it)
    chosen = [(f"{k.replace('_size', ' size')} {v}", k) for k, v in values.items()]
    if chosen_backbone:
        chosen.append((f"backbone {config.backbone} from --init", "backbone"))
    if not chosen:
        return config, None
    what = ", ".join(text for text, _ in chosen)
    flags = " / ".join(f"--{k.replace('_', '-')}" for _, k in chosen)
    return config, f"selfsup: chose {what} for {'; '.join(reasons) or 'this source'}. Set {flags} to override."


def _fit_batch(config: Any, batch: int, budget: float, count: int | None, device: torch.device) -> int:
    """The largest power of two up to ``batch`` whose predicted step memory fits ``budget``."""
    from .build import build_method, build_recipe
    from .hardware import autocast_dtype

    resolved = config.resolve()
    size = resolved.image_size or _native_side(resolved.data)
    method = build_method(resolved, size).to(device)
    method.bind_dataset(max(count or batch, batch))
    recipe = build_recipe(resolved, method, size)
    model = memory_model(method, recipe, batch, size, 3, device, autocast_dtype(resolved.precision, device),
                         optimizer_slots(resolved.optimizer, resolved.momentum))
    if model is None:  # keep the data's choice; the estimate before training measures it
        return batch
    data_bytes = (count or 0) * size * size * 3
    while batch > 2 and model.new_bytes(batch) + data_bytes > budget:
        batch //= 2
    return batch


# -- 2. the estimate before training -----------------------------------------------------------
def check_views_memory(recipe: Any, batch_size: int, device: torch.device) -> None:
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


def check_memory(model: MemoryModel | None, batch: int, available: int | None, device: torch.device,
                 what: str) -> None:
    """Refuse ``batch`` when its predicted new bytes exceed :data:`REFUSE_SHARE` of ``available``,
    naming the largest power-of-two batch that fits (nothing to check without a model or the
    memory available)."""
    if model is None or available is None or model.new_bytes(batch) <= REFUSE_SHARE * available:
        return
    fits = batch
    while fits > 1 and model.new_bytes(fits) > DEFAULT_SHARE * available:
        fits = _pow2_floor(fits - 1)  # the next power of two below
    if model.new_bytes(fits) <= REFUSE_SHARE * available:
        hint = f"batch_size={fits} fits (predicted {gib(model.new_bytes(fits))})"
    else:
        hint = "even a batch of 1 does not fit: use a smaller backbone (--backbone tiny) or image size"
    raise ConfigError(
        f"one training step would need about {gib(model.new_bytes(batch))} of memory ({what}, batch {batch}: "
        f"{gib(model.per_image)} per image + {gib(model.fixed)} for gradients, optimizer state and the rest), more than "
        f"the {gib(available)} available on {device}. Not starting; {hint}."
    )


def estimate_run(trainer: Any) -> str | None:
    """Check the memory of one step, then time a warm-up step at the full batch; prints the
    estimate line (rank 0) and returns it. Single-process runs only (every rank would have to
    probe alike)."""
    if trainer.world_size > 1 or trainer.state.step >= trainer.total_steps:
        return None
    config, device, method, recipe = trainer.config, trainer.device, trainer.method, trainer.recipe
    batch, size = config.batch_size, trainer.image_size
    images = trainer.train_set.images
    channels = int(images.shape[-1]) if images is not None else 3
    available = free_memory(device)
    amp, layout = trainer.compute.autocast_dtype, trainer.compute.channels_last
    slots = optimizer_slots(config.optimizer, config.momentum)
    what = f"{config.method} / {config.backbone} at {size} px, {recipe.num_views} views"
    # None for a method that refuses small batches: no prediction, the warm-up step still measures.
    model = memory_model(method, recipe, batch, size, channels, device, amp, slots, layout)
    check_memory(model, batch, available, device, what)
    _say(f"selfsup: timing one warm-up step (batch {batch}, {what})...", trainer)
    measured = _reset_peak(device)
    with preserved(method, device):
        # On a GPU the first step also pays for the CUDA context, cuDNN's algorithm search and the
        # kernels' loading: on an H200 (ResNet-18, batch 256) it took 1.0-1.6 s where training then ran
        # at ~0.04 s/step, so the estimate came out ~20x too long. There the second of two steps is
        # timed; on a CPU the first step is already representative and is the one timed.
        for _ in range(1 if device.type == "cpu" else 2):
            start = time.perf_counter()
            views, index = _probe_batch(method, recipe, batch, size, channels, device, seed=1, channels_last=layout)
            _forward_backward(method, views, index, amp, device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            del views, index
    peak = _memory(device, peak=True) if measured else None
    if peak is not None:  # the warm-up takes no optimizer step: its state comes on top
        peak += slots * _param_bytes(method)
    elif model is not None:
        peak = (_memory(device) or 0) + model.new_bytes(batch)
    left, per_epoch = trainer.total_steps - trainer.state.step, trainer.steps_per_epoch
    eval_seconds = _eval_seconds(trainer, seconds, batch)
    evals = f" + ~{duration(eval_seconds)} of kNN evaluation" if eval_seconds >= 1 else ""
    memory = ""
    if peak is not None:
        memory = f"; peak memory {gib(peak)}" + (f" of {gib(available)} available" if available else "")
    line = (
        f"selfsup: estimate: {seconds:.2f} s/step (a timed warm-up step of batch {batch}), "
        f"{per_epoch} steps/epoch = {duration(seconds * per_epoch)}/epoch; {left} steps "
        f"= ~{duration(seconds * left)}{evals} in all{memory}."
    )
    _say(line, trainer)
    return line


def _eval_seconds(trainer: Any, step_seconds: float, batch: int) -> float:
    """kNN evaluations still to come x their images, at a third of a training step's time per
    image and view (a forward without the backward, of one view)."""
    if not trainer.eval_sets or trainer.config.eval_every is None:
        return 0.0
    every = trainer.config.eval_every
    epochs_left = max(0, trainer.config.epochs - trainer.state.epoch)
    count = 1 + (epochs_left // every if every else 0) + (1 if trainer.state.step == 0 else 0)
    per_image = step_seconds / max(1, batch * trainer.recipe.num_views) / 3
    return count * sum(len(s) for s in trainer.eval_sets) * per_image


def _say(line: str, trainer: Any) -> None:
    if trainer.is_main:
        print(line, file=sys.stderr, flush=True)
