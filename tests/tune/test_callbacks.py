"""The live view and its switch, driven by hand (imports Ray Tune, starts no Ray)."""

from __future__ import annotations

import io
import logging
import pickle
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ray.tune")

from s2ap.tune.callbacks import LIVE_LOGGER, LiveView, live_view_to  # noqa: E402
from s2ap.tune.spec import load_spec  # noqa: E402
from tests.helpers.specs import unit_search  # noqa: E402

SPEC = unit_search(name="v")


def trial(trial_id: str, **last: Any) -> Any:
    config = {"cell": 1, "s2ap.enabled": True, "s2ap.gamma": 0.004}
    return SimpleNamespace(trial_id=trial_id, config=config, last_result=last, status="TERMINATED")


def test_live_view_shows_lines_only_where_this_run_sends_them(caplog: pytest.LogCaptureFixture) -> None:
    view = LiveView(load_spec(SPEC, nodes=None))
    test = {
        "clean_acc": (0.9, 0.8, 0.96),
        "robust_acc": (0.4, 0.3, 0.5),
        "final_val_pgd_acc": (0.5, 0.4, 0.6),
    }
    finals = {
        f"final_{k}{end}": v for k, vs in test.items() for end, v in zip(("", "_lo", "_hi"), vs, strict=True)
    }
    finals |= {"final_clean_acc_n": 100, "final_robust_acc_n": 100, "final_robust_attack": "autoattack"}
    finals |= {"final_final_val_pgd_acc_n": 144}
    done = trial("t1", final=True, val_pgd_acc=0.5, val_pgd_acc_n=144, **finals)
    out = io.StringIO()
    with live_view_to(out):
        view.on_trial_start(0, [done], done)
        view.on_trial_complete(0, [done], done)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[00:00] start  trial t1 [cell 1, s2ap.gamma=0.004]")
    assert (
        "val PGD 0.50 [0.40, 0.60] n=144, test clean 0.90 [0.80, 0.96] n=100, AutoAttack 0.40 [0.30, 0.50] n=100"
        in lines[1]
    )
    # A running or stopped trial's validation figure carries its points and interval too.
    running = trial("t2", phase="prune", epoch=1, val_pgd_acc=0.9097, val_pgd_acc_n=144)
    running.status = "RUNNING"
    status = view._status([running, done])
    assert "prune 2 (val PGD 0.91 [0.85, 0.95] n=144)" in status
    assert "best val PGD 0.50 [0.42, 0.58] n=144" in status

    # Quiet: nothing shows, even where the process logs INFO (``-v``); the view itself holds
    # no switch, so a view pickled by an earlier run (``--resume``) obeys this run's choice.
    again = pickle.loads(pickle.dumps(view))
    with caplog.at_level(logging.INFO), live_view_to(None):
        again.on_trial_start(0, [done], done)
    assert not [r for r in caplog.records if r.name == LIVE_LOGGER]
    live = logging.getLogger(LIVE_LOGGER)
    assert live.propagate and live.level == logging.NOTSET and not live.handlers  # restored


def test_error_line_is_read_from_the_local_error_file_before_storage_has_it(tmp_path: Any) -> None:
    """``on_trial_error`` fires before Tune has synced the trial's error files to storage:
    the live view reads the local ones Tune has just written, not 'None'."""
    from ray import cloudpickle

    from s2ap.tune.callbacks import trial_error
    from s2ap.tune.trainable import TrialFailed

    def errored(pickled: Any, text: str | None) -> Any:
        t = trial("t9")
        t.status = "ERROR"
        t.get_pickled_error = lambda: None  # nothing in storage yet
        t.get_error = lambda: None
        t.pickled_error_file = t.error_file = None
        if pickled is not None:
            t.pickled_error_file = str(tmp_path / "error.pkl")
            with open(t.pickled_error_file, "wb") as f:
                cloudpickle.dump(pickled, f)
        if text is not None:
            t.error_file = str(tmp_path / "error.txt")
            (tmp_path / "error.txt").write_text(text)
        return t

    failed = errored(TrialFailed("worker group died: OOM"), None)
    assert trial_error(failed) == "worker group died: OOM"
    # What Ray hands back when a trial raises a ConfigError: its task error, an instance of
    # both RayTaskError and ConfigError, whose text is the worker's traceback.
    from ray.exceptions import RayTaskError

    from s2ap.errors import ConfigError

    raised = ConfigError("data.root", "no data set found at /nowhere")
    wrapped = RayTaskError("tune_trial", "Traceback ...\n  File x\nConfigError: ...", raised)
    config_error = errored(wrapped.as_instanceof_cause(), "Traceback ...\nTypeError: nonsense\n")
    assert trial_error(config_error) == "data.root: no data set found at /nowhere"
    crashed = errored(None, "Failure # 1 (occurred at 2026-12-02)\nTraceback ...\nValueError: bad shape\n")
    assert trial_error(crashed) == "ValueError: bad shape"
    view = LiveView(load_spec(SPEC, nodes=None))
    out = io.StringIO()
    with live_view_to(out):
        view.on_trial_error(0, [crashed], crashed)
        diverged = trial("t8", final=True, val_pgd_acc=None, diverged="training diverged: loss is nan")
        view.on_trial_complete(0, [diverged], diverged)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("ERROR  trial t9 [cell 1, s2ap.gamma=0.004]: ValueError: bad shape")
    assert lines[1].endswith("ERROR  trial t8 [cell 1, s2ap.gamma=0.004]: training diverged: loss is nan")
