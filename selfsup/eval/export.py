"""Take a backbone elsewhere: its weights under the key names of plain torchvision / timm models,
in a ``.safetensors`` file whose metadata says how to build the matching model.

A selfsup :class:`~selfsup.nn.backbones.Backbone` wraps the torchvision or timm model in ``.body``
with the classifier removed, so the export strips ``body.`` and leaves out the classifier:

- ``torchvision``: ``m = torchvision.models.resnet50(); m.fc = torch.nn.Identity();
  m.load_state_dict(load_file(path), strict=True)``;
- ``timm``: ``m = timm.create_model("resnet50", num_classes=0)`` (timm's ResNets use the same key
  names as torchvision's) or, for ViTs, ``timm.create_model("vit_small_patch16_224", num_classes=0,
  img_size=..., patch_size=...)`` with the arguments recorded in the metadata;
- ``selfsup``: any backbone (also the tiny test net), keys as in selfsup, for
  :func:`selfsup.load_backbone`.

The one architectural difference a plain model may need is the **CIFAR stem** (a 3x3 stride-1
first convolution and no max-pool, used for images of 64 px or less): the metadata records it
(``cifar_stem``) and gives the two lines that patch a plain model (``patch``), before loading.
Likewise for other input channel counts and for ResNets with layer norm (CPC v2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, SelfsupError
from ..nn.backbones import Backbone, available_backbones, create_backbone

FORMATS = ("torchvision", "timm", "selfsup")
_RESNETS = ("resnet18", "resnet34", "resnet50")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


_TIMM_NAMES = ("vit_tiny_patch16_224", "vit_small_patch16_224")  # the arch of the registered ViTs


class ExportError(SelfsupError):
    """A backbone that has no counterpart in the requested format, or an unreadable export."""


# -- what a plain script must build -----------------------------------------------------------
def _resnet_recipe(backbone: Backbone, library: str) -> tuple[str, list[str]]:
    args = backbone.build_args
    channels = int(args.get("in_channels", 3))
    norm = "" if args.get("norm", "bn") == "bn" else "norm_layer=lambda c: torch.nn.GroupNorm(1, c)"
    if library == "torchvision":
        build = f"model = torchvision.models.{backbone.arch}({norm}); model.fc = torch.nn.Identity()"
    else:
        extra = f", {norm}" if norm else ""
        build = f"model = timm.create_model('{backbone.arch}', num_classes=0{extra})"
    patch = []
    if args.get("cifar_stem"):
        patch = [
            f"model.conv1 = torch.nn.Conv2d({channels}, 64, kernel_size=3, stride=1, padding=1, bias=False)",
            "model.maxpool = torch.nn.Identity()",
        ]
    elif channels != 3:
        patch = [f"model.conv1 = torch.nn.Conv2d({channels}, 64, kernel_size=7, stride=2, padding=3, bias=False)"]
    return build, patch


def _vit_recipe(backbone: Backbone) -> tuple[str, list[str]]:
    args = dict(backbone.build_args)
    kwargs = {"num_classes": 0, "img_size": args.pop("image_size"), "patch_size": args.pop("patch_size")}
    channels = args.pop("in_channels", 3)
    if channels != 3:
        kwargs["in_chans"] = channels
    kwargs.update(args)
    text = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"model = timm.create_model('{backbone.arch}', {text})", []


def plain_model_recipe(backbone: Backbone, fmt: str) -> tuple[str, list[str]]:
    """(the line that builds the plain model, the lines that patch it) for ``fmt``."""
    arch, vit = backbone.arch, backbone.arch.startswith("vit")
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; use one of {', '.join(FORMATS)}.")
    if fmt != "selfsup" and arch in _RESNETS:
        return _resnet_recipe(backbone, fmt)
    if fmt == "timm" and vit:
        return _vit_recipe(backbone)
    if fmt != "selfsup":
        composite = ", or export one of its encoders with --encoder (this backbone is a composite)."
        hint = "timm." if vit else "selfsup" + ("." if arch in available_backbones() else composite)
        raise ExportError(f"backbone '{arch}' has no {fmt} counterpart. Use --format {hint}")
    if arch not in available_backbones() and arch not in _TIMM_NAMES:
        raise ExportError(f"backbone '{arch}' is not a registered backbone, so no file can rebuild it; "
                          "export one of its encoders with --encoder.")
    return f"model = selfsup.load_backbone(path)  # {arch}, in eval mode, with model.preprocess", []


def export_state_dict(backbone: Backbone, fmt: str) -> dict[str, torch.Tensor]:
    """The backbone's tensors under the key names of ``fmt`` (contiguous CPU copies)."""
    plain_model_recipe(backbone, fmt)  # refuses formats without a counterpart
    state = backbone.state_dict()
    if fmt != "selfsup":
        state = {k.removeprefix("body."): v for k, v in state.items()}
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def export_backbone(
    backbone: Backbone,
    fmt: str,
    out: str | Path,
    preprocess: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    name: str | None = None,
) -> Path:
    """Write ``backbone`` to ``out`` (.safetensors) in ``fmt`` with self-describing metadata.

    ``preprocess`` describes the input: ``image_size`` (side the images are resized to),
    ``crop_size`` (centre crop), ``mean``/``std`` (per-channel normalization of [0, 1] RGB);
    ``extra`` is recorded as well (method, source run, step...). ``name`` is the backbone's
    registered name (``vit_tiny``; default its ``arch``), which :func:`load_export` rebuilds.
    """
    from safetensors.torch import save_file

    build, patch = plain_model_recipe(backbone, fmt)
    state = export_state_dict(backbone, fmt)
    preprocess = {
        "image_size": backbone.build_args.get("image_size"), "crop_size": backbone.build_args.get("image_size"),
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **(preprocess or {}),
    }
    load = "model.load_state_dict(safetensors.torch.load_file(path), strict=True)"
    metadata = {
        "format": fmt,
        "arch": backbone.arch,
        "backbone": name or backbone.arch,
        "build_args": json.dumps(backbone.build_args),
        "feature_dim": str(backbone.feature_dim),
        "cifar_stem": json.dumps(bool(backbone.build_args.get("cifar_stem", False))),
        "build": build,
        "patch": "\n".join(patch),
        "classifier": "not included: the model's head must be an identity (torchvision: model.fc = "
        "torch.nn.Identity(); timm: num_classes=0), so strict loading works and model(x) returns the features",
        "usage": build if fmt == "selfsup" else "\n".join([build, *patch, load, "model.eval()"]),
        "preprocess": json.dumps(preprocess),
        **{k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (extra or {}).items()},
    }
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"export to a .safetensors file, got '{out}'.")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=metadata)
    return out


def read_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of an exported file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"'{path}' does not exist.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise ExportError(f"'{path}' is not a readable .safetensors file: {exc}") from None
    if "arch" not in metadata or "build_args" not in metadata:
        raise ExportError(f"'{path}' was not written by `selfsup export` (no arch/build_args in its metadata).")
    return tensors, metadata


# -- preprocessing ----------------------------------------------------------------------------
class Normalize:
    """uint8 ``(B, H, W, 3)`` -> float ``(B, 3, H, W)``: [0, 1], then per-channel mean/std."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from ..augment import ops

        return ops.normalize(ops.to_float(images), self.mean, self.std)


class Preprocess:
    """Images -> the backbone's input tensor, as its probes saw them.

    Accepts a uint8 tensor or array ``(B, H, W, 3)`` or ``(H, W, 3)``, a PIL image, or a list of
    PIL images / file paths. Images of another size are resized (shorter side) and centre-cropped to
    ``image_size`` as the data loaders do, then centre-cropped to ``crop_size`` and turned into the
    network input by ``transform`` (the method's ``eval_transform``). The result is on ``device``.
    """

    def __init__(
        self, transform: Callable[[torch.Tensor], torch.Tensor], image_size: int, crop_size: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.transform = transform
        self.image_size = int(image_size)
        self.crop_size = int(crop_size or image_size)
        self.device = torch.device(device)

    def to_uint8(self, images: Any) -> torch.Tensor:
        """Any accepted input -> uint8 ``(B, image_size, image_size, 3)`` on the CPU or device."""
        from PIL import Image

        from ..data.imageset import decode_to_array, resize_center_crop, to_rgb

        if isinstance(images, (Image.Image, str, Path)):
            images = [images]
        if isinstance(images, (list, tuple)):
            # Files are decoded as the data loaders do (JPEG draft scaling included), so that a file
            # gives the tensor it gives when embedded or probed as part of a folder.
            return torch.from_numpy(np.stack([
                decode_to_array(item, self.image_size) if isinstance(item, (str, Path))
                else np.asarray(resize_center_crop(to_rgb(item), self.image_size), dtype=np.uint8)
                for item in images
            ]))
        tensor = torch.as_tensor(images)
        if tensor.dim() == 3:
            tensor = tensor[None]
        if tensor.dtype != torch.uint8 or tensor.dim() != 4 or tensor.shape[-1] != 3:
            raise ConfigError(
                f"preprocess takes uint8 images (B, H, W, 3), a PIL image or a list of them; got {tensor.dtype} "
                f"{tuple(tensor.shape)}."
            )
        if tuple(tensor.shape[1:3]) != (self.image_size, self.image_size):
            return self.to_uint8([Image.fromarray(a) for a in tensor.cpu().numpy()])
        return tensor

    def __call__(self, images: Any) -> torch.Tensor:
        from .knn import center_crop

        batch = self.to_uint8(images).to(self.device)
        return self.transform(center_crop(batch, self.crop_size))

    def __repr__(self) -> str:
        return f"Preprocess(image_size={self.image_size}, crop_size={self.crop_size}, transform={self.transform!r})"


def load_export(path: str | Path, device: torch.device | str = "cpu") -> Backbone:
    """Rebuild a selfsup backbone from an exported file (any format), in eval mode, with
    ``.preprocess`` from the metadata."""
    tensors, metadata = read_export(path)
    args = json.loads(metadata["build_args"])
    backbone = create_backbone(metadata.get("backbone", metadata["arch"]), **args)
    if metadata.get("format") != "selfsup":
        tensors = {f"body.{k}": v for k, v in tensors.items()}
    try:
        backbone.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ExportError(f"'{path}' does not match a {metadata['arch']} backbone: {str(exc).splitlines()[0]}") from None
    info = json.loads(metadata.get("preprocess", "{}"))
    transform = Normalize(info.get("mean", IMAGENET_MEAN), info.get("std", IMAGENET_STD))
    size = int(info.get("image_size") or args.get("image_size", 32))
    return attach_preprocess(backbone.to(device).eval(), Preprocess(transform, size, info.get("crop_size"), device))


def attach_preprocess(module: nn.Module, preprocess: Preprocess) -> nn.Module:
    """Give ``module`` its ``.preprocess``: ``features = module(module.preprocess(images))``."""
    module.preprocess = preprocess
    return module
