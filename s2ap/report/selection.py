"""Which gamma an S2AP setting shows when a search ran several.

The gamma with the highest mean *final validation* PGD accuracy over seeds: the test set
never selects (selecting on it would bias every figure the report then shows on it, in S2AP's
favour, since Orig. gets no selection). Table 1, Table 5 and the per-epoch figures all show
that gamma's runs, and the tables say how many values it was chosen among.
"""

from __future__ import annotations

import logging

import pandas as pd

from s2ap.report.load import PANEL_KEY
from s2ap.results import RUN
from s2ap.selection import best_label

logger = logging.getLogger(__name__)

SELECTION_COLUMN = RUN.final_val_pgd_acc  # == s2ap.selection.METRIC
RULE = (
    "S2AP's γ per setting = the highest mean final validation PGD accuracy over seeds; "
    "test accuracies never select"
)


def select_gamma(rows: pd.DataFrame) -> tuple[pd.DataFrame, float | None]:
    """Among several gammas, keep the one with the highest mean validation PGD accuracy (a
    table without validation figures gets the smallest gamma, chosen blind to every result)."""
    if RUN.gamma not in rows.columns or rows[RUN.gamma].nunique(dropna=True) <= 1:
        return rows, None
    if SELECTION_COLUMN in rows.columns and rows[SELECTION_COLUMN].notna().any():
        means = rows.groupby(RUN.gamma)[SELECTION_COLUMN].mean()  # a gamma's NaN seeds are skipped
        best = float(best_label(means.items()))  # s2ap.selection's rule: NaN last, first on a tie
    else:
        best = float(rows[RUN.gamma].min())
        logger.warning(
            "no %s values: showing the smallest gamma %g, not a selected one", SELECTION_COLUMN, best
        )
    return rows[rows[RUN.gamma] == best], best


def gammas_tried(rows: pd.DataFrame) -> int:
    """How many gamma values a setting's S2AP runs were chosen among."""
    return int(rows[RUN.gamma].nunique(dropna=True)) if RUN.gamma in rows.columns else 1


def best_gamma_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Orig. runs plus, per setting, the S2AP runs of the gamma Table 1 shows.

    The per-epoch figures compare Orig. with *the* S2AP result; averaging curves over a
    gamma search would mix settings the paper never compares.
    """
    if RUN.gamma not in df.columns:
        return df
    keep = ~df[RUN.s2ap]
    for _, rows in df[df[RUN.s2ap]].groupby(PANEL_KEY, sort=False):
        chosen, _ = select_gamma(rows)
        gammas = set(chosen[RUN.gamma].dropna())
        keep |= df.index.isin(rows.index[rows[RUN.gamma].isin(gammas) | rows[RUN.gamma].isna()])
    return df[keep]
