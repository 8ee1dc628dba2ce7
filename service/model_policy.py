"""Which models a submitted spec may name: an import path is code execution.

``model.name: package.module:callable`` makes whoever runs the job import ``package.module``
and call into it. The CLI trusts its user; the service does not trust its submitters, so it
refuses every import path unless the operator lists the module prefixes it may import in
``S2AP_ALLOWED_MODEL_MODULES`` (comma-separated, e.g. ``mylab.models,robustbench_nets``; a
prefix allows that module and the modules under it). Registered names, ``torchvision:NAME``
and ``timm:NAME`` build installed libraries' own architectures and are always accepted (the
spec validation checks them like the CLI does).

``data.name: package.module:callable`` (a data set by import path) is code execution too:
refused unless its module is under a prefix in ``S2AP_ALLOWED_DATA_MODULES`` (no library
exception: every ``data.name`` with a colon is an import path).

The check runs on the submitted data before anything validates it, because validation
itself would import the module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

ENV = "S2AP_ALLOWED_MODEL_MODULES"
DATA_ENV = "S2AP_ALLOWED_DATA_MODULES"
LIBRARIES = ("torchvision", "timm")


def allowed_prefixes(environ: Mapping[str, str] | None = None, env: str = ENV) -> tuple[str, ...]:
    """The module prefixes the operator allows (none unless ``env`` lists some)."""
    raw = (os.environ if environ is None else environ).get(env, "")
    return tuple(p.strip().rstrip(".") for p in raw.split(",") if p.strip().rstrip("."))


def refusal(name: str, prefixes: tuple[str, ...], section: str = "model") -> str | None:
    """Why ``name`` (a ``model.name``, or a ``data.name`` with ``section="data"``) may not be
    used here, or None when it may."""
    source, colon, _ = name.partition(":")
    if not colon or (section == "model" and source in LIBRARIES):
        return None
    if any(source == p or source.startswith(p + ".") for p in prefixes):
        return None
    env = ENV if section == "model" else DATA_ENV
    allowed = (
        f"this service allows only modules under {', '.join(prefixes)}"
        if prefixes
        else f"this service allows none (its operator can list module prefixes in {env})"
    )
    accepted = (
        "registered names, torchvision:NAME and timm:NAME are accepted"
        if section == "model"
        else "registered data sets are accepted"
    )
    return f"{name!r} is an import path, code the service would run; {allowed}; {accepted}"


def model_names(data: Any, path: tuple[str, ...] = (), section: str = "model") -> Iterator[tuple[str, str]]:
    """Every ``(field, value)`` string of the spec that sits under a ``model.name`` key (or
    ``data.name`` with ``section="data"``), in whatever form: nested (``base.model.name``),
    dotted (``overrides: {model.name: ...}``), a grid's list or a search distribution's
    ``values``."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield from model_names(value, path + tuple(str(key).split(".")), section)
    elif isinstance(data, list):
        for value in data:
            yield from model_names(value, path, section)
    elif isinstance(data, str) and any(path[i : i + 2] == (section, "name") for i in range(len(path))):
        yield ".".join(path), data


def refused(data: Any, environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``(field, message)`` for every model or data set name in ``data`` this service refuses."""
    out = []
    for section, env in (("model", ENV), ("data", DATA_ENV)):
        prefixes = allowed_prefixes(environ, env)
        for field, name in model_names(data, section=section):
            why = refusal(name, prefixes, section)
            if why is not None:
                out.append((field, why))
    return out
