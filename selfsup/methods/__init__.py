"""Methods, one file each, registered by name: ``create(name, backbone=..., **config)``.

Every module in this package is imported here, so adding a method means adding one file.
"""

import importlib
import pkgutil

from .base import Method, MethodConfig, Progress, RecipeChoice
from .registry import available, create, descriptions, get, make_config, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Method", "MethodConfig", "Progress", "RecipeChoice", "available", "create", "descriptions", "get", "make_config", "register"]
