"""Every error class of the project survives what Ray does to an exception on its way from a
trial to the driver (``copy.copy``, ``copy.deepcopy``, a pickle round trip) with its field and
message intact; a new error class that is not listed here fails the discovery test."""

from __future__ import annotations

import ast
import copy
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _examples() -> dict[str, Callable[[], BaseException]]:
    from s2ap.cli import Failure
    from s2ap.errors import ConfigError, TrainingDiverged
    from s2ap.report.load import ReportError
    from s2ap.tune.trainable import TrialFailed
    from service.app import DataDirBusy
    from service.body_limit import BodyTooLarge
    from service.cluster.runner import ClusterUnavailable
    from service.errors import ApiError
    from service.settings import SettingsError
    from service.specs import SpecProblem
    from service.store import DuplicateIdempotencyKey
    from service.ui.routes import SignInFirst

    return {
        "ConfigError": lambda: ConfigError("data.root", "no data set found at /nowhere"),
        "TrainingDiverged": lambda: TrainingDiverged("loss is nan at prune epoch 2"),
        "Failure": lambda: Failure("--resume: no saved state", 3),
        "ReportError": lambda: ReportError("no trials.parquet in runs/x"),
        "TrialFailed": lambda: TrialFailed("data.root: no data set found"),
        "DataDirBusy": lambda: DataDirBusy("s2ap-data is served by pid 12"),
        "ApiError": lambda: ApiError(404, "not_found", "no job abc", "job_id", {"Retry-After": "3"}),
        "ClusterUnavailable": lambda: ClusterUnavailable("dashboard refused"),
        "SettingsError": lambda: SettingsError("S2AP_PAGE_SIZE: must be an integer"),
        "SpecProblem": lambda: SpecProblem("invalid_spec", "must be > 0", "search.s2ap.gamma"),
        "DuplicateIdempotencyKey": lambda: DuplicateIdempotencyKey("key k"),
        "SignInFirst": lambda: SignInFirst(),
        "BodyTooLarge": lambda: BodyTooLarge(1024, 4096),
    }


def _state(exc: BaseException) -> tuple[object, ...]:
    return (type(exc), str(exc), exc.args, sorted(vars(exc).items(), key=lambda kv: kv[0]))


@pytest.mark.parametrize("name", sorted(_examples()))
@pytest.mark.parametrize(
    "transport",
    [copy.copy, copy.deepcopy, lambda e: pickle.loads(pickle.dumps(e))],
    ids=["copy", "deepcopy", "pickle"],
)
def test_error_survives_copy_and_pickle(
    name: str, transport: Callable[[BaseException], BaseException]
) -> None:
    original = _examples()[name]()
    again = transport(original)
    assert _state(again) == _state(original)


def test_config_error_keeps_field_and_message_through_pickle() -> None:
    from s2ap.errors import ConfigError

    again = pickle.loads(pickle.dumps(ConfigError("data.root", "no data set found at /x")))
    assert (again.field, again.message, str(again)) == (
        "data.root",
        "no data set found at /x",
        "data.root: no data set found at /x",
    )


def _declared_error_classes() -> set[str]:
    """Names of the exception classes declared in s2ap/ and service/ (read from the source)."""
    found: set[str] = set()
    trees = [ast.parse(p.read_text()) for d in ("s2ap", "service") for p in (ROOT / d).rglob("*.py")]
    changed = True
    while changed:  # a class deriving from a project error class is an error class too
        changed = False
        for tree in trees:
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef) or node.name in found:
                    continue
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                if any(b.endswith(("Error", "Exception")) or b in found for b in bases):
                    found.add(node.name)
                    changed = True
    return found


def test_every_error_class_is_covered() -> None:
    assert _declared_error_classes() == set(_examples())
