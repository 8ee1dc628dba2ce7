"""The JSON Schema a search spec is published with (the service's docs, form builders).

Nothing here is written by hand: :func:`s2ap.coerce.json_schema` generates the document from
the same dataclass fields :func:`s2ap.tune.spec.load_spec` builds specs with, so what the
schema describes and what is accepted cannot drift apart. The only explicit piece is the
``base`` field's two forms: an experiment config mapping (whose schema is generated from
:class:`~s2ap.config.ExperimentConfig`) or the path of a config YAML.

This module sits below :mod:`s2ap.tune.spec`: the spec's ``base`` field takes its schema from
:func:`base_schema`, and ``s2ap.tune.spec.json_schema`` wraps :func:`document`.
"""

from __future__ import annotations

from typing import Any

from s2ap.coerce import json_schema
from s2ap.config import ExperimentConfig

DRAFT = "https://json-schema.org/draft/2020-12/schema"
BASE_DOC = "an experiment config mapping or a path to a config YAML (relative to the spec file)"


def base_schema() -> dict[str, Any]:
    """The ``base`` field: an experiment config mapping or a path."""
    return {
        "description": BASE_DOC,
        "anyOf": [json_schema(ExperimentConfig), {"type": "string", "minLength": 1}],
    }


def document(cls: type, title: str) -> dict[str, Any]:
    """The whole JSON Schema document of config class ``cls``."""
    return {"$schema": DRAFT, "title": title, **json_schema(cls)}
