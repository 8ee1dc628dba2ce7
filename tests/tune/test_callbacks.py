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

SPEC = {
    "name": "v",
    "base": {
        "data": {"name": "digits"},
        "prune": {"epochs": 4},
        "s2ap": {"enabled": True, "warmup_epochs": 1},
    },
    "grid": {"s2ap.enabled": [False, True]},
    "search": {"s2ap.gamma": {"type": "loguniform", "low": 0.001, "high": 0.01}},
    "num_samples": 2,
    "storage": "/unused",
}


def trial(trial_id: str, **last: Any) -> Any:
    config = {"cell": 1, "s2ap.enabled": True, "s2ap.gamma": 0.004}
    return SimpleNamespace(trial_id=trial_id, config=config, last_result=last, status="TERMINATED")


def test_live_view_shows_lines_only_where_this_run_sends_them(caplog: pytest.LogCaptureFixture) -> None:
    view = LiveView(load_spec(SPEC, nodes=None))
    test = {"clean_acc": (0.9, 0.8, 0.96), "robust_acc": (0.4, 0.3, 0.5)}  # value, 95% interval
    finals = {
        f"final_{k}{end}": v for k, vs in test.items() for end, v in zip(("", "_lo", "_hi"), vs, strict=True)
    }
    finals |= {"final_clean_acc_n": 100, "final_robust_acc_n": 100, "final_robust_attack": "autoattack"}
    done = trial("t1", final=True, val_pgd_acc=0.5, **finals)
    out = io.StringIO()
    with live_view_to(out):
        view.on_trial_start(0, [done], done)
        view.on_trial_complete(0, [done], done)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[00:00] start  trial t1 [cell 1, s2ap.gamma=0.004]")
    assert (
        "val PGD 0.5000, test clean 0.90 [0.80, 0.96] n=100, AutoAttack 0.40 [0.30, 0.50] n=100" in lines[1]
    )

    # Quiet: nothing shows, even where the process logs INFO (``-v``); the view itself holds
    # no switch, so a view pickled by an earlier run (``--resume``) obeys this run's choice.
    again = pickle.loads(pickle.dumps(view))
    with caplog.at_level(logging.INFO), live_view_to(None):
        again.on_trial_start(0, [done], done)
    assert not [r for r in caplog.records if r.name == LIVE_LOGGER]
    live = logging.getLogger(LIVE_LOGGER)
    assert live.propagate and live.level == logging.NOTSET and not live.handlers  # restored
