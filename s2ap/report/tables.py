"""Table 1 and Table 5 as markdown, one row per (model, dataset, sparsity).

Means are over seeds and ``±`` is the sample standard deviation (ddof=1) of the robust
accuracy over seeds, so a single-seed cell has no ``±``. An S2AP cell of a gamma search
shows the gamma :func:`~s2ap.report.selection.select_gamma` picks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from s2ap.report.load import CELL_KEY
from s2ap.report.selection import select_gamma
from s2ap.results import RUN

DASH = "–"


@dataclass
class Cell:
    n: int
    clean: float
    robust: float
    robust_std: float | None  # None with a single seed
    pre_s2ap: tuple[int, int] | None = None  # (runs whose mask predates S2AP, runs known)
    gamma: float | None = None  # shown when a gamma had to be chosen


def _cell(rows: pd.DataFrame, clean_col: str | None, robust_col: str) -> Cell:
    robust = rows[robust_col].to_numpy(dtype=float)
    std = float(np.std(robust, ddof=1)) if len(robust) > 1 else None
    clean = float(rows[clean_col].mean()) if clean_col else math.nan
    pre = None
    if RUN.best_mask_before_s2ap in rows.columns and rows[RUN.best_mask_before_s2ap].notna().any():
        known = rows[RUN.best_mask_before_s2ap].dropna()
        pre = (int(known.astype(bool).sum()), len(rows))
    return Cell(len(rows), clean, float(robust.mean()), std, pre)


def _fmt(cell: Cell | None, show_clean: bool, show_pre: bool) -> str:
    if cell is None:
        return DASH
    text = f"{cell.clean:.2f} / {cell.robust:.2f}" if show_clean else f"{cell.robust:.2f}"
    if cell.robust_std is not None:
        text += f" ± {cell.robust_std:.2f}"
    text += f" (n={cell.n})"
    if show_pre and cell.pre_s2ap is not None:
        text += f" ({cell.pre_s2ap[0]}/{cell.pre_s2ap[1]} pre-S2AP masks)"
    if cell.gamma is not None:
        text += f" [γ={cell.gamma:g}]"
    return text


def _cells(
    df: pd.DataFrame, clean_col: str | None, robust_col: str
) -> tuple[list[tuple[Any, ...]], list[str], dict[tuple[Any, ...], Cell]]:
    df = df[df[robust_col].notna()]
    if clean_col:
        df = df[df[clean_col].notna()]
    cells: dict[tuple[Any, ...], Cell] = {}
    for key, rows in df.groupby(CELL_KEY + [RUN.method, RUN.s2ap], sort=True):
        *row_key, method, s2ap = key
        gamma = None
        if s2ap:
            rows, gamma = select_gamma(rows, robust_col)
        cell = _cell(rows, clean_col, robust_col)
        cell.gamma = gamma
        if not s2ap:
            cell.pre_s2ap = None
        cells[(*row_key, method, bool(s2ap))] = cell
    row_keys = sorted({k[:3] for k in cells}, key=lambda k: (str(k[0]), str(k[1]), k[2]))
    methods = sorted({str(k[3]) for k in cells})
    return row_keys, methods, cells


def sparsity_label(value: float) -> str:
    """A sparsity as a percentage, whether stored as a fraction or already in percent."""
    return f"{value * 100:g}%" if value <= 1.0 else f"{value:g}%"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def table1(df: pd.DataFrame) -> str:
    """Markdown like the paper's Table 1: clean / robust ± std per method, Orig. vs S2AP, Delta."""
    row_keys, methods, cells = _cells(df, RUN.clean_acc, RUN.robust_acc)
    header = ["Network", "Dataset", "Sparsity"]
    for m in methods:
        header += [f"{m} Orig.", f"{m} S2AP", f"{m} Δ"]
    rows = []
    for model, dataset, sparsity in row_keys:
        row = [str(model), str(dataset), sparsity_label(sparsity)]
        for m in methods:
            orig = cells.get((model, dataset, sparsity, m, False))
            s2ap = cells.get((model, dataset, sparsity, m, True))
            row += [_fmt(orig, True, False), _fmt(s2ap, True, True)]
            if orig is None or s2ap is None:
                row.append(DASH)
            else:
                delta = (orig.clean - orig.robust) - (s2ap.clean - s2ap.robust)
                row.append(f"{delta:+.2f}")
        rows.append(row)
    notes = (
        "Accuracies in %: clean / robust, mean over seeds; ± is the sample std (ddof=1) of the robust "
        "accuracy over seeds (absent with one seed); n = number of seeds. Δ = (clean − robust)_Orig. − "
        "(clean − robust)_S2AP from the means: positive when S2AP narrows the gap. "
        '"k/n pre-S2AP masks": runs whose returned mask was chosen before S2AP began (warm-up). '
        "[γ=…]: the gamma with the best mean robust accuracy, when several were run. – : no runs."
    )
    return "# Table 1: clean / robust accuracy\n\n" + _markdown(header, rows) + "\n\n" + notes + "\n"


def table5(df: pd.DataFrame) -> str | None:
    """Markdown like the paper's Table 5 (Table 10 with clean): the raw mask before finetuning."""
    if RUN.mask_robust_acc not in df.columns or df[RUN.mask_robust_acc].isna().all():
        return None
    measured_clean = RUN.mask_clean_acc in df.columns and df[RUN.mask_clean_acc].notna().any()
    clean_col = RUN.mask_clean_acc if measured_clean else None
    row_keys, methods, cells = _cells(df, clean_col, RUN.mask_robust_acc)
    header = ["Network", "Dataset", "Sparsity"]
    for m in methods:
        header += [f"{m} Orig.", f"{m} S2AP"]
    rows = []
    for model, dataset, sparsity in row_keys:
        row = [str(model), str(dataset), sparsity_label(sparsity)]
        for m in methods:
            for s2ap in (False, True):
                row.append(_fmt(cells.get((model, dataset, sparsity, m, s2ap)), clean_col is not None, s2ap))
        rows.append(row)
    what = "clean / robust" if clean_col else "robust"
    notes = (
        f"Mask {what} accuracy in % of the pruned model before finetuning (pre-trained weights × mask), "
        "mean over seeds; ± is the sample std of the robust accuracy; n = number of seeds."
    )
    return "# Table 5: mask accuracy before finetuning\n\n" + _markdown(header, rows) + "\n\n" + notes + "\n"
