"""The project's own error type.

Every mistake a user can make (a wrong path, an unknown key, an impossible value) raises
:class:`SelfsupError` with a message that names the problem and what to do about it. The command
line prints that message without a traceback and exits with status 2; anything else escaping is a
bug in selfsup.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SelfsupError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""


class ConfigError(SelfsupError, ValueError):
    """An unknown key, a value of the wrong type, or an impossible value in a configuration."""


class DataError(SelfsupError):
    """A data source that cannot be found, read or used."""


class CheckpointError(SelfsupError):
    """A checkpoint that is missing, truncated, corrupted or unsafe to load."""


class NonFiniteLossError(SelfsupError):
    """The loss became NaN or infinite; the message names the step."""


class TrainingInterrupted(SelfsupError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; the command exits with
    ``exit_code`` (128 + the signal number: 130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def closest(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean ...?' suffix naming the closest valid choice, or '' if none is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""
