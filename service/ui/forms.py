"""The submit form: the spec it carries, and where in that spec an error points.

The API's errors name the field they are about as a dotted path (``base.prune.sparsity``;
a grid axis is itself dotted: ``grid.prune.sparsity``). The form shows the error beside the
spec it came from and, for a spec pasted or uploaded as YAML or JSON, the line that path
starts on, with a few lines around it, so the researcher sees which entry to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

JSON_TYPE = "application/json"
YAML_TYPE = "application/yaml"
CONTEXT_LINES = 2


@dataclass(frozen=True)
class SpecText:
    body: bytes
    content_type: str
    source: str  # "upload" or "paste"
    text: str  # what the form shows again after an error


def spec_from_form(pasted: str | None, upload_name: str | None, upload: bytes | None) -> SpecText:
    """The uploaded file when one was chosen, else the pasted text (YAML or JSON: the API
    reads YAML, which JSON is a subset of; a ``.json`` file is read as JSON)."""
    if upload:
        kind = JSON_TYPE if (upload_name or "").lower().endswith(".json") else YAML_TYPE
        return SpecText(upload, kind, "upload", upload.decode("utf-8", errors="replace"))
    text = (pasted or "").replace("\r\n", "\n")
    return SpecText(text.encode("utf-8"), YAML_TYPE, "paste", text)


def _line_of(node: yaml.Node, parts: list[str]) -> tuple[int, int]:
    """(line, parts matched) of the deepest node ``parts`` reaches from ``node``."""
    if not parts:
        return node.start_mark.line, 0
    best = (node.start_mark.line, 0)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            for take in range(len(parts), 0, -1):  # a key may itself hold dots
                if key.value == ".".join(parts[:take]):
                    line, deeper = _line_of(value, parts[take:])
                    if deeper == 0:  # the rest is not there: point at this key
                        line = key.start_mark.line
                    if take + deeper > best[1]:
                        best = (line, take + deeper)
    elif isinstance(node, yaml.SequenceNode) and parts[0].isdigit():
        index = int(parts[0])
        if index < len(node.value):
            line, deeper = _line_of(node.value[index], parts[1:])
            best = (line, 1 + deeper)
    return best


def locate(text: str, dotted: str | None) -> int | None:
    """The 1-based line where the spec's ``dotted`` field (or its nearest present parent)
    starts; None when the text is no YAML mapping or the field is not a spec path."""
    if not dotted or dotted in ("body", "spec") or dotted.startswith(("header.", "query.", "path.")):
        return None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return None
    if not isinstance(root, yaml.MappingNode):
        return None
    line, matched = _line_of(root, dotted.split("."))
    return line + 1 if matched else None


@dataclass(frozen=True)
class Excerpt:
    line: int  # the line the error points at, 1-based
    lines: list[tuple[int, str, bool]] = field(default_factory=list)  # (number, text, pointed at)


def excerpt(text: str, line: int | None) -> Excerpt | None:
    if line is None:
        return None
    all_lines = text.splitlines()
    lo, hi = max(1, line - CONTEXT_LINES), min(len(all_lines), line + CONTEXT_LINES)
    return Excerpt(line, [(i, all_lines[i - 1], i == line) for i in range(lo, hi + 1)])


@dataclass(frozen=True)
class FormError:
    """An error the submit form shows: ``field`` names what it is about (a spec path, or
    ``body`` / ``header.idempotency-key`` for the request itself)."""

    code: str
    message: str
    field: str | None = None
    where: Excerpt | None = None

    @property
    def about_spec(self) -> bool:
        return self.field is not None and not self.field.startswith(("header.", "query.", "path."))
