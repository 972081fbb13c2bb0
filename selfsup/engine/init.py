"""Continued pretraining: start a run's backbone from existing weights (``init``).

With a few hundred or thousand images and no GPU, the practice of the field is to continue from a
backbone pretrained on a large dataset, not to start from random weights. ``init`` accepts:

- a torchvision or timm state dict (``.pth``/``.pt``/``.bin`` read with ``weights_only``, or a plain
  ``.safetensors``): a ResNet-18/34/50 (torchvision key names, which timm's ResNets share) or a timm
  ViT-Tiny/Small. The architecture is read from the tensors: depth, width, input channels, the stem
  (a 3x3 first convolution is the CIFAR stem), batch or layer norm; a ViT's patch size and depth.
  The ImageNet classifier (``fc.*``, ``head.*``) is left out; a ``{"state_dict": ...}`` or
  ``{"model": ...}`` wrapper and a ``module.`` prefix (DistributedDataParallel) are removed;
- a file written by ``selfsup export`` (any format), a selfsup run directory or checkpoint (the
  backbone its probes use: DINO's teacher, say);
- ``torchvision:<model>.<WEIGHTS>`` (``torchvision:resnet50.IMAGENET1K_V2``; ``<model>`` alone means
  its DEFAULT weights) or ``timm:<model>`` (``timm:vit_small_patch16_224.augreg_in21k``): downloaded
  when online (torchvision's file is read from torch's hub cache when it is there), and a clear
  error offline that says how to give a file instead.

Keys are matched strictly: any missing or unexpected key (or a shape that differs) is an error
that lists them. Only the backbone is loaded; the method's heads (projectors, predictors,
prototypes) start fresh. Every EMA target of the method (BYOL's target, MoCo's key encoder, DINO's
teacher: ``method.ema_pairs()``) is then set equal to its online network, as at construction, so
a target never starts from the random weights. The run's random-init baseline is this initial
backbone, so the gain printed at the end is what the continued pretraining added.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..config import from_dict
from ..errors import ConfigError
from ..methods import Method
from . import checkpoint as ckpt
from .build import build_method
from .config import TrainConfig
from .hardware import pick_device

# Keys of the classifier a torchvision/timm model carries; selfsup's backbones end before it.
CLASSIFIER_KEYS = ("fc.weight", "fc.bias", "head.weight", "head.bias")
_VIT_WIDTHS = {192: "vit_tiny", 384: "vit_small"}
_RESNET_DEPTHS = {(2, False): 18, (6, False): 34, (6, True): 50}


@dataclass
class InitWeights:
    """Backbone weights under selfsup's key names (``body.`` + the torchvision/timm name), the
    registered backbone and the arguments that give the matching architecture."""

    state: dict[str, torch.Tensor]
    backbone: str
    backbone_args: dict[str, Any]
    source: str
    left_out: list[str] = field(default_factory=list)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.backbone_args.items())
        dropped = f"; left out its classifier ({', '.join(self.left_out)})" if self.left_out else ""
        return f"{self.source}: {self.backbone} ({args}){dropped}"


# -- reading ------------------------------------------------------------------------------------
_CACHE: dict[tuple[str, int], InitWeights] = {}


def read_init(spec: str) -> InitWeights:
    """The weights ``spec`` names (see the module docstring); read once per process and file version."""
    path = Path(spec).expanduser()
    key = (spec, path.stat().st_mtime_ns if path.exists() else 0)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = _read(spec, path)
    return _CACHE[key]


def _read(spec: str, path: Path) -> InitWeights:
    if path.exists():
        if path.is_dir():
            return _from_run(path)
        if path.suffix == ".safetensors":
            from ..eval.export import read_export

            try:
                tensors, metadata = read_export(path)
            except Exception:  # not a selfsup export: a plain state dict
                return from_state_dict(_read_safetensors(path), str(path))
            if metadata.get("format") != "selfsup":
                tensors = {f"body.{k}": v for k, v in tensors.items()}
            args = _arch_args(json.loads(metadata["build_args"]))
            return InitWeights(tensors, metadata.get("backbone", metadata["arch"]), args, f"{path} (selfsup export)")
        state = _load_torch_file(path)
        if isinstance(state, dict) and "config" in state and "model" in state:  # a selfsup checkpoint, moved
            return _from_run(path)
        return from_state_dict(_unwrap(state, path), str(path))
    if spec.startswith("torchvision:"):
        return _torchvision(spec)
    if spec.startswith("timm:"):
        return _timm(spec)
    raise ConfigError(
        f"init '{spec}' is neither a file nor a run directory, nor a name such as torchvision:resnet50.IMAGENET1K_V2 "
        "or timm:vit_small_patch16_224. Give a state dict (.pth, .safetensors), a `selfsup export`, or a run."
    )


def load_method(path_or_run: str | Path, device: str | torch.device = "cpu", random_init: bool = False) -> tuple[Method, TrainConfig, int]:
    """Rebuild a run's method from a checkpoint (or a run directory's newest checkpoint).

    With ``random_init`` the weights are left as initialized from the run's seed (or, for a run
    that started from ``init`` weights, as that initial backbone): the baseline every probe is
    compared against, so the gain is what the run's training added.
    """
    path = ckpt.resolve_checkpoint(path_or_run)
    state = ckpt.load_checkpoint(path, map_location="cpu")
    if "config" not in state or "model" not in state:
        raise ckpt.CheckpointError(f"'{path}' is not a selfsup training checkpoint (no config or model).")
    config = from_dict(TrainConfig, state["config"], f"config in {path.name}")
    image_size = int(state.get("image_size", 32))
    method = build_method(config, image_size)
    if not random_init:
        method.load_state_dict(state["model"])
    elif config.init:
        try:
            apply_init(method, config.init)
        except ConfigError as exc:
            raise ConfigError(f"{exc}\nThe baseline of this run is its initial backbone ({config.init}); "
                              "give the file again, or skip the baseline with --no-baseline.") from None
    return method.to(pick_device(str(device))).eval(), config, image_size


def _from_run(path: Path) -> InitWeights:
    from ..nn.backbones import available_backbones, find_encoder

    method, config, _ = load_method(path, "cpu")
    backbone = find_encoder(method, None)
    name = config.backbone if backbone.arch == method.backbone.arch else backbone.arch
    if name not in available_backbones():
        raise ConfigError(
            f"init '{path}': the backbone its probes use ({backbone.arch}) is not one selfsup can build alone; "
            "export one of its encoders (`selfsup export --encoder ... --format selfsup`) and give that file."
        )
    return InitWeights(
        {k: v.detach().clone() for k, v in backbone.state_dict().items()}, name, _arch_args(backbone.build_args),
        f"{path} ({config.method} run)",
    )


def _arch_args(build_args: dict[str, Any]) -> dict[str, Any]:
    """Build arguments without ``image_size``: the run sets it, and the architecture does not depend
    on it once the stem (``cifar_stem``) and a ViT's patch size are fixed."""
    return {k: v for k, v in build_args.items() if k != "image_size"}


def _load_torch_file(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickles with code, damaged files, other formats
        import pickle

        reason = ("torch.load(weights_only=True) refuses it: not a torch file, or a pickle of more than tensors"
                  if isinstance(exc, pickle.UnpicklingError) else f"{type(exc).__name__}: {str(exc).strip()[:200]}")
        raise ConfigError(
            f"init '{path}' cannot be read as a state dict ({reason}). Save one with torch.save(model.state_dict(), path)."
        ) from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise ConfigError(f"init '{path}' is not a readable .safetensors file: {exc}") from None


def _unwrap(state: Any, path: Path | str) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"init '{path}' does not hold a state dict (a mapping of parameter names to tensors).")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


# -- plain torchvision / timm state dicts ---------------------------------------------------------
def from_state_dict(state: dict[str, torch.Tensor], source: str) -> InitWeights:
    """A torchvision/timm ResNet or timm ViT state dict as :class:`InitWeights` (architecture read
    from the tensors; the classifier left out)."""
    left_out = [k for k in CLASSIFIER_KEYS if k in state]
    body = {k: v for k, v in state.items() if k not in CLASSIFIER_KEYS}
    if "conv1.weight" in body and any(k.startswith("layer4.") for k in body):
        name, args = _resnet_arch(body, source)
    elif "patch_embed.proj.weight" in body and "cls_token" in body:
        name, args = _vit_arch(body, source)
    else:
        raise ConfigError(
            f"init '{source}' is neither a ResNet (conv1, layer1-4) nor a ViT (patch_embed, cls_token) state dict; "
            f"its first keys: {', '.join(list(state)[:6])}."
        )
    return InitWeights({f"body.{k}": v for k, v in body.items()}, name, args, source, left_out)


def _resnet_arch(state: dict[str, torch.Tensor], source: str) -> tuple[str, dict[str, Any]]:
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"layer3\.(\d+)\.", k))}
    bottleneck = "layer1.0.conv3.weight" in state
    depth = _RESNET_DEPTHS.get((len(blocks), bottleneck))
    if depth is None:
        raise ConfigError(
            f"init '{source}' is a ResNet with {len(blocks)} blocks in layer3 ({'bottleneck' if bottleneck else 'basic'} "
            "blocks); selfsup builds resnet18, resnet34 and resnet50."
        )
    conv1 = state["conv1.weight"]
    # The width: the first of these present (a missing key is reported by the strict load).
    width = next((int(state[k].shape[0]) for k in ("layer1.0.conv1.weight", "layer1.0.bn1.weight") if k in state), 64)
    return f"resnet{depth}", {
        "in_channels": int(conv1.shape[1]),
        "cifar_stem": int(conv1.shape[-1]) == 3,
        "norm": "bn" if "bn1.running_mean" in state else "ln",
        "width": width,
    }


def _vit_arch(state: dict[str, torch.Tensor], source: str) -> tuple[str, dict[str, Any]]:
    width = int(state["cls_token"].shape[-1])
    if width not in _VIT_WIDTHS:
        raise ConfigError(f"init '{source}' is a ViT of width {width}; selfsup builds ViT-Tiny (192) and ViT-Small (384).")
    proj = state["patch_embed.proj.weight"]
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    args: dict[str, Any] = {"in_channels": int(proj.shape[1]), "patch_size": int(proj.shape[-1])}
    if depth != 12:
        args["depth"] = depth
    return _VIT_WIDTHS[width], args


# -- names: torchvision:<model>.<WEIGHTS>, timm:<model> ------------------------------------------
def _download(spec: str, save_line: str, fetch: Callable[[], Any], cached: str | None = None) -> Any:
    """``fetch()``, with a default socket timeout so an unreachable server fails instead of hanging;
    offline (``SELFSUP_OFFLINE``) or when it fails, an error that says how to give a file instead
    (``save_line``: the Python that saves one; ``cached``: where it is looked for first)."""
    reason = "SELFSUP_OFFLINE is set" if os.environ.get("SELFSUP_OFFLINE", "") not in ("", "0") else ""
    if not reason:
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            return fetch()
        except ConfigError:
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc)[:150]}"
        finally:
            socket.setdefaulttimeout(old)
    where = f" (or place it at {cached}, where it is looked for first)" if cached else ""
    raise ConfigError(
        f"init '{spec}' needs a download, which is not possible here ({reason}). On a machine with internet, run\n"
        f"  python -c \"{save_line}\"\n"
        f"and copy the file here; then pass --init with its path{where}."
    )


def _torchvision(spec: str) -> InitWeights:
    import torchvision

    name, _, weights_name = spec.removeprefix("torchvision:").partition(".")
    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        raise ConfigError(f"init '{spec}': torchvision has no model '{name}' with weights (e.g. resnet50).") from None
    try:
        weights = enum[weights_name or "DEFAULT"]
    except KeyError:
        raise ConfigError(f"init '{spec}': {name} has no weights '{weights_name}'; it has {', '.join(enum.__members__)}.") from None
    from urllib.parse import urlparse

    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    if cached.is_file():
        return from_state_dict(_unwrap(_load_torch_file(cached), cached), f"{spec} ({cached})")
    save = f"import torch, torchvision; torch.save(torchvision.models.{name}(weights='{weights.name}').state_dict(), '{name}.pth')"
    return from_state_dict(_download(spec, save, lambda: weights.get_state_dict(progress=False), str(cached)), spec)


def _timm(spec: str) -> InitWeights:
    name = spec.removeprefix("timm:")
    save = f"import torch, timm; torch.save(timm.create_model('{name}', pretrained=True).state_dict(), '{name.split('.')[0]}.pth')"

    def create() -> nn.Module:
        import timm

        try:
            return timm.create_model(name, pretrained=True)
        except RuntimeError as exc:
            if "unknown model" in str(exc).lower():
                raise ConfigError(f"init '{spec}': timm has no model '{name}'.") from None
            raise

    return from_state_dict(_download(spec, save, create).state_dict(), spec)


# -- using them --------------------------------------------------------------------------------
def init_architecture(backbone: str | None, backbone_args: dict[str, Any], spec: str) -> tuple[str, dict[str, Any]]:
    """(backbone, backbone_args) of a run that starts from ``spec``: the init's architecture, with
    any argument the config sets kept (a mismatch then fails the strict loading, listing keys)."""
    weights = read_init(spec)
    if backbone is not None and backbone != weights.backbone:
        raise ConfigError(
            f"init '{spec}' holds a {weights.backbone} backbone but the config asks for backbone '{backbone}' (from "
            f"--backbone, a config file or the bundled recipe of the method and data); pass --backbone "
            f"{weights.backbone}, or give weights of that backbone."
        )
    return weights.backbone, {**weights.backbone_args, **backbone_args}


def _resample_pos_embed(state: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ViT's position embedding resampled to the backbone's patch grid (the run's image size may
    differ from the one the weights were trained at), as timm does when it loads pretrained weights."""
    key = "body.pos_embed"
    if key not in state or key not in model_state or state[key].shape == model_state[key].shape:
        return state
    from timm.layers import resample_abs_pos_embed

    grid = int(round((model_state[key].shape[1] - 1) ** 0.5))
    resampled = resample_abs_pos_embed(state[key], new_size=(grid, grid), num_prefix_tokens=1)
    return {**state, key: resampled}


def load_backbone_strict(backbone: nn.Module, weights: InitWeights, spec: str) -> None:
    """Load ``weights`` into ``backbone``; any missing, unexpected or differently shaped key is a
    :class:`ConfigError` that lists them."""
    model_state = backbone.state_dict()
    state = _resample_pos_embed(weights.state, model_state)
    problems = {
        "missing keys": [k for k in model_state if k not in state],
        "unexpected keys": [k for k in state if k not in model_state],
        "shapes that differ (file vs backbone)": [
            f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in model_state.items()
            if k in state and tuple(state[k].shape) != tuple(v.shape)
        ],
    }
    parts = [f"{what}: {', '.join(keys[:12])}" + (f" ... ({len(keys)} in all)" if len(keys) > 12 else "")
             for what, keys in problems.items() if keys]
    if parts:
        arch = getattr(backbone, "arch", type(backbone).__name__)
        raise ConfigError(
            f"init '{spec}' does not match the run's {arch} backbone ({weights.backbone} {weights.backbone_args} in the "
            f"file): {'; '.join(parts)}. Keys are matched strictly; leave backbone and backbone_args "
            "unset to take them from the file."
        )
    backbone.load_state_dict({k: v.to(model_state[k].dtype) for k, v in state.items()}, strict=True)


def apply_init(method: nn.Module, spec: str | None) -> None:
    """Start ``method.backbone`` from ``spec`` (nothing when None) and set every EMA target of the
    method equal to its online network, as at construction."""
    if not spec:
        return
    from ..nn.ema import ema_update

    load_backbone_strict(method.backbone, read_init(spec), spec)
    for online, target in method.ema_pairs():
        ema_update(online, target, 0.0)  # target = online: parameters and buffers


def init_note(spec: str) -> str:
    return f"selfsup: starting the backbone from {read_init(spec).describe()}; the method's heads start fresh."
