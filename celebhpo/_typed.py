"""Typed values from TOML: check a raw value against a dataclass field's annotation.

config.py builds the study file's sections with these; every error is one ConfigError that
names the file, the section and the key, and suggests the nearest valid name.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal

from celebhpo.errors import ConfigError, did_you_mean

__all__ = ["build", "check_keys", "coerce", "field_types", "suggest"]

# Names people reach for that difflib cannot guess.
_ALIASES = {"learning_rate": "lr", "model": "arch", "architecture": "arch", "backbone": "arch",
            "features": "num_features", "batch": "batch_size", "p": "dropout",
            "slice": "slices", "objectives": "metric", "metrics": "metric"}

# values a key used to take, read as their new spelling
_OLD_VALUES: dict[tuple[str, str], dict] = {("TrainConfig", "amp"): {True: "auto", False: "off"}}


def suggest(name: Any, valid: Iterable[Any]) -> str:
    """`; did you mean 'x'?` for the nearest valid name, or ""."""
    valid = [str(v) for v in valid]
    alias = _ALIASES.get(str(name))
    close = [alias] if alias in valid else did_you_mean(name, valid)
    return f"; did you mean '{close[0]}'?" if close else ""


def check_keys(raw: dict, valid: list[str], source: str, what: str) -> None:
    for key in raw:
        if key not in valid:
            raise ConfigError(
                f"{source}: unknown {what} {key!r}{suggest(key, valid)} "
                f"(valid: {', '.join(valid)})"
            )


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def build(cls, raw: Any, source: str, section: str):
    """An instance of dataclass `cls` from the TOML table `raw` of `[section]`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [{section}] must be a table, got {type(raw).__name__}")
    check_keys(raw, list(field_types(cls)), source, f"[{section}] key")
    return cls(**{k: coerce(cls, k, v, source, section) for k, v in raw.items()})


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def coerce(cls, key: str, value: Any, source: str, section: str) -> Any:
    """Check `value` against the annotated type of `cls.key`; ints are accepted as floats.
    `Any` passes unchanged (the section's own validation checks it)."""
    hint = field_types(cls)[key]
    where = f"{source}: [{section}] {key}"
    origin = typing.get_origin(hint)
    if isinstance(value, bool | str) and value in _OLD_VALUES.get((cls.__name__, key), {}):
        value = _OLD_VALUES[cls.__name__, key][value]  # what stored configs and checkpoints say
    if hint is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(
                f"{where} = {value!r} is not one of {', '.join(map(repr, choices))}"
                f"{suggest(value, choices)}"
            )
        return value
    if origin is list:
        return _list(typing.get_args(hint)[0], value, where)
    if origin is dict:
        if not isinstance(value, dict) or not all(_number(v) for v in value.values()):
            raise ConfigError(f"{where} must be a table of numbers, e.g. {{ name = 1.0 }}, "
                              f"got {value!r}")
        return {str(k): float(v) for k, v in value.items()}
    if origin in (types.UnionType, typing.Union):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return _scalar(hint, value, where)


def _list(item: Any, value: Any, where: str) -> list:
    if item is str:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where} must be a list of names, e.g. [\"a\", \"b\"], "
                              f"got {value!r}")
        return list(value)
    if not isinstance(value, list) or not all(_number(v) for v in value):
        raise ConfigError(f"{where} must be a list of numbers, got {value!r}")
    return [float(v) for v in value]


def _scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be a whole number, got {value!r}")
        return value
    if hint is float:
        if not _number(value):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be finite, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {hint}")  # pragma: no cover
