"""Using a trained representation from Python: :func:`load_backbone`.

This module sits beside the command line (it may use the engine to rebuild a run's method), and
is imported lazily by ``selfsup.load_backbone`` so that ``import selfsup`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .nn.backbones import find_encoder


class Representation(nn.Module):
    """A method's ``representation`` as a module, for methods whose features are not their
    ``backbone`` alone (e.g. CMC's concatenation of two encoders)."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method
        self.feature_dim = getattr(method, "feature_dim", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.representation(x)


def uses_own_representation(method: nn.Module) -> bool:
    """True when the method overrides ``representation`` (its features are more than ``backbone``)."""
    from .methods import Method

    return type(method).representation is not Method.representation


def load_backbone(source: str | Path, device: str | torch.device = "auto", encoder: str | None = None) -> nn.Module:
    """Load a trained backbone for inference, in eval mode, with its preprocessing.

    ``source`` is a run directory (its newest checkpoint), a checkpoint file, or a
    ``.safetensors`` file written by ``selfsup export``. The returned module maps the network
    input to features ``(B, feature_dim)`` and carries ``.preprocess``, a callable that takes uint8
    ``(B, H, W, 3)`` images (tensor or array), a PIL image, or a list of PIL images / paths, and
    returns the normalized input on the module's device::

        model = selfsup.load_backbone("runs/simclr-cifar10")
        with torch.no_grad():
            features = model(model.preprocess(images))

    For a run, the module is the backbone the method's probes use (``method.eval_backbone``, a
    :class:`~selfsup.nn.backbones.Backbone`: the trained backbone, or DINO's teacher) or, for a method whose representation is more than its backbone (CMC), a
    :class:`Representation` of the whole method; ``encoder`` picks another backbone of the method
    by attribute name instead.
    """
    from .engine import build_recipe, load_method
    from .engine.hardware import pick_device
    from .eval.export import Preprocess, attach_preprocess, load_export

    torch_device = pick_device(str(device))
    path = Path(source).expanduser()
    if path.suffix == ".safetensors":
        return load_export(path, torch_device)
    method, config, image_size = load_method(path, torch_device)
    crop = build_recipe(config, method, image_size).views[0].size
    own = encoder is None and uses_own_representation(method)
    module = Representation(method) if own else find_encoder(method, encoder)
    return attach_preprocess(module.eval(), Preprocess(method.eval_transform, image_size, crop, torch_device))
