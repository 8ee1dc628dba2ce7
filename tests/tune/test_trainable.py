"""The trainable's own repairs, without Ray."""

from __future__ import annotations

import json
from pathlib import Path

from s2ap.tune.trainable import _drop_torn_snapshot


def _checkpoint(run: Path, name: str, stamp: float) -> Path:
    folder = run / name
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"time": stamp, "final": False, "metrics": {}}))
    return folder


def test_a_torn_train_snapshot_is_dropped_and_the_newest_checkpoint_resumes(tmp_path: Path) -> None:
    run = tmp_path / "train" / "trial"
    _checkpoint(run, "checkpoint_a", 1.0)
    newest = _checkpoint(run, "checkpoint_b", 2.0)
    snapshot = run / "checkpoint_manager_snapshot.json"
    snapshot.write_text("")  # the controller was killed while writing it
    assert _drop_torn_snapshot(run) == str(newest)
    assert not snapshot.exists()


def test_an_intact_or_absent_snapshot_is_left_to_train(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _checkpoint(run, "checkpoint_a", 1.0)
    assert _drop_torn_snapshot(run) is None  # no snapshot: a first start
    snapshot = run / "checkpoint_manager_snapshot.json"
    snapshot.write_text(json.dumps({"ray_version": "x", "checkpoint_results": []}))
    assert _drop_torn_snapshot(run) is None
    assert snapshot.is_file()
