"""Configuration errors and the checks that raise them, shared by the methods and the engine."""
from __future__ import annotations

import math


class ConfigError(ValueError):
    """A configuration key or value is invalid."""


def check(cond: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``cond``."""
    if not cond:
        raise ConfigError(msg)


def check_choice(name: str, v, options) -> None:
    check(v in options, f"{name} must be one of {list(options)}, got {v!r}")


def check_positive(name: str, v, allow_zero: bool = False) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    check(ok, f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")
