"""Synchronous successive halving over a fixed set of trials (``scheduler.type: halving``).

One bracket holds a grid cell's trials (or every trial). At rung ``r`` (the ``r``-th probe,
``prune.probe_after``) each trial that reaches it waits, paused, until every trial of the
bracket still in it has reported rung ``r`` or ended; then the best ``ceil(k / reduction_factor)``
of the ``k`` that reported go on and the rest stop. Unlike ASHA no decision rides on the order
trials happen to run in: a bracket of 24 with factor 4 keeps exactly the best 6.

An extension of a finished search (:mod:`s2ap.tune.extend`) is a new bracket of the new
trials, but the earlier trials' values set the bar: at each rung the new trials are ranked
among the earlier trials that reached that rung and the new ones that reported it, and a new
trial goes on only when it is among the best ``ceil(k / reduction_factor)`` of those ``k``
(earlier trials first on a tie). The earlier trials are never stopped or waited for: their
runs are over, their decisions stand. So a new trial goes on exactly when it would have in one
bracket with the earlier trials, given the earlier decisions.

This module only decides: :class:`Bracket` answers which trials go on, stop or wait;
:class:`s2ap.tune.scheduler.CellScheduler` turns that into Tune's actions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

CONTINUE, PAUSE, STOP = "CONTINUE", "PAUSE", "STOP"


@dataclass
class Decision:
    """What a rung's result means: the reporting trial's action, and which waiting trials
    resume or stop now."""

    action: str
    resume: list[str] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)


class Bracket:
    """Successive halving of ``size`` trials over ``rungs`` rungs (1, 2, ...); ``mode`` max or min."""

    def __init__(self, size: int, rungs: int, reduction_factor: float, mode: str) -> None:
        self.size = size
        self.rungs = rungs
        self.factor = reduction_factor
        self.sign = 1.0 if mode == "max" else -1.0
        self.added: list[str] = []
        self.ended: set[str] = set()  # completed, errored, removed or stopped
        self.values: dict[int, dict[str, float]] = {r: {} for r in range(1, rungs + 1)}
        self.survivors: dict[int, set[str]] = {}  # rung -> trials that went on past it
        self.waiting: set[str] = set()
        self.earlier: dict[int, dict[str, float]] = {r: {} for r in range(1, rungs + 1)}

    def add(self, trial: str) -> None:
        self.added.append(trial)

    def add_earlier(self, trial: str, rung: int, value: float) -> None:
        """A trial of an earlier run of the search reported ``value`` at ``rung``: it is ranked
        with this bracket's trials at that rung, never stopped or waited for."""
        if rung in self.earlier:
            self.earlier[rung][trial] = value

    def on_rung(self, trial: str, rung: int, value: float) -> Decision:
        """``trial`` reports ``value`` at ``rung``."""
        if rung in self.survivors:  # decided already (a trial repeating a judged rung)
            return Decision(CONTINUE if trial in self.survivors[rung] else STOP)
        self.values[rung][trial] = value
        decision = self._decide(rung)
        if decision is None:
            self.waiting.add(trial)
            return Decision(PAUSE)
        go_on, stop = decision
        self.waiting -= go_on | stop
        return Decision(
            CONTINUE if trial in go_on else STOP,
            resume=sorted(go_on - {trial}),
            stop=sorted(stop - {trial}),
        )

    def on_end(self, trial: str) -> Decision:
        """``trial`` left the bracket (finished, errored, removed): a rung that waited only on
        it is decided now."""
        self.ended.add(trial)
        self.waiting.discard(trial)
        for rung in range(1, self.rungs + 1):
            if rung not in self.survivors and self.values[rung]:
                decision = self._decide(rung)
                if decision is not None:
                    go_on, stop = decision
                    self.waiting -= go_on | stop
                    return Decision(CONTINUE, resume=sorted(go_on), stop=sorted(stop))
                break
        return Decision(CONTINUE)

    def _expected(self, rung: int) -> set[str]:
        """Trials that may still report ``rung``: added, not ended, past every earlier rung."""
        out = set(self.added) - self.ended
        for earlier in range(1, rung):
            out &= self.survivors.get(earlier, out)
        return out

    def _decide(self, rung: int) -> tuple[set[str], set[str]] | None:
        reported = self.values[rung]
        if len(self.added) < self.size or not self._expected(rung) <= set(reported):
            return None
        # The earlier trials at this rung first (in the order they came), then this bracket's.
        pool = {**self.earlier[rung], **reported}
        order = {t: i for i, t in enumerate([*self.earlier[rung], *self.added])}
        ranked = sorted(pool, key=lambda t: (-self.sign * pool[t], order[t]))
        keep = math.ceil(len(ranked) / self.factor)
        best = [t for t in ranked[:keep] if t in reported]
        rest = [t for t in ranked[keep:] if t in reported]
        go_on = {t for t in best if t not in self.ended}
        stop = {t for t in rest if t not in self.ended}
        self.survivors[rung] = set(best)
        self.ended |= stop
        return go_on, stop
