"""Typed configuration: dataclasses built from dicts, YAML files and ``key=value`` overrides.

As in nanoGPT, a configuration is a dataclass and an unknown key is an error (with the closest
valid key suggested and all valid keys listed): a typo never silently falls back to a default,
which is one of the complaints users of other libraries raise most often.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError, closest

T = TypeVar("T")


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python objects), reading ``1e-3`` and ``1e30`` as numbers: YAML 1.1
    wants a dot and a signed exponent (``1.0e-3``), so it would return the string '1e-3'."""


class _SafeDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting every string :class:`_SafeLoader` would read as a number:
    plain ``yaml.safe_dump`` writes the string '1e5' bare, which reads back as 100000.0 (a run
    named 1e5 could not be resumed from its config.yaml)."""


# YAML 1.2's exponent-without-dot floats: read as numbers, and so quoted when they are strings.
_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
for _cls in (_SafeLoader, _SafeDumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITHOUT_DOT, list("-+0123456789."))


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 numbers (see :class:`_SafeLoader`)."""
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass


def safe_dump(data: Any) -> str:
    """YAML that :func:`safe_load` reads back as ``data`` (keys in their order)."""
    return yaml.dump(data, Dumper=_SafeDumper, sort_keys=False)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert what is safe (int -> float,
    list -> tuple); raise :class:`ConfigError` naming ``where`` otherwise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:  # Optional[X]: X's own message says best what is expected
            raise ConfigError(errors[args.index(real[0])].rstrip(".") + " (or null).")
        raise ConfigError(
            f"{where}: {value!r} is not a valid value; expected {' or '.join(_type_name(a) for a in args)}."
        )
    # Types taken as they are: (the type a value must have, what to call it in the message).
    kind = dict if origin is dict else tp
    plain = {type(None): "null", dict: "a mapping", bool: "true or false", str: "a string"}
    if kind in plain:
        if isinstance(value, kind):
            return dict(value) if kind is dict else value
        raise ConfigError(f"{where}: expected {plain[kind]}, got {value!r}.")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(
            f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}.{closest(str(value), map(str, args))}"
        )
    if origin in (tuple, list):
        if isinstance(value, (list, tuple)):
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(value) != len(args):
                    raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r}).")
                return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
            inner = args[0] if args else Any
            items = [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
        raise ConfigError(f"{where}: expected a list, got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: expected a finite number, got {value!r}.")
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}.")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return from_dict(tp, value, where)
        raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}.")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str | None = None) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are errors."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {data!r}.")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in valid:
            raise ConfigError(
                f"unknown key '{key}' in {where}.{closest(str(key), valid)} Valid keys: {', '.join(valid)}."
            )
        kwargs[key] = coerce(value, hints[key], f"{where}.{key}")
    obj = cls(**kwargs)
    if callable(check := getattr(obj, "validate", None)):
        check()
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass as plain dicts, lists and scalars (for YAML and checkpoints)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=0.3", "method.temperature=0.2"]`` -> nested dict ``{"lr": 0.3, "method": {...}}``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. lr=0.3).")
        key, text = item.split("=", 1)
        key = key.strip().lstrip("-").replace("-", "_")
        if not key:
            raise ConfigError(f"override '{item}' has an empty key.")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' sets a field inside '{part}', which is a value.")
        # the value as YAML: 0.5 -> float, true -> bool, [0.2,1] -> list; as it is if not YAML
        try:
            node[parts[-1]] = safe_load(text)
        except yaml.YAMLError:
            node[parts[-1]] = text
    return out


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist.")
    try:
        data = safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file '{path}' is not valid YAML ({where}{problem}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys to values.")
    return data
