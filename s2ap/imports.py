"""``package.module:callable`` names: the user's own code, reached by import path.

Used by ``model.name`` (:mod:`s2ap.models.external`) and ``data.name`` (:mod:`s2ap.data`):
:func:`import_callable` finds the callable without calling it (an unknown module or
attribute is one line naming the field), :func:`named_arguments` tells which of the
arguments the project can supply its signature names. An import path is code execution:
the service refuses them unless its operator allows the module (``service/model_policy.py``).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any

from s2ap.errors import ConfigError

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def one_line(exc: BaseException) -> str:
    """An exception as ``Type: message`` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def import_callable(name: str, field: str, what: str) -> Callable[..., Any]:
    """The callable ``package.module:attribute`` names; ConfigError on ``field`` otherwise
    (``what`` says what else the field accepts, for the message)."""
    module_name, _, attribute = name.partition(":")
    if not _DOTTED.match(module_name) or not _DOTTED.match(attribute):
        raise ConfigError(field, f"{name!r} is not {what}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(
                field, f"cannot import module {module_name!r} (not on PYTHONPATH or not installed)"
            ) from None
        raise ConfigError(field, f"importing {module_name!r} failed: {one_line(exc)}") from None
    except Exception as exc:
        raise ConfigError(field, f"importing {module_name!r} failed: {one_line(exc)}") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(field, f"module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(field, f"{name!r} is not callable (a {type(target).__name__})")
    return target


def named_arguments(fn: Callable[..., Any], offered: Iterable[str]) -> tuple[str, ...]:
    """Those of ``offered`` that ``fn``'s signature takes by keyword."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return ()
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(arg for arg in offered if arg in parameters and parameters[arg].kind in keyword)
