"""The controls section: is a gain S2AP's, any perturbation's, or AWP finetuning's?

For every setting (model, dataset, method, sparsity) whose runs hold a control arm (issue 27:
``finetune.awp`` without S2AP, S2AP with plain finetuning, ``s2ap.direction: random``,
``s2ap.perturb: weights``), this section shows:

* each arm against Orig., paired by seed (and by test point where ``predictions.parquet``
  gave the per-point outcomes), Δ robust accuracy with its 95% interval and verdict
  (:func:`s2ap.report.compare.compare`, the same statistics as Table 1);
* the two main effects of the 2 x 2 factorial score perturbation (S2AP pruning yes/no) x AWP
  finetuning (yes/no), each the mean of its two simple effects, paired by seed and point:
  perturbation = ((S2AP + AWP − Orig. + AWP) + (S2AP + plain − Orig.)) / 2, AWP = ((Orig. + AWP
  − Orig.) + (S2AP + AWP − S2AP + plain)) / 2;
* sharpness vs random direction, paired (both with the same finetuning);
* the cost of each arm: the median seconds of a pruning and of a finetuning epoch (the epochs
  table's ``time_s``) and their ratio to Orig.'s (timings of one run each; on a shared
  machine they carry its noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from s2ap.report.compare import DASH, Comparison, _outcomes, compare, format_delta, format_side, per_seed
from s2ap.report.load import AWP, GROUP
from s2ap.report.tables import sparsity_label
from s2ap.results import EPOCH, RUN
from s2ap.stats import NOT_RESOLVED, Paired, PointPaired, paired, paired_points, verdict

ORIG, ORIG_AWP = "Orig.", "Orig. + AWP finetuning"
S2AP_PLAIN, S2AP_AWP = "S2AP + plain finetuning", "S2AP + AWP (paper)"
RANDOM_AWP, WEIGHTS_AWP = "random direction + AWP", "weight perturbation + AWP"
ORDER = (ORIG, ORIG_AWP, S2AP_PLAIN, S2AP_AWP, RANDOM_AWP, WEIGHTS_AWP)
SETTING = [RUN.model, RUN.dataset, GROUP, RUN.sparsity]
HEADER = [
    "arm",
    "robust acc. (%)",
    "Δ robust vs Orig. [95%]",
    "verdict",
    "s / pruning epoch",
    "s / finetuning epoch",
    "cost vs Orig. (prune / finetune)",
]


def arm(row: pd.Series) -> str:
    """The control arm a prepared run row belongs to."""
    awp = bool(row[AWP])
    if not row[RUN.s2ap]:
        return ORIG_AWP if awp else ORIG
    weights, random = row.get(RUN.perturb) == "weights", row.get(RUN.direction) == "random"
    if not weights and not random:
        return S2AP_AWP if awp else S2AP_PLAIN
    if weights:
        search = "random weight perturbation" if random else "weight perturbation"
    else:
        search = "random direction"
    return f"{search} + {'AWP' if awp else 'plain finetuning'}"


def arms(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A setting's runs per arm, in :data:`ORDER` (others after), each with a measured
    robust accuracy; several S2AP gammas make every perturbed arm one per gamma."""
    rows = rows.dropna(subset=[RUN.robust_acc])
    names = rows.apply(arm, axis=1) if not rows.empty else pd.Series(dtype=str)
    gammas = rows.loc[rows[RUN.s2ap], RUN.gamma].nunique(dropna=True) if RUN.gamma in rows else 0
    if gammas > 1:
        names = names.where(~rows[RUN.s2ap], names + rows[RUN.gamma].map(lambda g: f" (γ={g:g})"))
    found = {name: rows[names == name] for name in names.unique()}
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0].split(" (γ=")[0], len(ORDER)), kv[0])))


def has_controls(df: pd.DataFrame) -> bool:
    """Whether the runs hold any arm beyond the paper's two sides."""
    if df.empty:
        return False
    return bool(set(df.apply(arm, axis=1)) - {ORIG, S2AP_AWP})


@dataclass(frozen=True)
class Effect:
    """A contrast between arms, paired by seed (and test point where known)."""

    name: str
    delta: Paired | PointPaired | None
    seeds: tuple[int, ...] = ()
    missing: str | None = None  # why there is no estimate


def _mean_outcomes(parts: list[dict[int, dict[int, float]]], seeds: list[int]) -> np.ndarray | None:
    """Seeds x points, the mean over ``parts`` of their per-point outcomes (None: the parts
    were measured on different points)."""
    index = sorted(parts[0][seeds[0]])
    if any(sorted(p[s]) != index for p in parts for s in seeds):
        return None
    return np.mean([[[p[s][i] for i in index] for s in seeds] for p in parts], axis=0)


def contrast(
    name: str, low: list[pd.DataFrame], high: list[pd.DataFrame], col: str = RUN.robust_acc
) -> Effect:
    """mean(``high`` arms) − mean(``low`` arms), paired over the seeds every arm ran: per test
    point when every run has its outcomes (:func:`s2ap.stats.paired_points`), else per seed
    (:func:`s2ap.stats.paired`)."""
    if any(part.empty for part in low + high):
        return Effect(name, None, (), "an arm did not run")
    values = [per_seed(part, col) for part in low + high]
    seeds = sorted(set.intersection(*(set(v) for v in values)))
    if not seeds:
        return Effect(name, None, (), "no seed common to every arm")
    outcomes = [_outcomes(part) for part in low + high] if col == RUN.robust_acc else [None]
    if all(o is not None for o in outcomes):
        a = _mean_outcomes(outcomes[: len(low)], seeds)  # type: ignore[arg-type]
        b = _mean_outcomes(outcomes[len(low) :], seeds)  # type: ignore[arg-type]
        if a is not None and b is not None and a.shape == b.shape:
            return Effect(name, paired_points(a, b), tuple(seeds))
    mean = [
        [float(np.mean([v[s] for v in side])) for s in seeds]
        for side in (values[: len(low)], values[len(low) :])
    ]
    return Effect(name, paired(mean[0], mean[1]), tuple(seeds))


def effects(found: dict[str, pd.DataFrame]) -> list[Effect]:
    """The factorial's two main effects and sharpness vs random direction, where their arms ran."""
    get = lambda name: found.get(name, pd.DataFrame())  # noqa: E731
    out = []
    if all(name in found for name in (ORIG, ORIG_AWP, S2AP_PLAIN, S2AP_AWP)):
        out.append(
            contrast(
                "score perturbation (S2AP pruning − plain pruning, mean over finetuning)",
                [get(ORIG), get(ORIG_AWP)],
                [get(S2AP_PLAIN), get(S2AP_AWP)],
            )
        )
        out.append(
            contrast(
                "AWP finetuning (AWP − plain finetuning, mean over pruning)",
                [get(ORIG), get(S2AP_PLAIN)],
                [get(ORIG_AWP), get(S2AP_AWP)],
            )
        )
    if RANDOM_AWP in found and S2AP_AWP in found:
        out.append(contrast("sharpness − random direction (both + AWP)", [get(RANDOM_AWP)], [get(S2AP_AWP)]))
    return out


def epoch_costs(rows: pd.DataFrame, epochs: pd.DataFrame | None) -> dict[str, float | None]:
    """Median seconds of one pruning and one finetuning epoch over ``rows``' runs."""
    out: dict[str, float | None] = {"prune": None, "finetune": None}
    need = {EPOCH.config_hash, EPOCH.seed, EPOCH.phase, EPOCH.time_s}
    if epochs is None or not need <= set(epochs.columns) or RUN.config_hash not in rows.columns:
        return out
    keys = set(zip(rows[RUN.config_hash], rows[RUN.seed], strict=True))
    mine = epochs[[k in keys for k in zip(epochs[EPOCH.config_hash], epochs[EPOCH.seed], strict=True)]]
    for phase in out:
        times = mine.loc[mine[EPOCH.phase] == phase, EPOCH.time_s].dropna()
        out[phase] = float(times.median()) if not times.empty else None
    return out


def _seconds(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}"


def _ratio(value: float | None, base: float | None) -> str:
    return DASH if value is None or not base else f"{value / base:.2f}x"


def format_effect(e: Effect) -> tuple[str, str]:
    """The effect's Δ text and verdict (or why it is missing)."""
    if e.delta is None:
        return f"not estimated: {e.missing}", DASH
    return _delta_text(Comparison(None, None, e.delta, e.seeds)), verdict(e.delta)


def _delta_text(c: Comparison) -> str:
    """Table 1's Δ text without the verdict, which has its own column here."""
    return format_delta(c).removesuffix(f" {NOT_RESOLVED}")


@dataclass(frozen=True)
class SettingControls:
    """One setting's controls as cells: the arms table (:data:`HEADER`) and the effects
    (name, Δ text, verdict); the report writes them as markdown, the web page as HTML."""

    title: str
    arms: list[list[str]]
    effects: list[list[str]]


def setting_controls(key: tuple, rows: pd.DataFrame, epochs: pd.DataFrame | None) -> SettingControls:
    """One setting's arms against Orig. (Δ, verdict, cost) and its effects."""
    model, dataset, method, sparsity = key
    found = arms(rows)
    orig = found.get(ORIG, pd.DataFrame())
    base = epoch_costs(orig, epochs) if not orig.empty else {"prune": None, "finetune": None}
    table = []
    for name, part in found.items():
        cost = epoch_costs(part, epochs)
        if name == ORIG or orig.empty:
            delta, said = DASH, DASH
        else:
            c = compare(orig, part, None, RUN.robust_acc)
            delta = _delta_text(c)
            said = verdict(c.delta) if c.delta is not None and c.not_comparable is None else DASH
        side = compare(part, part.iloc[0:0], None, RUN.robust_acc).orig
        table.append(
            [
                name,
                format_side(side, False),
                delta,
                said,
                _seconds(cost["prune"]),
                _seconds(cost["finetune"]),
                f"{_ratio(cost['prune'], base['prune'])} / {_ratio(cost['finetune'], base['finetune'])}",
            ]
        )
    found_effects = [[e.name, *format_effect(e)] for e in effects(found)]
    title = f"{model} / {dataset} / {method} at {sparsity_label(sparsity)} sparsity"
    return SettingControls(title, table, found_effects)


def all_controls(df: pd.DataFrame, epochs: pd.DataFrame | None) -> list[SettingControls]:
    """Every setting that holds a control arm and Orig., in setting order."""
    if GROUP not in df.columns or not has_controls(df):
        return []
    return [
        setting_controls(tuple(key), rows, epochs)
        for key, rows in df.groupby(SETTING, sort=True)
        if has_controls(rows) and ORIG in arms(rows)
    ]


def setting_section(s: SettingControls) -> list[str]:
    """The markdown of one setting: the arms table, then the effects."""
    lines = [
        f"### {s.title}",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in s.arms]
    if s.effects:
        lines += ["", "| effect (robust acc., %) | Δ [95%] | verdict |", "|---|---|---|"]
        lines += [f"| {name} | {text} | {said} |" for name, text, said in s.effects]
    return lines


NOTES = (
    "Each arm against Orig. over the seeds both ran (paired by seed, and by test point where "
    "predictions.parquet holds the per-point outcomes); a main effect is the mean of its two simple "
    "effects in the 2 x 2 factorial, paired the same way; 'not resolved' when the 95% interval "
    "contains 0. Cost: median seconds per epoch of each arm's runs (one timing per epoch, on the "
    "machine the runs shared), and the ratio to Orig.'s."
)


def controls_section(df: pd.DataFrame, epochs: pd.DataFrame | None) -> str | None:
    """The controls section as markdown, or None when no setting holds a control arm."""
    found = all_controls(df, epochs)
    if not found:
        return None
    lines = ["# Controls: S2AP's direction, any perturbation, AWP finetuning", ""]
    for s in found:
        lines += setting_section(s) + [""]
    return "\n".join([*lines, NOTES, ""])


def verdict_lines(df: pd.DataFrame) -> list[str]:
    """One line per arm against Orig. and per effect, each with the verdict its interval
    carries (for a README section generated from the tables, never typed by hand)."""
    lines = []
    for key, rows in df.groupby(SETTING, sort=True):
        found = arms(rows)
        if not has_controls(rows) or ORIG not in found:
            continue
        where = f"{key[0]} / {key[1]} / {key[2]} at {sparsity_label(key[3])}"
        for name, part in found.items():
            if name != ORIG:
                c = compare(found[ORIG], part, None, RUN.robust_acc)
                said = verdict(c.delta) if c.delta is not None and c.not_comparable is None else DASH
                lines.append(f"- {where}, {name} − Orig.: {_delta_text(c)} → **{said}**")
        for e in effects(found):
            text, said = format_effect(e)
            lines.append(f"- {where}, {e.name}: {text} → **{said}**")
    return lines
