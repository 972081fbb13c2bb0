"""selfsup: visual self-supervised learning — every method of the field on one small, fast engine.

Data flows one way: source -> uint8 batch -> views -> method -> loss -> engine.
"""

from .errors import SelfsupError

__version__ = "0.1.0"
__all__ = ["SelfsupError", "__version__", "load_backbone"]


def load_backbone(source, device="auto", encoder=None):  # noqa: ANN001, ANN201
    """A trained backbone (from a run directory, a checkpoint or an exported ``.safetensors``) in
    eval mode, with ``.preprocess`` (uint8 ``(B, H, W, 3)`` / PIL images -> its input tensor).
    See :func:`selfsup.api.load_backbone`; imported lazily so ``import selfsup`` stays fast."""
    from .api import load_backbone as _load_backbone

    return _load_backbone(source, device, encoder)
