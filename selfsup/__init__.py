"""selfsup: visual self-supervised learning — every method of the field on one small, fast engine.

Data flows one way: source -> uint8 batch -> views -> method -> loss -> engine.
"""

from .errors import SelfsupError

__version__ = "0.1.0"
__all__ = ["SelfsupError", "__version__"]
