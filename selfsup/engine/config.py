"""The training configuration: one dataclass, every field documented, unknown keys refused."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import deep_merge, from_dict, load_yaml, parse_overrides, to_dict
from ..errors import ConfigError, closest

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

# Defaults that depend on the data source; applied to fields left unset (None / "auto").
# The built-in digits are a 2-minute CPU demo, so they get the tiny backbone.
SOURCE_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"backbone": "tiny", "epochs": 30, "batch_size": 256, "eval_every": 10},
}
GENERIC_DEFAULTS: dict[str, Any] = {"backbone": "resnet18", "epochs": 100, "batch_size": 256, "eval_every": 10}
# Optimisation fields a method may set (Method.defaults_for); these are used where neither the
# config nor the method does.
ENGINE_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "grad_clip": None, "lr_scaling": "linear",
    "min_lr_ratio": 0.0, "lr_schedule": "cosine", "lr_milestones": [], "lr_decay_factor": 0.1,
    "warmup_start_lr": 0.0, "momentum": 0.9, "lars_eta": 0.001, "lars_clip_lr": False, "lars_trust": "update_norm",
    "adamw_betas": (0.9, 0.999),
}


@dataclass
class TrainConfig:
    """Everything a pretraining run needs. ``None`` means "the default of the method or the data"
    (resolved by :meth:`resolve` and written, resolved, to the run's ``config.yaml``)."""

    # what to train
    method: str = "simclr"  # a registered method (`selfsup methods`)
    method_args: dict[str, Any] = field(default_factory=dict)  # fields of the method's Config
    backbone: str | None = None  # registered backbone; default: the method's (MAE: vit_small), else resnet18 (tiny for the digits demo)
    backbone_args: dict[str, Any] = field(default_factory=dict)  # e.g. cifar_stem, norm, patch_size
    # Pretrained backbone weights to continue from: a torchvision/timm state dict (.pth, .safetensors),
    # a `selfsup export`, a selfsup run or checkpoint, or torchvision:<model>.<WEIGHTS> / timm:<model>.
    init: str | None = None
    # data
    data: str = "digits"  # digits | cifar10 | cifar100 | a folder | a packed .npz
    data_dir: str | None = None  # where built-in datasets are searched first
    val_data: str | None = None  # labelled data for kNN monitoring; default: the source's test split
    # Share of every class of a labelled source without a split of its own (a folder of class
    # subfolders, a raw .npz) held out of training for monitoring and probes; split seed 0.
    val_fraction: float = 0.1
    image_size: int | None = None  # stored side of folder images (default 64); built-ins keep theirs
    train_subset: int | None = None  # train on a fixed random subset of this many images
    max_image_pixels: int = 64_000_000  # decompression-bomb guard: larger images are skipped, with a message
    test_subset: int | None = None  # monitor on a fixed random subset of the test split
    recipe: str | None = None  # augmentation recipe; default: the method's
    augment: dict[str, Any] = field(default_factory=dict)  # overrides of the recipe's fields
    num_workers: int = 4  # decoding workers for streamed (large) folders
    # optimisation
    epochs: int | None = None  # passes over the training set; default 100 (30 for the digits demo)
    max_steps: int | None = None  # stop after this many steps (smoke tests, benchmarks)
    batch_size: int | None = None  # global batch, over all processes
    # Unset optimisation fields (None) take the method's defaults (Method.defaults_for: the
    # paper's recipe for the backbone and the epoch count), then the engine's (ENGINE_DEFAULTS).
    optimizer: Literal["sgd", "lars", "adamw"] | None = None  # default: the method's
    lr: float | None = None  # base learning rate per 256 images (see lr_scaling); default: the method's
    lr_scaling: Literal["linear", "sqrt", "none"] | None = None  # peak = base * B / 256 (linear), base * sqrt(B) / 16, base (none)
    lr_schedule: Literal["cosine", "step", "constant"] | None = None  # after the warmup; default cosine
    lr_milestones: list[float] | None = None  # step schedule: epochs where the lr is multiplied by lr_decay_factor
    lr_decay_factor: float | None = None  # step schedule factor (default 0.1)
    min_lr_ratio: float | None = None  # the cosine ends at peak * min_lr_ratio (default 0)
    min_lr: float | None = None  # the cosine ends at this absolute lr instead (DINO's 1e-6)
    warmup_epochs: float | None = None  # linear warmup; default min(10, epochs / 10)
    warmup_start_lr: float | None = None  # the warmup starts at this absolute lr (default 0; solo-learn 3e-5)
    weight_decay: float | None = None  # default: the method's
    # Cosine weight-decay schedule to this value (DINO). Unset, it follows weight_decay: it takes
    # the method's value only when weight_decay is the method's too.
    weight_decay_end: float | None = None
    exclude_bias_norm: bool | None = None  # no weight decay (nor LARS ratio) on biases and norms; default: LARS/AdamW yes, SGD no
    momentum: float | None = None  # SGD/LARS momentum (default 0.9)
    lars_eta: float | None = None  # LARS trust coefficient (default 0.001; solo-learn's CIFAR recipes 0.02)
    lars_clip_lr: bool | None = None  # LARC's clipping: the trust ratio caps the lr instead of scaling it
    lars_trust: Literal["update_norm", "larc"] | None = None  # |g + wd w| (SimCLR, BYOL, MoCo v3) or |g| + wd |w| (apex LARC: SwAV, solo-learn)
    grad_clip: float | None = None  # clip the global gradient norm; default: the method's
    adamw_betas: tuple[float, float] | None = None  # AdamW's (beta1, beta2); default: the method's (MAE: 0.9, 0.95), else (0.9, 0.999)
    # precision and speed
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: bf16 autocast on CUDA and on CPUs that compute bf16 natively (AVX512-BF16, AMX), float32
    # elsewhere; losses, softmaxes, Sinkhorn, EMA and BN statistics stay float32 (engine/hardware.py)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = True  # NHWC memory format for images and convolutions (CUDA and CPU)
    compile: bool = False  # torch.compile the method's forward
    deterministic: bool = False  # deterministic kernels (CPU runs resume bit-exactly either way)
    seed: int = 0  # initialization, data order, subsets and augmentations all follow from it
    # several processes (torchrun; docs/distributed.md)
    sync_bn: bool | None = None  # BN over the global batch across processes; None: the method's paper's choice
    # evaluation during training
    eval_every: int | None = None  # kNN on the test split every N epochs (0: only at the end)
    # neighbours that vote in the kNN monitor; None: min(200, labelled bank images per class) (InstDisc's
    # k=200 once classes have 200 images), the same for the random-init baseline
    knn_k: int | None = None
    knn_temperature: float = 0.1  # vote weight exp(similarity / T) of the kNN monitor (InstDisc's T=0.1)
    online_probe: bool = False  # train a linear classifier on detached features (solo-learn style)
    # run directory, logging, checkpoints
    run_dir: str = "runs"  # parent folder of the run directories
    name: str | None = None  # run name; default <method>-<data>-<time>
    log_every: int = 20  # steps between logged metrics
    checkpoint_every: int = 1  # epochs between checkpoints
    checkpoint_every_steps: int = 0  # also every N optimizer steps (long epochs, pre-emptible jobs); 0: off
    keep_checkpoints: int = 2  # newest checkpoints kept
    skip_nonfinite: bool = False  # skip steps whose loss is NaN/Inf instead of stopping
    progress: bool = True  # progress bar

    def method_defaults(self) -> dict[str, Any]:
        """The method's defaults for this config's backbone and epoch count (``Method.defaults_for``):
        TrainConfig fields, and under ``method_args`` fields of the method's config."""
        from ..methods import get

        source = SOURCE_DEFAULTS.get(self.data, GENERIC_DEFAULTS)
        epochs = self.epochs or source.get("epochs", GENERIC_DEFAULTS["epochs"])
        return get(self.method).defaults_for(self.default_backbone(), epochs)

    def default_backbone(self) -> str:
        """The backbone a run uses: the config's, else the method's (a method that needs a ViT
        names one), else the data source's default."""
        from ..methods import get

        source = SOURCE_DEFAULTS.get(self.data, GENERIC_DEFAULTS).get("backbone", GENERIC_DEFAULTS["backbone"])
        return self.backbone or get(self.method).default_backbone or source

    def resolve(self) -> TrainConfig:
        """Fill every ``None`` from the method's and the data source's defaults, then validate."""
        from ..methods import get, make_config

        get(self.method)  # unknown method -> error with suggestion
        make_config(self.method, self.method_args)  # unknown method keys -> error
        values = dataclasses.asdict(self)
        source = SOURCE_DEFAULTS.get(self.data, GENERIC_DEFAULTS)
        method = dict(self.method_defaults())
        method_args = method.pop("method_args", {})
        method_backbone_args = method.pop("backbone_args", {})
        if unknown := [k for k in method if k not in values]:
            raise ConfigError(f"method '{self.method}' gives defaults for unknown config fields {unknown}.")
        if self.weight_decay is not None and self.weight_decay_end is None:
            # A weight decay set by the config is constant unless its end is set too: the
            # method's end value belongs to the method's start value (DINO's 0.04 -> 0.4).
            method.pop("weight_decay_end", None)
        values["backbone"] = self.default_backbone()
        for key, value in {**GENERIC_DEFAULTS, **source, **ENGINE_DEFAULTS, **method}.items():
            if key in values and values[key] is None:
                values[key] = value
        # The method's own config fields it sets for this backbone/epoch count (e.g. BYOL's tau
        # preset), unless the config sets them. Every field of the method's config is recorded in
        # the resolved config.yaml, so that a run rebuilds as it was trained whatever later
        # defaults become (None keeps its documented rule, e.g. a size picked from the image side).
        values["method_args"] = to_dict(make_config(self.method, {**method_args, **values["method_args"]}))
        # Backbone options the method needs (e.g. CPC's layer norm) unless the config sets them.
        values["backbone_args"] = {**method_backbone_args, **get(self.method).backbone_defaults, **values["backbone_args"]}
        if values["warmup_epochs"] is None:
            values["warmup_epochs"] = min(10.0, values["epochs"] / 10)
        return from_dict(TrainConfig, values, "config")  # which validates it

    def validate(self) -> None:
        positive = (
            "epochs", "batch_size", "max_steps", "train_subset", "test_subset", "image_size", "max_image_pixels", "lr"
        )
        nonnegative = ("weight_decay", "weight_decay_end", "warmup_epochs", "min_lr_ratio", "min_lr", "warmup_start_lr")
        for name in positive + nonnegative:  # None: unset, allowed
            value = getattr(self, name)
            if value is not None and (value <= 0 if name in positive else value < 0):
                raise ConfigError(f"{name} must be {'>' if name in positive else '>='} 0, got {value}.")
        if self.lars_eta is not None and self.lars_eta <= 0:
            raise ConfigError(f"lars_eta must be > 0, got {self.lars_eta} (LARS: 0.001; solo-learn's CIFAR recipes: 0.02).")
        if self.lr_decay_factor is not None and not 0 < self.lr_decay_factor <= 1:
            raise ConfigError(f"lr_decay_factor must be in (0, 1], got {self.lr_decay_factor}.")
        if self.lr_milestones is not None:
            if any(m < 0 for m in self.lr_milestones) or list(self.lr_milestones) != sorted(self.lr_milestones):
                raise ConfigError(f"lr_milestones must be increasing epochs >= 0, got {self.lr_milestones}.")
            if self.lr_schedule == "step" and not self.lr_milestones:
                raise ConfigError("lr_schedule=step needs lr_milestones (epochs where the lr drops), e.g. lr_milestones=[120,160].")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"grad_clip must be > 0 (or null to disable), got {self.grad_clip}.")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1) (the share of each class held out), got {self.val_fraction}.")
        if self.adamw_betas is not None and not all(0.0 <= beta < 1.0 for beta in self.adamw_betas):
            raise ConfigError(f"adamw_betas must be two numbers in [0, 1), got {list(self.adamw_betas)} (e.g. [0.9, 0.999]).")
        if (self.knn_k is not None and self.knn_k <= 0) or self.knn_temperature <= 0:
            raise ConfigError(f"knn_k and knn_temperature must be > 0, got {self.knn_k} and {self.knn_temperature}.")
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}.")
        if self.log_every <= 0 or self.checkpoint_every < 0 or self.checkpoint_every_steps < 0 or self.keep_checkpoints < 1:
            raise ConfigError(
                "log_every must be > 0, checkpoint_every and checkpoint_every_steps >= 0 and keep_checkpoints >= 1; got "
                f"{self.log_every}, {self.checkpoint_every}, {self.checkpoint_every_steps} and {self.keep_checkpoints}."
            )
        if self.eval_every is not None and self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0, got {self.eval_every}.")
        if self.min_lr_ratio is not None and self.min_lr_ratio > 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1] (the cosine ends at lr * min_lr_ratio), got {self.min_lr_ratio}.")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}.")
        # The generators take seeds below 2**64, and the loader derives one per epoch from it.
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}.")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path, or the name of a bundled config (``simclr_cifar10`` -> configs/simclr_cifar10.yaml)."""
    for path in (Path(name_or_path), CONFIG_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"):
        if path.is_file():
            return path
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(
        f"config '{name_or_path}' is neither a file nor a bundled config.{closest(name_or_path, names)} "
        f"Bundled: {', '.join(names)}."
    )


def recipe_config_for(method: str, data: str) -> Path | None:
    """The bundled config a run of ``method`` on a built-in source starts from when no config
    file is given: ``<method>_<data>.yaml`` (CIFAR-100 falls back to the CIFAR-10 recipe, as
    solo-learn's configs do: "change here for cifar100"), ``simclr_digits.yaml`` for the demo."""
    names = {"cifar10": ["cifar10"], "cifar100": ["cifar100", "cifar10"], "digits": ["digits"]}.get(data, [])
    for name in names:
        path = CONFIG_DIR / f"{method}_{name}.yaml"
        if path.is_file():
            return path
    return None


def recipe_line(path: Path) -> str:
    """A bundled config's first line, ``# recipe: ...``: the published recipe it reproduces."""
    first = path.read_text().splitlines()[0] if path.is_file() else ""
    return first.removeprefix("#").strip() or path.stem


def build_run_config(
    config_file: str | None, values: dict[str, Any] | None = None, overrides: list[str] | None = None
) -> tuple[TrainConfig, str]:
    """:func:`build_config` as ``selfsup train`` calls it, and one line naming the recipe applied.

    Without a config file, the bundled recipe of the method on a built-in source
    (:func:`recipe_config_for`: e.g. ``byol_cifar10.yaml`` for ``--method byol --data cifar10``) is
    the base, under the command line's flags and overrides; elsewhere the method's defaults
    (its paper's recipe for the backbone and epoch count, docs/recipes.md) apply."""
    if config_file:
        path = resolve_config_path(config_file)
        note = recipe_line(path) if path.parent == CONFIG_DIR else f"config file {path}"
        return build_config(config_file, values, overrides), note
    given = {k: v for k, v in (values or {}).items() if v is not None}
    parsed = parse_overrides(overrides or [])
    method = parsed.get("method") if isinstance(parsed.get("method"), str) else given.get("method", TrainConfig.method)
    data = parsed.get("data") if isinstance(parsed.get("data"), str) else given.get("data", TrainConfig.data)
    bundled = recipe_config_for(str(method), str(data))
    if bundled is not None:
        note = f"{recipe_line(bundled)} [{bundled.name}; --config to choose another]"
        recipe = load_yaml(bundled)
        backbone = parsed.get("backbone") if isinstance(parsed.get("backbone"), str) else given.get("backbone")
        if backbone and backbone != recipe.get("backbone") and recipe.pop("backbone_args", None):
            # The recipe's backbone arguments describe its own network (e.g. a ResNet's
            # zero_init_residual); another backbone gets its own defaults.
            note += f"; its backbone_args are for {recipe.get('backbone')}, not applied to {backbone}"
        return build_config(None, deep_merge(recipe, given), overrides), note
    return build_config(None, values, overrides), f"recipe: {method}'s defaults (docs/recipes.md: the paper's recipe for this backbone and epoch count)"


def build_config(config_file: str | None = None, values: dict[str, Any] | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Config file, then explicit values (e.g. from CLI flags), then ``key=value`` overrides.

    ``method.temperature=0.2`` sets a field of the method's config, ``augment.crop_scale=[0.2,1]``
    a field of the recipe and ``backbone.cifar_stem=false`` an argument of the backbone.
    """
    data: dict[str, Any] = load_yaml(resolve_config_path(config_file)) if config_file else {}
    if values:
        data = deep_merge(data, {k: v for k, v in values.items() if v is not None})
    parsed = parse_overrides(overrides or [])
    for short, long in (("method", "method_args"), ("backbone", "backbone_args")):
        if isinstance(parsed.get(short), dict):
            parsed[long] = {**parsed.get(long, {}), **parsed.pop(short)}
    data = deep_merge(data, parsed)
    return from_dict(TrainConfig, data, "config")
