"""Files written whole or not at all, and YAML read with one-line errors.

Every file the tool writes (run state, masks, tables, notes, specs) goes through
:func:`atomic_write`: the content is written to a temporary file in the same folder and
moved into place with one ``os.replace``, so a reader (or a resumed run after a crash)
never sees half a file.

Tensors are written from the CPU (:func:`save_tensors`): ``torch.load(path)`` with its
defaults then reads a file written on a GPU machine anywhere.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from s2ap.errors import ConfigError


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def on_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (in dicts, lists, tuples) moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        moved = {k: on_cpu(v) for k, v in obj.items()}
        return type(obj)(moved) if type(obj) in (dict, OrderedDict) else moved
    if isinstance(obj, list | tuple):
        moved = [on_cpu(v) for v in obj]
        return type(obj)(*moved) if hasattr(obj, "_fields") else type(obj)(moved)
    return obj


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in ``obj`` (itself, or nested in mappings, lists, tuples), depth first."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from iter_tensors(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from iter_tensors(v)


def save_tensors(obj: Any, path: str | Path) -> Path:
    """``torch.save`` of ``obj`` with its tensors on the CPU, written whole."""
    cpu = on_cpu(obj)
    return atomic_write(path, lambda tmp: torch.save(cpu, tmp))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, default=str))


def read_yaml_mapping(path: str | Path, field: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (empty file: empty mapping); every problem is a
    :class:`ConfigError` on ``field``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(field, f"file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(field, f"{path} is not valid YAML: {exc}".replace("\n", " ")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(field, f"cannot read {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(field, f"{path} must hold a mapping, got {type(data).__name__}")
    return dict(data)
