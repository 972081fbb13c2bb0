"""The base of every method's configuration (``Method.Config``)."""

from __future__ import annotations

import dataclasses

from ..errors import ConfigError


@dataclasses.dataclass
class MethodConfig:
    """Base of every method's configuration; subclasses add fields with the paper's defaults."""

    def validate(self) -> None:
        """Raise a ConfigError for an invalid field: a temperature <= 0, then ``validate_fields``."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("temperature") and isinstance(value, (int, float)) and value <= 0:
                raise ConfigError(f"{field.name} must be > 0, got {value}.")
        self.validate_fields()

    def validate_fields(self) -> None:
        """A method's own checks of its fields (subclasses override it, not ``validate``)."""

    def check_positive(self, *names: str, message: str = "{name} must be >= 1, got {value}.") -> None:
        """A ConfigError for the first of the fields ``names`` set below 1 (None, a default, passes)."""
        for name in names:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(message.format(name=name, value=value))
