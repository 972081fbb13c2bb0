"""The training configuration: one dataclass, every field documented, unknown keys refused."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import deep_merge, from_dict, load_yaml, parse_overrides, to_dict
from ..errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

# Defaults that depend on the data source; applied to fields left unset (None / "auto").
# The built-in digits are a 2-minute CPU demo, so they get the tiny backbone.
SOURCE_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"backbone": "tiny", "epochs": 30, "batch_size": 256, "eval_every": 10},
}
GENERIC_DEFAULTS: dict[str, Any] = {"backbone": "resnet18", "epochs": 100, "batch_size": 256, "eval_every": 10}


@dataclass
class TrainConfig:
    """Everything a pretraining run needs. ``None`` means "the default of the method or the data"
    (resolved by :meth:`resolve` and written, resolved, to the run's ``config.yaml``)."""

    # what to train
    method: str = "simclr"  # a registered method (`selfsup methods`)
    method_args: dict[str, Any] = field(default_factory=dict)  # fields of the method's Config
    backbone: str | None = None  # registered backbone; default: the method's (MAE: vit_small), else resnet18 (tiny for the digits demo)
    backbone_args: dict[str, Any] = field(default_factory=dict)  # e.g. cifar_stem, norm, patch_size
    # data
    data: str = "digits"  # digits | cifar10 | cifar100 | a folder | a packed .npz
    data_dir: str | None = None  # where built-in datasets are searched first
    val_data: str | None = None  # labelled data for kNN monitoring; default: the source's test split
    image_size: int | None = None  # stored side of folder images (default 64); built-ins keep theirs
    train_subset: int | None = None  # train on a fixed random subset of this many images
    max_image_pixels: int = 64_000_000  # decompression-bomb guard: larger images are skipped, with a message
    test_subset: int | None = None  # monitor on a fixed random subset of the test split
    recipe: str | None = None  # augmentation recipe; default: the method's
    augment: dict[str, Any] = field(default_factory=dict)  # overrides of the recipe's fields
    num_workers: int = 4  # decoding workers for streamed (large) folders
    # optimisation
    epochs: int | None = None
    max_steps: int | None = None  # stop after this many steps (smoke tests, benchmarks)
    batch_size: int | None = None  # global batch, over all processes
    optimizer: Literal["sgd", "lars", "adamw"] | None = None  # default: the method's
    lr: float | None = None  # base learning rate per 256 images; default: the method's
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"  # lr = base * B / 256 (linear)
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    warmup_epochs: float | None = None  # linear warmup; default min(10, epochs / 10)
    weight_decay: float | None = None  # default: the method's
    weight_decay_end: float | None = None  # cosine weight-decay schedule to this value (DINO)
    momentum: float = 0.9  # SGD/LARS momentum
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
    seed: int = 0
    # several processes (torchrun; docs/distributed.md)
    sync_bn: bool | None = None  # BN over the global batch across processes; None: the method's paper's choice
    # evaluation during training
    eval_every: int | None = None  # kNN on the test split every N epochs (0: only at the end)
    knn_k: int = 200
    knn_temperature: float = 0.1
    online_probe: bool = False  # train a linear classifier on detached features (solo-learn style)
    # run directory, logging, checkpoints
    run_dir: str = "runs"
    name: str | None = None  # run name; default <method>-<data>-<time>
    log_every: int = 20  # steps between logged metrics
    checkpoint_every: int = 1  # epochs between checkpoints
    checkpoint_every_steps: int = 0  # also every N optimizer steps (long epochs, pre-emptible jobs); 0: off
    keep_checkpoints: int = 2  # newest checkpoints kept
    skip_nonfinite: bool = False  # skip steps whose loss is NaN/Inf instead of stopping
    progress: bool = True  # progress bar

    def method_defaults(self) -> dict[str, Any]:
        from ..methods import get

        return get(self.method).optim_defaults_for(self.default_backbone())

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
        optim = {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "grad_clip": None, "adamw_betas": (0.9, 0.999),
                 **self.method_defaults()}
        values["backbone"] = self.default_backbone()
        for key, value in {**GENERIC_DEFAULTS, **source, **optim}.items():
            if key in values and values[key] is None:
                values[key] = value
        # Backbone options the method needs (e.g. CPC's layer norm) unless the config sets them.
        values["backbone_args"] = {**get(self.method).backbone_defaults, **values["backbone_args"]}
        if values["warmup_epochs"] is None:
            values["warmup_epochs"] = min(10.0, values["epochs"] / 10)
        resolved = from_dict(TrainConfig, values, "config")
        resolved.validate()
        return resolved

    def validate(self) -> None:
        def positive(name: str, allow_none: bool = True) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if value is None or value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}.")

        for name in ("epochs", "batch_size", "max_steps", "train_subset", "test_subset", "image_size", "max_image_pixels"):
            positive(name)
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}.")
        for name in ("weight_decay", "weight_decay_end", "warmup_epochs", "min_lr_ratio"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}.")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"grad_clip must be > 0 (or null to disable), got {self.grad_clip}.")
        if self.adamw_betas is not None and not all(0.0 <= beta < 1.0 for beta in self.adamw_betas):
            raise ConfigError(f"adamw_betas must be two numbers in [0, 1), got {list(self.adamw_betas)} (e.g. [0.9, 0.999]).")
        if self.knn_k <= 0 or self.knn_temperature <= 0:
            raise ConfigError(f"knn_k and knn_temperature must be > 0, got {self.knn_k} and {self.knn_temperature}.")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}.")
        if self.log_every <= 0 or self.checkpoint_every < 0 or self.checkpoint_every_steps < 0 or self.keep_checkpoints < 1:
            raise ConfigError(
                "log_every must be > 0, checkpoint_every and checkpoint_every_steps >= 0 and keep_checkpoints >= 1; got "
                f"{self.log_every}, {self.checkpoint_every}, {self.checkpoint_every_steps} and {self.keep_checkpoints}."
            )
        if self.eval_every is not None and self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0, got {self.eval_every}.")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path, or the name of a bundled config (``simclr_cifar10`` -> configs/simclr_cifar10.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = CONFIG_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if bundled.is_file():
        return bundled
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    from ..errors import closest

    raise ConfigError(
        f"config '{name_or_path}' is neither a file nor a bundled config.{closest(name_or_path, names)} "
        f"Bundled: {', '.join(names)}."
    )


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
