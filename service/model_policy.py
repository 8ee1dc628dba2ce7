"""Which models a submitted spec may name: an import path is code execution.

``model.name: package.module:callable`` makes whoever runs the job import ``package.module``
and call into it. The CLI trusts its user; the service does not trust its submitters, so it
refuses every import path unless the operator lists the module prefixes it may import in
``S2AP_ALLOWED_MODEL_MODULES`` (comma-separated, e.g. ``mylab.models,robustbench_nets``; a
prefix allows that module and the modules under it). Registered names, ``torchvision:NAME``
and ``timm:NAME`` build installed libraries' own architectures and are always accepted (the
spec validation checks them like the CLI does).

The check runs on the submitted data before anything validates it, because validation
itself would import the module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

ENV = "S2AP_ALLOWED_MODEL_MODULES"
LIBRARIES = ("torchvision", "timm")


def allowed_prefixes(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The module prefixes the operator allows (none unless ``S2AP_ALLOWED_MODEL_MODULES``)."""
    raw = (os.environ if environ is None else environ).get(ENV, "")
    return tuple(p.strip().rstrip(".") for p in raw.split(",") if p.strip().rstrip("."))


def refusal(name: str, prefixes: tuple[str, ...]) -> str | None:
    """Why ``name`` may not be used here, or None when it may."""
    source, colon, _ = name.partition(":")
    if not colon or source in LIBRARIES:
        return None
    if any(source == p or source.startswith(p + ".") for p in prefixes):
        return None
    allowed = (
        f"this service allows only modules under {', '.join(prefixes)}"
        if prefixes
        else f"this service allows none (its operator can list module prefixes in {ENV})"
    )
    return (
        f"{name!r} is an import path, code the service would run; {allowed}; "
        f"registered names, torchvision:NAME and timm:NAME are accepted"
    )


def model_names(data: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """Every ``(field, value)`` string of the spec that sits under a ``model.name`` key, in
    whatever form: nested (``base.model.name``), dotted (``overrides: {model.name: ...}``),
    a grid's list or a search distribution's ``values``."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield from model_names(value, path + tuple(str(key).split(".")))
    elif isinstance(data, list):
        for value in data:
            yield from model_names(value, path)
    elif isinstance(data, str) and any(path[i : i + 2] == ("model", "name") for i in range(len(path))):
        yield ".".join(path), data


def refused(data: Any, environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``(field, message)`` for every model name in ``data`` this service refuses."""
    prefixes = allowed_prefixes(environ)
    out = []
    for field, name in model_names(data):
        why = refusal(name, prefixes)
        if why is not None:
            out.append((field, why))
    return out
