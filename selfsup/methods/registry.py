"""The method registry: ``create(name, backbone=..., **config)`` and ``available()``."""

from __future__ import annotations

from typing import Any

from ..config import from_dict
from ..errors import ConfigError, closest
from ..nn.backbones import Backbone
from .base import Method, MethodConfig

_METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _METHODS[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(_METHODS)


def get(name: str) -> type[Method]:
    if name not in _METHODS:
        raise ConfigError(f"unknown method '{name}'.{closest(name, _METHODS)} Available: {', '.join(available())}.")
    return _METHODS[name]


def make_config(name: str, values: dict[str, Any] | None = None) -> MethodConfig:
    return from_dict(get(name).Config, dict(values or {}), f"method '{name}'")


def create(name: str, backbone: Backbone, **config: Any) -> Method:
    """Build method ``name`` around ``backbone`` with config overrides (unknown keys are errors)."""
    return get(name)(backbone, make_config(name, config))


def descriptions() -> dict[str, str]:
    return {name: _METHODS[name].description for name in available()}

