"""Table 1 and Table 5 as markdown, one row per (model, dataset, sparsity).

Per method, the Orig. and S2AP sides over their seeds and the paired difference Δ = S2AP −
Orig. of the robust accuracy with its 95% interval over seeds and test points, or "not
comparable" (:mod:`s2ap.report.compare`).
An S2AP cell of a gamma search shows the gamma :func:`~s2ap.report.selection.select_gamma`
picks on validation data; the notes state that rule and each side's selection budget.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from s2ap.report.compare import DASH, Comparison, compare, format_delta, format_side
from s2ap.report.load import CELL_KEY
from s2ap.report.selection import RULE, gammas_tried, select_gamma
from s2ap.results import RUN, gamma_choice

Key = tuple[Any, ...]  # (model, dataset, sparsity, method)


def sparsity_label(value: float) -> str:
    """A sparsity as a percentage, whether stored as a fraction or already in percent."""
    return f"{value * 100:g}%" if value <= 1.0 else f"{value:g}%"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def comparisons(
    df: pd.DataFrame, clean_col: str | None, robust_col: str
) -> dict[Key, tuple[Comparison, float | None, int]]:
    """Per setting: the comparison, the S2AP gamma shown (None when only one ran) and how
    many gamma values it was chosen among. The gamma is chosen on validation data before
    the shown metric's rows are kept, so every table shows the same gamma."""
    out: dict[Key, tuple[Comparison, float | None, int]] = {}
    for key, rows in df.groupby(CELL_KEY + [RUN.method], sort=True):
        s2ap = rows[rows[RUN.s2ap]]
        tried = gammas_tried(s2ap) if not s2ap.empty else 0
        s2ap, gamma = select_gamma(s2ap)
        measured = [c for c in (clean_col, robust_col) if c]
        orig, s2ap = (part.dropna(subset=measured) for part in (rows[~rows[RUN.s2ap]], s2ap))
        if orig.empty and s2ap.empty:
            continue
        out[tuple(key)] = (compare(orig, s2ap, clean_col, robust_col), gamma, tried)
    return out


def _layout(found: dict[Key, Any]) -> tuple[list[Key], list[str]]:
    row_keys = sorted({k[:3] for k in found}, key=lambda k: (str(k[0]), str(k[1]), k[2]))
    return row_keys, sorted({str(k[3]) for k in found})


def _budget(found: dict[Key, tuple[Comparison, float | None, int]]) -> str:
    tried = sorted({n for _, _, n in found.values() if n > 1})
    if not tried:
        return "Selection budget: one γ per setting, fixed in advance; Orig. and S2AP each ran once per seed."
    counts = " or ".join(str(n) for n in tried)
    return (
        f"Selection budget: S2AP's γ was chosen among {counts} values per setting, Orig. ran once per "
        "seed, so S2AP had that many more chances. Fair alternatives: fix γ in advance (as "
        "search_spaces/digits_ablation.yaml does), or give Orig. as many runs (seeds)."
    )


def _table(
    df: pd.DataFrame, clean_col: str | None, robust_col: str, title: str, what: str
) -> tuple[str, dict[Key, tuple[Comparison, float | None, int]]]:
    found = comparisons(df, clean_col, robust_col)
    row_keys, methods = _layout(found)
    header = ["Network", "Dataset", "Sparsity"]
    for m in methods:
        header += [f"{m} Orig.", f"{m} S2AP", f"{m} Δ robust"]
    rows = []
    for model, dataset, sparsity in row_keys:
        row = [str(model), str(dataset), sparsity_label(sparsity)]
        for m in methods:
            entry = found.get((model, dataset, sparsity, m))
            if entry is None:
                row += [DASH, DASH, DASH]
                continue
            c, gamma, tried = entry
            s2ap = format_side(c.s2ap, clean_col is not None)
            if gamma is not None and c.s2ap is not None:
                s2ap += gamma_choice(gamma, tried)
            row += [format_side(c.orig, clean_col is not None), s2ap, format_delta(c)]
        rows.append(row)
    notes = [
        f"{what}, in %, over seeds: mean ± sample std (ddof=1); a single seed shows its 95% Wilson "
        "interval [lo, hi] on its test points instead; n = test points per run.",
        "Δ robust = S2AP − Orig. robust accuracy over the seeds both ran. With per-point outcomes "
        "(predictions.parquet) it is paired by seed and test point, and its 95% interval counts both "
        "(variance components of seeds, points and their interaction, Satterthwaite df; one seed: "
        "paired over points, with McNemar's exact p). Without them (marked 'across seeds only') it is "
        "a Student t-interval across seeds, which leaves the test points' own noise out. "
        '"not resolved" when the interval contains 0; "not comparable" when the sides differ in '
        "attack, PGD steps or test points.",
        '"k/n pre-S2AP masks": S2AP runs whose returned mask was chosen before S2AP began (warm-up). '
        "[γ=… of N]: the γ shown, chosen among N values. – : no runs.",
        f"Selection: {RULE}.",
        _budget(found),
    ]
    text = f"# {title}\n\n" + _markdown(header, rows) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return text, found


def _attack(df: pd.DataFrame) -> str:
    kinds = set(df[RUN.robust_attack].dropna()) if RUN.robust_attack in df.columns else set()
    names = {"autoattack": "AutoAttack", "pgd": "PGD (eval.pgd_steps)"}
    if not kinds:
        return "robust = AutoAttack when run, else PGD (the table does not say which)"
    return "robust = " + " and ".join(names.get(k, k) for k in sorted(kinds))


def table1(df: pd.DataFrame) -> str:
    """Markdown like the paper's Table 1: clean / robust per method, Orig. vs S2AP, paired Δ."""
    what = f"Test clean / robust accuracy ({_attack(df)}; a run's clean and robust figures share its test points)"
    text, _ = _table(df, RUN.clean_acc, RUN.robust_acc, "Table 1: clean / robust accuracy", what)
    return text


def table5(df: pd.DataFrame) -> str | None:
    """Markdown like the paper's Table 5 (Table 10 with clean): the raw mask before finetuning."""
    if RUN.mask_robust_acc not in df.columns or df[RUN.mask_robust_acc].isna().all():
        return None
    measured_clean = RUN.mask_clean_acc in df.columns and df[RUN.mask_clean_acc].notna().any()
    clean_col = RUN.mask_clean_acc if measured_clean else None
    what = (
        f"Mask {'clean / robust' if clean_col else 'robust'} accuracy of the pruned model before finetuning "
        "(pre-trained weights × mask; robust = PGD with eval.pgd_steps steps, not AutoAttack; every test point)"
    )
    text, _ = _table(df, clean_col, RUN.mask_robust_acc, "Table 5: mask accuracy before finetuning", what)
    return text
