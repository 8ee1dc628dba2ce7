"""docs/config.md is what ``python -m s2ap.config_reference`` prints: every config key, what it
accepts (from the generated JSON Schema), its default and its comment in the source."""

from __future__ import annotations

from pathlib import Path

from s2ap.coerce import dotted_keys
from s2ap.config import ExperimentConfig
from s2ap.config_reference import accepts, render

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "config.md"


def test_the_committed_reference_is_current() -> None:
    assert DOC.read_text() == render(), (
        "docs/config.md is out of date: run `python -m s2ap.config_reference > docs/config.md`"
    )


def test_every_experiment_key_and_every_spec_key_has_a_row() -> None:
    text = render()
    for key in dotted_keys(ExperimentConfig):
        assert f"| `{key}` |" in text, key
    for key in ("name", "base", "grid", "search", "num_samples", "storage", "scheduler.grace_period"):
        assert f"| `{key}` |" in text, key
    assert len(dotted_keys(ExperimentConfig)) > 60


def test_a_row_says_what_the_key_accepts_its_default_and_its_comment() -> None:
    text = render()
    assert "| `prune.sparsity` | number in (0, 1) | `0.9` | fraction of prunable weights removed |" in text
    assert "| `objective.name` | `trades` \\| `pgd` \\| `clean` | `trades` |" in text
    # A comment block above the field, and an inherited field (PhaseConfig.lr) under each phase.
    assert "| `s2ap.perturb` | `scores` \\| `weights` | `scores` | What the mask search perturbs" in text
    assert (
        "| `pretrain.lr` | number > 0 | `0.1` |" in text and "| `finetune.lr` | number > 0 | `0.01` |" in text
    )
    assert "### `scheduler` (`type: asha`)" in text and "### `search.KEY` (`type: loguniform`)" in text
    assert "| `base` | mapping or string | required |" in text


def test_accepts_reads_json_schema_fragments() -> None:
    assert accepts({"type": "integer", "minimum": 1}) == "integer >= 1"
    assert accepts({"anyOf": [{"type": "integer", "minimum": 0, "maximum": 5}, {"type": "null"}]}) == (
        "integer in [0, 5] or null"
    )
    assert accepts({"type": "array", "items": {"type": "string"}}) == "list of string"
    assert accepts({"enum": ["a", None]}) == "`a` \\| `null`"
