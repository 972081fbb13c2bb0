"""Backbones by name: torchvision ResNets (with the CIFAR stem for small images), timm ViTs and a
tiny convnet for fast CPU tests. Every backbone maps images ``(B, C, H, W)`` to features
``(B, feature_dim)`` and reports ``feature_dim``."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError, closest

SMALL_IMAGE = 64


class Backbone(nn.Module):
    """A feature extractor: ``forward(x) -> (B, feature_dim)``.

    ``arch`` and ``build_args`` are what :func:`create_backbone` needs to rebuild it, so a saved
    run can recreate its backbone and exports can name their torchvision/timm counterpart.
    """

    def __init__(self, body: nn.Module, feature_dim: int, arch: str, build_args: dict[str, Any]) -> None:
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim
        self.arch = arch
        self.build_args = build_args

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


_BACKBONES: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    def decorator(builder: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _BACKBONES[name] = builder
        return builder

    return decorator


def available_backbones() -> list[str]:
    return sorted(_BACKBONES)


def is_vit(backbone: nn.Module | str) -> bool:
    """Whether a backbone (or a backbone name) is a vision transformer."""
    arch = backbone if isinstance(backbone, str) else getattr(backbone, "arch", "")
    return str(arch).startswith("vit")


def max_drop_path(module: nn.Module) -> float:
    """The highest stochastic-depth rate of a model's blocks (timm's ``DropPath.drop_prob``; 0 without any)."""
    return float(max((m.drop_prob for m in module.modules() if hasattr(m, "drop_prob")), default=0.0))


def without_drop_path(backbone: Backbone) -> Backbone:
    """``backbone`` with its stochastic depth turned off, also in the ``build_args`` that rebuild it."""
    for module in backbone.modules():
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    if "drop_path_rate" in backbone.build_args:
        backbone.build_args = {**backbone.build_args, "drop_path_rate": 0.0}
    return backbone


def create_backbone(name: str, image_size: int = 32, in_channels: int = 3, **kwargs: Any) -> Backbone:
    """Build backbone ``name`` for ``image_size`` px images with ``in_channels`` input channels."""
    if name not in _BACKBONES:
        raise ConfigError(
            f"unknown backbone '{name}'.{closest(name, _BACKBONES)} Available: {', '.join(available_backbones())}."
        )
    return _BACKBONES[name](image_size=image_size, in_channels=in_channels, **kwargs)


def _check_norm(norm: str) -> None:
    if norm not in ("bn", "ln"):
        raise ConfigError(f"backbone norm must be 'bn' or 'ln', got '{norm}'.")


def layer_norm_2d(channels: int) -> nn.Module:
    """Layer normalisation over (C, H, W) of each sample, as CPC v2 uses instead of batch norm."""
    return nn.GroupNorm(1, channels)


def _scaled_resnet(depth: int, width: int, **kwargs: Any) -> nn.Module:
    """torchvision's ResNet with stage widths ``width * (1, 2, 4, 8)`` instead of ``64 * (1, 2, 4, 8)``;
    the stem keeps 64 channels, as in CMC's half-width encoders (HobbitLong/CMC, ``is_half``)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    block, layers = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3])}[depth]

    class ScaledResNet(ResNet):
        def _make_layer(self, block, planes, blocks, stride=1, dilate=False):  # noqa: ANN001, ANN202
            return super()._make_layer(block, max(1, planes * width // 64), blocks, stride, dilate)

    return ScaledResNet(block, layers, **kwargs)


def _resnet(
    depth: int,
    image_size: int,
    in_channels: int,
    cifar_stem: bool | None = None,
    norm: str = "bn",
    zero_init_residual: bool = True,
    width: int = 64,
) -> Backbone:
    import torchvision

    _check_norm(norm)
    if width < 1:
        raise ConfigError(f"backbone width must be >= 1 (64 is the standard ResNet), got {width}.")
    norm_layer = layer_norm_2d if norm == "ln" else None
    # Zero-initialising the last BN of each residual block (Goyal et al. 2017) helps large-batch
    # training and is what the SimCLR/BYOL/MoCo reference ResNets do.
    kwargs = dict(norm_layer=norm_layer, zero_init_residual=zero_init_residual and norm == "bn")
    if width == 64:
        model = getattr(torchvision.models, f"resnet{depth}")(weights=None, **kwargs)
    else:
        model = _scaled_resnet(depth, width, **kwargs)
    cifar_stem = image_size <= SMALL_IMAGE if cifar_stem is None else cifar_stem
    if cifar_stem:
        # The CIFAR stem of the SimCLR paper (appendix B.9): 3x3 stride-1 conv, no max-pool.
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    feature_dim = model.inplanes  # channels out of the last stage (512 * expansion at width 64)
    model.fc = nn.Identity()
    args = dict(image_size=image_size, in_channels=in_channels, cifar_stem=cifar_stem, norm=norm, width=width)
    return Backbone(model, feature_dim, f"resnet{depth}", args)


for _depth in (18, 34, 50):
    register_backbone(f"resnet{_depth}")(partial(_resnet, _depth))


class TinyConvNet(nn.Sequential):
    """Six 3x3 conv layers (widths w, 2w, 4w), norm + ReLU, two 2x poolings, global average pool.

    About 0.3 M parameters at w=32: the fast backbone for CPU tests and the built-in demo.
    """

    def __init__(self, in_channels: int = 3, width: int = 32, norm: str = "bn") -> None:
        widths = [width, width, 2 * width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        previous = in_channels
        for i, channels in enumerate(widths):
            layers += [
                nn.Conv2d(previous, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels) if norm == "bn" else layer_norm_2d(channels),
                nn.ReLU(inplace=True),
            ]
            if i in (1, 3):
                layers.append(nn.MaxPool2d(2))
            previous = channels
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
        self.out_channels = previous


@register_backbone("tiny")
def tiny(image_size: int = 32, in_channels: int = 3, width: int = 32, norm: str = "bn") -> Backbone:
    _check_norm(norm)
    body = TinyConvNet(in_channels, width, norm)
    args = dict(image_size=image_size, in_channels=in_channels, width=width, norm=norm)
    return Backbone(body, body.out_channels, "tiny", args)


def _vit(
    timm_name: str, image_size: int, in_channels: int, patch_size: int | None = None, norm: str = "ln", **kwargs: Any
) -> Backbone:
    if norm != "ln":  # accepted so that methods asking for layer norm (CPC) run on ViTs as they are
        raise ConfigError(f"ViTs normalize with layer norm only; backbone norm must be 'ln', got '{norm}'.")
    import timm

    patch_size = patch_size or (4 if image_size <= SMALL_IMAGE else 16)
    model = timm.create_model(
        timm_name,
        pretrained=False,
        num_classes=0,
        img_size=image_size,
        patch_size=patch_size,
        in_chans=in_channels,
        dynamic_img_size=True,  # local crops of multi-crop are smaller than the global ones
        **kwargs,
    )
    args = dict(image_size=image_size, in_channels=in_channels, patch_size=patch_size, **kwargs)
    return Backbone(model, model.num_features, timm_name, args)


# ViT-Tiny (192-d, 12 blocks, 3 heads) and ViT-Small (384-d, 12 blocks, 6 heads) from timm; patch 4
# for <= 64 px images, else 16.
register_backbone("vit_tiny")(partial(_vit, "vit_tiny_patch16_224"))
register_backbone("vit_small")(partial(_vit, "vit_small_patch16_224"))


def forward_multicrop(backbone: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """Features of all ``views``, concatenated in order, with one backbone pass per run of
    consecutive views of the same size (multi-crop: SwAV's multi-resolution forward, DINO's
    ``MultiCropWrapper``). Views of one size share a batch, so BN sees them together."""
    outputs, start = [], 0
    for end in range(1, len(views) + 1):
        if end == len(views) or views[end].shape[-2:] != views[start].shape[-2:]:
            outputs.append(backbone(torch.cat(views[start:end])))
            start = end
    return torch.cat(outputs)


def small_images(backbone: Backbone) -> bool:
    """Whether ``backbone`` was built for images of at most ``SMALL_IMAGE`` px (CIFAR-scale defaults)."""
    return int(backbone.build_args.get("image_size", 224)) <= SMALL_IMAGE


def find_encoder(method: nn.Module, name: str | None) -> nn.Module:
    """The backbone ``name`` of a method (a dotted attribute path, e.g. ``backbone.body.encoders.0``);
    by default the one its probes use (``method.eval_backbone``: e.g. DINO's teacher)."""
    if name is None:
        return getattr(method, "eval_backbone", method.backbone)
    module: nn.Module = method
    for part in name.split("."):
        module = getattr(module, part, None)  # type: ignore[assignment]
        if module is None:
            break
    if not isinstance(module, Backbone):
        choices = sorted(n for n, m in method.named_modules() if isinstance(m, Backbone) and n)
        raise ConfigError(
            f"method '{getattr(method, 'name', type(method).__name__)}' has no backbone '{name}'. "
            f"Its backbones: {', '.join(choices) or 'none'}."
        )
    return module
