"""``python -m s2ap.tune``'s failures: one ``error:`` line and status 2, never a traceback.
(Bad specs and arguments: tests/tune/test_spec.py.) Imports Ray Tune, starts no Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.tune")

import s2ap.tune.search as search  # noqa: E402
from s2ap.tune.__main__ import main  # noqa: E402

QUICKSTART = str(Path(__file__).resolve().parents[2] / "search_spaces" / "quickstart.yaml")


def test_unreachable_address_is_one_line_and_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("Could not find any running Ray instance")

    monkeypatch.setattr(search, "run_search", unreachable)
    assert main([QUICKSTART, "--address", "10.0.0.1:6379", "-q"]) == 2
    assert capsys.readouterr().err == (
        "error: --address: cannot reach a Ray cluster there (Could not find any running Ray instance)\n"
    )


def test_resume_without_a_search_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([QUICKSTART, "--resume", "--out", str(tmp_path / "none"), "-q"]) == 2
    assert capsys.readouterr().err == f"error: --resume: no search to resume in {tmp_path / 'none'}\n"
