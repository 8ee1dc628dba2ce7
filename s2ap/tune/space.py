"""The searched parameters' priors: one small class per distribution, told apart by ``type``.

``{type: loguniform, low, high}``, ``{type: uniform, low, high[, step]}``, ``{type: int,
low, high[, step, log]}`` (integers in [low, high] inclusive) or ``{type: categorical,
values: [...]}``. :func:`corners` gives the extreme values of a space, enough to find a
bound that breaks a grid cell's config before anything runs.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from s2ap.coerce import Checked, bounded
from s2ap.errors import ConfigError

CORNER_LIMIT = 256


def _ordered(low: float, high: float) -> None:
    if not low < high:
        raise ConfigError("high", f"must be greater than low ({low:g}), got {high:g}")


def _step_fits(step: float | None, low: float, high: float) -> None:
    if step is not None and step > high - low:
        raise ConfigError("step", f"must be in (0, high - low], got {step:g}")


@dataclass(frozen=True, kw_only=True)
class LogUniform(Checked):
    """Floats in [low, high], uniform on a log scale."""

    type: Literal["loguniform"]
    low: float = bounded(gt=0, note="a log scale")
    high: float

    def check(self) -> None:
        _ordered(self.low, self.high)

    def corners(self) -> list[Any]:
        return [self.low, self.high]


@dataclass(frozen=True, kw_only=True)
class Uniform(Checked):
    """Floats in [low, high]; with ``step``, only low + k * step."""

    type: Literal["uniform"]
    low: float
    high: float
    step: float | None = bounded(None, gt=0)

    def check(self) -> None:
        _ordered(self.low, self.high)
        _step_fits(self.step, self.low, self.high)

    def corners(self) -> list[Any]:
        return [self.low, self.high]


@dataclass(frozen=True, kw_only=True)
class IntRange(Checked):
    """Integers in [low, high] inclusive, every ``step``-th, optionally on a log scale."""

    type: Literal["int"]
    low: int
    high: int
    step: int | None = bounded(None, gt=0)
    log: bool = False

    def check(self) -> None:
        _ordered(self.low, self.high)
        _step_fits(self.step, self.low, self.high)
        if self.log and (self.low <= 0 or self.step not in (None, 1)):
            raise ConfigError("log", "a log-scaled int needs low >= 1 and no step")

    def corners(self) -> list[Any]:
        step = self.step or 1
        high = self.low + (self.high - self.low) // step * step
        return [self.low, high] if high != self.low else [self.low]


@dataclass(frozen=True, kw_only=True)
class Categorical(Checked):
    """One of a few plain values (numbers, strings, booleans or null)."""

    type: Literal["categorical"]
    values: tuple[bool | int | str | float | None, ...]

    def check(self) -> None:
        if not self.values:
            raise ConfigError("values", "expected a non-empty list, got []")
        if len({json.dumps(v) for v in self.values}) != len(self.values):
            raise ConfigError("values", "values must be distinct")

    def corners(self) -> list[Any]:
        return list(self.values)


Distribution = LogUniform | Uniform | IntRange | Categorical


def corners(space: Mapping[str, Distribution], limit: int = CORNER_LIMIT) -> list[dict[str, Any]]:
    """Combinations of every searched parameter's extremes (one at a time when too many)."""
    if not space:
        return [{}]
    keys = list(space)
    options = [space[k].corners() for k in keys]
    if math.prod(len(o) for o in options) <= limit:
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*options)]
    lows = {k: o[0] for k, o in zip(keys, options, strict=True)}
    return [dict(lows, **{k: v}) for k, o in zip(keys, options, strict=True) for v in o]
