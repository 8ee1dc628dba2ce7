"""Replaying a search's schedulers over recorded trials (for ``bench_asha.py``).

A recorded trial ran to its end and kept, per search epoch, the validation robust accuracy a
search's scheduler sees (``val_pgd_acc``) and, after the probed pruning epochs, the probe's
value and cost (``probe_val_pgd_acc``, ``probe_time_s``). A replay asks what a scheduler would
have stopped and which trial it would have picked, with no training:

- :func:`asha` is Ray's asynchronous successive halving (``_Bracket.on_result`` with
  ``stop_last_trials=False``, rungs in descending order, the cutoff the ``(1 - 1/rf)``
  percentile of the values recorded at a rung so far), trials arriving one at a time in a
  given order, on either clock the search offers: search epochs (``scheduler.rungs: epochs``,
  ``max_t`` = last epoch - 1) or probe numbers (``rungs: probe``, ``max_t`` = probes + 1,
  grace 1), exactly as ``s2ap.tune.scheduler.CellScheduler`` configures Ray.
- :func:`halving` is ``s2ap.tune.halving.Bracket``'s rule: at every probe the best
  ``ceil(k / rf)`` of the ``k`` still running go on (ties: the earlier trial).

Both return the trial-epochs used, probes counted in epoch units (a probe's seconds over the
trial's mean seconds per epoch: training only, so a probe is if anything over-counted), and
the pick: the finished trial with the best final ``val_pgd_acc``. Nothing here looks at test
accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Recorded:
    """One trial of a recording: ``curve[e - 1]`` is ``val_pgd_acc`` after search epoch ``e``;
    ``probes`` maps a probed pruning epoch to (probe value, probe cost in epochs)."""

    curve: tuple[float, ...]
    probes: dict[int, tuple[float, float]]

    @property
    def epochs(self) -> int:
        return len(self.curve)

    @property
    def final(self) -> float:
        """What a search picks by: the last epoch's validation robust accuracy."""
        return self.curve[-1]


@dataclass(frozen=True)
class Scheduler:
    """A scheduler as a search spec would set it. ``rungs`` epochs: ASHA at ``grace``, x ``rf``
    ...; ``rungs`` probe: at the probes after ``probe_after`` (halving: every probe)."""

    kind: str  # "asha" | "halving" | "random" (halving by arrival order: a control without signal)
    rf: float
    rungs: str = "probe"  # "epochs" | "probe"
    grace: int = 1
    probe_after: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        if self.kind == "random":
            return f"random halving (after pruning epochs {list(self.probe_after)}, rf {self.rf:g})"
        where = f"grace {self.grace}" if self.rungs == "epochs" else f"probes {list(self.probe_after)}"
        return f"{self.kind} {self.rungs} ({where}, rf {self.rf:g})"

    def probe_cost(self, trial: Recorded, through: int) -> float:
        """Epoch units of the probes this scheduler runs up to pruning epoch ``through``."""
        if self.kind == "random":
            return 0.0  # it runs none
        return sum(trial.probes[p][1] for p in self.probe_after if p <= through)


def ray_milestones(max_t: float, grace: float, rf: float) -> list[float]:
    """Ray's ASHA rungs, in the descending order it keeps them (its own arithmetic)."""
    n = int(np.log(max_t / grace) / np.log(rf) + 1)
    return [grace * rf**k for k in reversed(range(n))]


def _reports(s: Scheduler, trial: Recorded) -> list[tuple[float, float, int]]:
    """(clock, value, search epoch) of each report the scheduler judges on."""
    if s.rungs == "epochs":
        return [(e, v, e) for e, v in enumerate(trial.curve, start=1)]
    return [(i, trial.probes[p][0], p) for i, p in enumerate(s.probe_after, start=1)]


def asha(s: Scheduler, trials: Sequence[Recorded], order: Sequence[int]) -> tuple[float, int]:
    """ASHA over ``trials`` arriving in ``order``: (trial-epochs used, pick)."""
    if s.rungs == "epochs":
        rungs = ray_milestones(trials[0].epochs - 1, s.grace, s.rf)
    else:
        rungs = ray_milestones(len(s.probe_after) + 1, 1, s.rf)
    recorded: dict[float, list[float]] = {m: [] for m in rungs}
    used, finished = 0.0, []
    for i in order:
        trial = trials[i]
        judged: set[float] = set()
        stopped_at = None
        for clock, value, epoch in _reports(s, trial):
            for m in rungs:
                if clock >= m and m in judged:
                    break  # the decision at this rung is made: train on
                if clock < m:
                    continue
                values = recorded[m]
                cutoff = float(np.nanpercentile(values, (1 - 1 / s.rf) * 100)) if values else None
                values.append(value)
                judged.add(m)
                if cutoff is not None and value < cutoff:
                    stopped_at = epoch
                break
            if stopped_at is not None:
                break
        if stopped_at is None:
            finished.append(i)
            used += trial.epochs + s.probe_cost(trial, trial.epochs)
        else:
            used += stopped_at + s.probe_cost(trial, stopped_at)
    return used, max(finished, key=lambda j: trials[j].final)


def halving(s: Scheduler, trials: Sequence[Recorded], order: Sequence[int]) -> tuple[float, int]:
    """Synchronous successive halving over the trials in ``order`` (a bracket of them):
    (trial-epochs used, pick). ``random`` keeps the first arrivals instead of the best probes."""
    alive = list(order)
    used = 0.0
    for p in s.probe_after:
        keep = math.ceil(len(alive) / s.rf)
        if s.kind == "random":
            ranked = list(alive)
        else:
            ranked = sorted(alive, key=lambda i: (-trials[i].probes[p][0], alive.index(i)))
        for i in ranked[keep:]:
            used += p + s.probe_cost(trials[i], p)
        alive = [i for i in alive if i in ranked[:keep]]
    for i in alive:
        used += trials[i].epochs + s.probe_cost(trials[i], trials[i].epochs)
    return used, max(alive, key=lambda j: trials[j].final)


def replay(s: Scheduler, trials: Sequence[Recorded], order: Sequence[int]) -> tuple[float, float]:
    """(share of the draw's trial-epochs used, regret of the pick) for one draw."""
    used, pick = (asha if s.kind == "asha" else halving)(s, trials, order)
    total = sum(trials[i].epochs for i in order)
    best = max(trials[i].final for i in order)
    return used / total, best - trials[pick].final


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(v: Sequence[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for m in range(i, j + 1):
                r[order[m]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    sa = math.sqrt(sum((x - ma) ** 2 for x in ra))
    sb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (sa * sb) if sa and sb else float("nan")
