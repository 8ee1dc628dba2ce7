"""Tune callbacks of a search: the result tables and the live view.

:class:`ResultsWriter` notes when the driver starts and ends each trial and rewrites
``trials.parquet`` / ``epochs.parquet`` whenever a trial ends. :class:`LiveView` emits a compact live view of the search (a line per trial event, a
status line every few seconds) on the ``s2ap.tune.live`` logger at INFO. Whether and where
it shows is the logging configuration of the process, not a setting of the callback: on
``--resume`` the callbacks come back pickled from the first run, while showing the view is
this run's choice (:func:`live_view_to`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ray import cloudpickle
from ray.tune import Callback
from ray.tune.experiment import Trial

import s2ap.tune.results as tables
from s2ap.errors import error_line
from s2ap.results import describe_accuracy, describe_measured
from s2ap.tune.cells import CELL_KEY, Cell, cell_of
from s2ap.tune.layout import record_times, trial_store
from s2ap.tune.spec import SearchSpec
from s2ap.tune.trainable import failure_reason

log = logging.getLogger(__name__)

LIVE_LOGGER = "s2ap.tune.live"


@contextlib.contextmanager
def live_view_to(stream: TextIO | None) -> Iterator[None]:
    """For the duration, the live view goes to ``stream`` as bare lines, or nowhere (None),
    whatever the rest of the logging shows; the logger's settings are restored after."""
    logger = logging.getLogger(LIVE_LOGGER)
    saved = logger.level, logger.propagate
    handler = logging.StreamHandler(stream) if stream is not None else None
    if handler is not None:
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if handler is not None else logging.CRITICAL + 1)
    logger.propagate = False
    try:
        yield
    finally:
        if handler is not None:
            logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def trial_error(trial: Trial) -> str | None:
    """One line for an errored trial: the exception it raised when Tune kept it (pickled),
    else the last line of the error text Tune wrote.

    When ``on_trial_error`` fires, Tune has written the error to the trial's local staging
    folder but not necessarily to its storage yet, so the local files are read first."""
    exc = _read(trial, "pickled_error_file", lambda f: cloudpickle.load(f), "rb")
    if exc is None:
        exc = _quietly(trial.get_pickled_error)
    if isinstance(exc, BaseException):
        return failure_reason(exc)  # what the trial raised, out of Ray's wrappers
    text = _read(trial, "error_file", lambda f: f.read(), "r") or _quietly(trial.get_error)
    return None if text is None else error_line(text)


def _read(trial: Trial, attr: str, load: Callable[[Any], Any], mode: str) -> Any:
    try:
        path = getattr(trial, attr, None)
        if not path or not Path(path).is_file():
            return None
        with open(path, mode) as f:
            return load(f)
    except Exception:  # noqa: BLE001 - an unreadable error file: try the next source
        return None


def _quietly(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception:  # noqa: BLE001 - a missing or unreadable error file
        return None


def trial_records(trials: Sequence[Trial], done: Trial | None = None) -> list[tables.TrialRecord]:
    out = []
    for t in trials:
        state = "TERMINATED" if t is done and t.status == Trial.RUNNING else t.status
        if state not in (Trial.TERMINATED, Trial.ERROR):
            continue
        out.append(
            tables.TrialRecord(
                trial_id=t.trial_id,
                config=dict(t.config),
                state=state,
                last_result=dict(t.last_result or {}),
                error=trial_error(t) if state == Trial.ERROR else None,
            )
        )
    return out


class ResultsWriter(Callback):
    """Keeps both Parquet tables current while the search runs (with an extended search's
    earlier trials, :mod:`s2ap.tune.extend`)."""

    earlier: Sequence[tables.TrialRecord] = ()  # a writer pickled before extensions lacks it

    def __init__(self, spec: SearchSpec, search_dir: str, earlier: Sequence[tables.TrialRecord] = ()) -> None:
        self.spec = spec
        self.search_dir = search_dir
        self.earlier = list(earlier)
        self.trials: list[dict[str, Any]] = []

    def write(self, trials: Sequence[Trial], done: Trial | None = None) -> None:
        try:
            _, _, self.trials = tables.write_tables(
                self.spec, [*self.earlier, *trial_records(trials, done)], self.search_dir
            )
        except Exception:  # results must never kill the search; the next write retries
            log.exception("could not write the result tables")

    def _note(self, trial: Trial, **times: float) -> None:
        try:
            record_times(trial_store(self.search_dir, trial.trial_id), **times)
        except OSError:  # the tables then lack this trial's times, the search goes on
            log.warning("could not note the times of trial %s", trial.trial_id, exc_info=True)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._note(trial, started=time.time())

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._note(trial, ended=time.time())
        self.write(trials, trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._note(trial, ended=time.time())
        self.write(trials)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.write(trials)


# --------------------------------------------------------------------------- live view


@dataclass
class LiveView(Callback):
    """A compact live view: a line per trial event and a status line every ``every`` s."""

    spec: SearchSpec
    every: float = 15.0
    _cells: dict[int, Cell] = field(default_factory=dict)
    _last: float = 0.0
    _start: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self._cells = {c.id: c for c in self.spec.cells()}

    def setup(self, **info: Any) -> None:
        self._start, self._last = time.time(), 0.0  # also after a --resume

    def _show(self, text: Callable[[], str]) -> None:
        """Format only when the line is shown; a view bug must never stop the search."""
        live = logging.getLogger(LIVE_LOGGER)
        if not live.isEnabledFor(logging.INFO):
            return
        try:
            line = text()
        except Exception:  # noqa: BLE001
            log.debug("live view could not format a line", exc_info=True)
            return
        live.info("[%s] %s", _clock(time.time() - self._start), line)

    def _label(self, trial: Trial) -> str:
        cell = self._cells.get(cell_of(trial.config))
        where = f"cell {cell.id}" if cell is not None and self.spec.grid else ""
        params = _short_params(trial.config, cell)
        return f"trial {trial.trial_id} [{', '.join(x for x in (where, params) if x)}]"

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._show(lambda: f"start  {self._label(trial)}")

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._show(lambda: self._ended(trial))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._show(lambda: f"ERROR  {self._label(trial)}: {trial_error(trial)}")

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        now = time.time()
        if now - self._last < self.every:
            return
        self._last = now
        self._show(lambda: self._status(trials))

    def _ended(self, trial: Trial) -> str:
        r = trial.last_result or {}
        val = describe_measured("val PGD", r.get("val_pgd_acc"), r.get("val_pgd_acc_n"))
        if r.get("diverged"):
            return f"ERROR  {self._label(trial)}: {r['diverged']}"
        if r.get("final"):
            final = {k.removeprefix("final_"): v for k, v in r.items() if k.startswith("final_")}
            kind = "AutoAttack" if final.get("robust_attack") == "autoattack" else "PGD"
            return (
                f"done   {self._label(trial)}: {describe_accuracy(final, 'final_val_pgd_acc', 'val PGD')}, test "
                f"{describe_accuracy(final, 'clean_acc', 'clean')}, {describe_accuracy(final, 'robust_acc', kind)}"
            )
        return f"stop   {self._label(trial)} at search epoch {r.get('search_epoch')} ({val}, ASHA)"

    def _status(self, trials: list[Trial]) -> str:
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        running = [t for t in trials if t.status == Trial.RUNNING]
        progress = ", ".join(f"{t.trial_id} {_where(t.last_result or {})}" for t in running[:4])
        best = None
        for t in trials:
            r = t.last_result or {}
            score = r.get("val_pgd_acc")
            if (
                r.get("final")
                and not r.get("diverged")
                and score is not None
                and (best is None or score > best[1])
            ):
                best = (t, score, r.get("val_pgd_acc_n"))
        return (
            f"{counts.get(Trial.RUNNING, 0)} running, {counts.get(Trial.PENDING, 0)} pending, "
            f"{counts.get(Trial.TERMINATED, 0)} ended, {counts.get(Trial.ERROR, 0)} errored"
            + (f" | {progress}" if progress else "")
            + (
                f" | best {describe_measured('val PGD', best[1], best[2])} ({self._label(best[0])})"
                if best
                else ""
            )
        )


def _short_params(config: Mapping[str, Any], cell: Cell | None) -> str:
    keys = [k for k in config if k != CELL_KEY and (cell is None or k not in cell.values)]
    return ", ".join(f"{k}={fmt(config[k])}" for k in keys)


def fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _where(result: Mapping[str, Any]) -> str:
    if "phase" not in result:
        return "starting"
    val = describe_measured("val PGD", result.get("val_pgd_acc"), result.get("val_pgd_acc_n"))
    return f"{result['phase']} {int(result.get('epoch', 0)) + 1} ({val})"


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m:02d}:{s:02d}"
