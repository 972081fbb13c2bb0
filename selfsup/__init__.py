"""selfsup: visual self-supervised learning — every method of the field on one small, fast engine.

Data flows one way: source -> uint8 batch -> views -> method -> loss -> engine.
"""

import os

# Idle OpenMP threads sleep instead of spinning. libgomp reads this when it loads, so it must be set
# before torch is imported (the command line and the benchmarks import selfsup first). On a busy
# machine spinning threads made small tensor ops up to 100x slower; on a quiet one the difference
# was within noise. A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import SelfsupError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["SelfsupError", "__version__", "load_backbone"]


def load_backbone(source, device="auto", encoder=None):  # noqa: ANN001, ANN201
    """A trained backbone (from a run directory, a checkpoint or an exported ``.safetensors``) in
    eval mode, with ``.preprocess`` (uint8 ``(B, H, W, 3)`` / PIL images -> its input tensor).
    See :func:`selfsup.api.load_backbone`; imported lazily so ``import selfsup`` stays fast."""
    from .api import load_backbone as _load_backbone

    return _load_backbone(source, device, encoder)
