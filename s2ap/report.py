"""Paper-style tables and figures from result tables.

``python -m s2ap.report PATH [PATH ...] [--out DIR]`` reads Parquet files with the
``RUN_SCHEMA`` columns (a run's ``final.parquet``, a search's ``trials.parquet``, or a
folder holding one of them, with ``epochs.parquet`` beside it) and writes:

* ``table1.md`` - clean / robust accuracy per (model, dataset, sparsity) and method, Orig.
  vs S2AP, with the clean-robust gap difference Delta (paper Table 1);
* ``table5.md`` - accuracy of the raw mask before finetuning (paper Table 5), if measured;
* ``hamming_diff.png`` (Fig. 1b/4b), ``lambda_max.png`` (Fig. 1c/2), ``gamma.png``
  (Fig. 5), ``loss_diff.png`` (Fig. 3), each skipped with a reason when its data is absent.

Accuracies are stored as fractions and shown as percentages. Means are over seeds and
``±`` is the sample standard deviation (ddof=1) of the robust accuracy over seeds, so a
single-seed cell has no ``±``. When an S2AP cell holds several gamma values (a gamma
search), the gamma with the highest mean robust accuracy is shown, as the paper selects it.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

RUN_FILES = ("final.parquet", "trials.parquet")
EPOCH_FILE = "epochs.parquet"
REQUIRED = ("model", "dataset", "method", "sparsity", "s2ap", "seed", "clean_acc", "robust_acc")
CELL_KEY = ["model", "dataset", "sparsity"]
PANEL_KEY = ["model", "dataset", "method", "sparsity"]
DASH = "–"


class ReportError(Exception):
    """Bad input: the message is one line that names what is missing."""


@dataclass
class Report:
    """What a report run produced: files written, and a reason per skipped output."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- loading


def _resolve(path: Path) -> tuple[Path, Path | None]:
    """The run table for a file or folder argument, and the epochs table beside it."""
    if path.is_dir():
        for name in RUN_FILES:
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise ReportError(f"{path} contains neither {' nor '.join(RUN_FILES)}")
    elif not path.exists():
        raise ReportError(f"{path}: no such file or directory")
    epochs = path.parent / EPOCH_FILE
    return path, (epochs if epochs.is_file() and epochs != path else None)


def _read(path: Path) -> pd.DataFrame:
    try:
        return pq.read_table(path).to_pandas()
    except Exception as exc:  # pyarrow raises several types for a broken or foreign file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReportError(f"{path} is not a readable Parquet file ({reason})") from None


def load_runs(paths: Iterable[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Concatenate the run tables (and epoch tables) named by ``paths``; ReportError if unusable."""
    runs: list[pd.DataFrame] = []
    epochs: list[pd.DataFrame] = []
    for raw in paths:
        file, epoch_file = _resolve(Path(raw))
        table = _read(file)
        missing = [c for c in REQUIRED if c not in table.columns]
        if missing:
            raise ReportError(f"{file} lacks columns: {', '.join(missing)}")
        if table.empty:
            raise ReportError(f"{file} has no rows")
        runs.append(table)
        if epoch_file is not None:
            try:
                epochs.append(pq.read_table(epoch_file).to_pandas())
            except Exception as exc:  # the epochs table is optional: warn, do not fail
                logger.warning("ignoring unreadable %s: %s", epoch_file, exc)
    df = pd.concat(runs, ignore_index=True) if len(runs) > 1 else runs[0]
    ep = pd.concat(epochs, ignore_index=True) if epochs else None
    return df, ep


def _method_label(row: pd.Series) -> str:
    """Method name plus the variant axes that make runs incomparable: channel granularity
    (and its FLOPs target), and AWP instead of S2AP during the mask search (Table 13)."""
    label = str(row["method"])
    if row.get("granularity") == "channel":
        target = row.get("flops_reduction_target")
        label += f"-channel{'-' + format(target, 'g') + 'x' if pd.notna(target) else ''}"
    if row.get("perturb") == "weights":
        label += "+AWP-prune"
    return label


def _prepare(df: pd.DataFrame, epochs: pd.DataFrame | None) -> pd.DataFrame:
    """Successful runs only, one row per (config, seed), percentages, per-epoch lists filled."""
    df = df.copy()
    if "status" in df.columns:
        df = df[df["status"].isna() | (df["status"] == "ok")]
    if df.empty:
        raise ReportError("no successful runs (status 'ok') in the input")
    if "config_hash" in df.columns:
        df = df.drop_duplicates(subset=["config_hash", "seed"], keep="last")
    df["s2ap"] = df["s2ap"].fillna(False).astype(bool)
    df["method"] = df.apply(_method_label, axis=1)
    df["sparsity"] = df["sparsity"].astype(float).round(6)
    acc_cols = [
        c
        for c in ("clean_acc", "robust_acc", "pgd_acc", "aa_acc", "mask_clean_acc", "mask_robust_acc")
        if c in df
    ]
    for col in acc_cols:
        df[col] = df[col].astype(float)
    # Results are fractions; a table already in percent (values above 1) is left as is.
    peak = df[[c for c in ("clean_acc", "robust_acc") if c in df]].max().max()
    scale = 1.0 if pd.notna(peak) and peak > 1.0 + 1e-9 else 100.0
    for col in acc_cols:
        df[col] = df[col] * scale
    for col in ("hamming", "lambda_max", "loss_diff_rho", "loss_diff"):
        if col not in df.columns:
            df[col] = None
        df[col] = df[col].map(_as_list)
    if epochs is not None:
        _fill_from_epochs(df, epochs)
    return df.reset_index(drop=True)


def _as_list(value: Any) -> list[float]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [float(v) for v in value if v is not None]


def _fill_from_epochs(df: pd.DataFrame, epochs: pd.DataFrame) -> None:
    """Per-epoch hamming / lambda_max from the epochs table where the run row has none."""
    need = {"config_hash", "seed", "phase", "epoch"}
    if not need <= set(epochs.columns) or "config_hash" not in df.columns:
        return
    prune = epochs[epochs["phase"] == "prune"].sort_values("epoch")
    for col in ("hamming", "lambda_max"):
        if col not in prune.columns:
            continue
        series = {
            key: [float(v) for v in grp[col] if pd.notna(v)]
            for key, grp in prune.groupby(["config_hash", "seed"], sort=False)
        }
        for i in df.index:
            if not df.at[i, col]:
                df.at[i, col] = series.get((df.at[i, "config_hash"], df.at[i, "seed"]), [])


# --------------------------------------------------------------------------- tables


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
    if "best_mask_before_s2ap" in rows.columns and rows["best_mask_before_s2ap"].notna().any():
        known = rows["best_mask_before_s2ap"].dropna()
        pre = (int(known.astype(bool).sum()), len(rows))
    return Cell(len(rows), clean, float(robust.mean()), std, pre)


def _select_gamma(rows: pd.DataFrame, robust_col: str) -> tuple[pd.DataFrame, float | None]:
    """Among several gammas, keep the one with the highest mean robust accuracy."""
    if "gamma" not in rows.columns or rows["gamma"].nunique(dropna=True) <= 1:
        return rows, None
    means = rows.groupby("gamma")[robust_col].mean()
    best = float(means.idxmax())
    return rows[rows["gamma"] == best], best


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
    for key, rows in df.groupby(CELL_KEY + ["method", "s2ap"], sort=True):
        *row_key, method, s2ap = key
        gamma = None
        if s2ap:
            rows, gamma = _select_gamma(rows, robust_col)
        cell = _cell(rows, clean_col, robust_col)
        cell.gamma = gamma
        if not s2ap:
            cell.pre_s2ap = None
        cells[(*row_key, method, bool(s2ap))] = cell
    row_keys = sorted({k[:3] for k in cells}, key=lambda k: (str(k[0]), str(k[1]), k[2]))
    methods = sorted({str(k[3]) for k in cells})
    return row_keys, methods, cells


def _sparsity(value: float) -> str:
    return f"{value * 100:g}%" if value <= 1.0 else f"{value:g}%"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def table1(df: pd.DataFrame) -> str:
    """Markdown like the paper's Table 1: clean / robust ± std per method, Orig. vs S2AP, Delta."""
    row_keys, methods, cells = _cells(df, "clean_acc", "robust_acc")
    header = ["Network", "Dataset", "Sparsity"]
    for m in methods:
        header += [f"{m} Orig.", f"{m} S2AP", f"{m} Δ"]
    rows = []
    for model, dataset, sparsity in row_keys:
        row = [str(model), str(dataset), _sparsity(sparsity)]
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
    if "mask_robust_acc" not in df.columns or df["mask_robust_acc"].isna().all():
        return None
    clean_col = (
        "mask_clean_acc" if "mask_clean_acc" in df.columns and df["mask_clean_acc"].notna().any() else None
    )
    row_keys, methods, cells = _cells(df, clean_col, "mask_robust_acc")
    header = ["Network", "Dataset", "Sparsity"]
    for m in methods:
        header += [f"{m} Orig.", f"{m} S2AP"]
    rows = []
    for model, dataset, sparsity in row_keys:
        row = [str(model), str(dataset), _sparsity(sparsity)]
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


# --------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _panels(n: int) -> tuple[Any, list[Any]]:
    plt = _pyplot()
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _title(key: Sequence[Any]) -> str:
    model, dataset, method, sparsity = key
    return f"{model} / {dataset} / {method} / {_sparsity(sparsity)}"


def _mean_curve(lists: Iterable[list[float]]) -> tuple[np.ndarray, np.ndarray] | None:
    """Element-wise mean and std over seeds; runs of different length are NaN-padded."""
    lists = [v for v in lists if v]
    if not lists:
        return None
    length = max(len(v) for v in lists)
    arr = np.full((len(lists), length), np.nan)
    for i, v in enumerate(lists):
        arr[i, : len(v)] = v
    count = np.sum(~np.isnan(arr), axis=0)
    mean = np.nanmean(arr, axis=0)
    std = np.where(count > 1, np.nanstd(arr, axis=0, ddof=0), 0.0)
    return mean, std


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_hamming_diff(df: pd.DataFrame, path: Path) -> str | None:
    """h_orig - h_s2ap per pruning epoch (Fig. 1b): green where S2AP is more stable."""
    panels = []
    for key, rows in df.groupby(PANEL_KEY, sort=True):
        orig = _mean_curve(rows.loc[~rows["s2ap"], "hamming"])
        s2ap = _mean_curve(rows.loc[rows["s2ap"], "hamming"])
        if orig is not None and s2ap is not None:
            length = min(len(orig[0]), len(s2ap[0]))
            panels.append((key, orig[0][:length] - s2ap[0][:length]))
    if not panels:
        return "no setting has per-epoch hamming distances for both Orig. and S2AP runs"
    fig, axes = _panels(len(panels))
    for ax, (key, diff) in zip(axes, panels, strict=True):
        epochs = np.arange(len(diff))
        ax.plot(epochs, diff, color="black", lw=1)
        ax.fill_between(epochs, 0, diff, where=diff >= 0, color="tab:green", alpha=0.45, interpolate=True)
        ax.fill_between(epochs, 0, diff, where=diff < 0, color="tab:red", alpha=0.45, interpolate=True)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(_title(key), fontsize=9)
        ax.set_xlabel("pruning epoch")
        ax.set_ylabel("h_orig − h_S2AP")
    _save(fig, path)
    return None


def plot_lambda_max(df: pd.DataFrame, path: Path) -> str | None:
    """Score-space lambda_max per pruning epoch, Orig. vs S2AP (Fig. 1c / Fig. 2)."""
    panels = []
    for key, rows in df.groupby(PANEL_KEY, sort=True):
        curves = {
            label: _mean_curve(rows.loc[rows["s2ap"] == flag, "lambda_max"])
            for label, flag in (("Orig.", False), ("S2AP", True))
        }
        if any(c is not None for c in curves.values()):
            panels.append((key, curves))
    if not panels:
        return "no run has per-epoch lambda_max values"
    fig, axes = _panels(len(panels))
    for ax, (key, curves) in zip(axes, panels, strict=True):
        for (label, curve), color in zip(curves.items(), ("tab:blue", "tab:orange"), strict=True):
            if curve is None:
                continue
            mean, std = curve
            epochs = np.arange(len(mean))
            ax.plot(epochs, mean, label=label, color=color)
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
        ax.set_title(_title(key), fontsize=9)
        ax.set_xlabel("pruning epoch")
        ax.set_ylabel("λ_max")
        ax.legend(fontsize=8)
    _save(fig, path)
    return None


def plot_gamma(df: pd.DataFrame, path: Path) -> str | None:
    """Robust accuracy vs gamma for S2AP runs, mean ± std over seeds, log x (Fig. 5)."""
    if "gamma" not in df.columns:
        return "the table has no gamma column"
    s2ap = df[df["s2ap"] & df["gamma"].notna() & (df["gamma"] > 0) & df["robust_acc"].notna()]
    if s2ap.empty:
        return "no S2AP run with a positive gamma and a robust accuracy"
    keys = sorted(
        {tuple(k) for k in s2ap[PANEL_KEY].itertuples(index=False)}, key=lambda k: tuple(map(str, k))
    )
    fig, axes = _panels(len(keys))
    for ax, key in zip(axes, keys, strict=True):
        match = np.logical_and.reduce([df[c] == v for c, v in zip(PANEL_KEY, key, strict=True)])
        rows = df[match]
        s = rows[rows["s2ap"] & rows["gamma"].notna() & (rows["gamma"] > 0)]
        stats = s.groupby("gamma")["robust_acc"].agg(["mean", "std", "count"]).sort_index()
        ax.errorbar(
            stats.index, stats["mean"], yerr=stats["std"].fillna(0.0), marker="o", capsize=3, label="S2AP"
        )
        orig = rows.loc[~rows["s2ap"], "robust_acc"].dropna()
        if not orig.empty:
            ax.axhline(orig.mean(), color="grey", ls="--", label="Orig.")
        ax.set_xscale("log")
        ax.set_title(_title(key), fontsize=9)
        ax.set_xlabel("γ")
        ax.set_ylabel("robust accuracy (%)")
        ax.legend(fontsize=8)
    _save(fig, path)
    return None


def plot_loss_diff(df: pd.DataFrame, path: Path) -> str | None:
    """Score-space loss difference vs rho, Orig. vs S2AP (Fig. 3)."""
    panels = []
    for key, rows in df.groupby(PANEL_KEY, sort=True):
        sides = {}
        for label, flag in (("Orig.", False), ("S2AP", True)):
            values: dict[float, list[float]] = {}
            for rhos, diffs in zip(
                rows.loc[rows["s2ap"] == flag, "loss_diff_rho"],
                rows.loc[rows["s2ap"] == flag, "loss_diff"],
                strict=True,
            ):
                for rho, d in zip(rhos, diffs, strict=False):
                    values.setdefault(round(rho, 12), []).append(d)
            if values:
                sides[label] = values
        if sides:
            panels.append((key, sides))
    if not panels:
        return "no run has loss-difference measurements"
    fig, axes = _panels(len(panels))
    for ax, (key, sides) in zip(axes, panels, strict=True):
        for label, values in sides.items():
            rhos = sorted(values)
            mean = [float(np.mean(values[r])) for r in rhos]
            std = [float(np.std(values[r], ddof=1)) if len(values[r]) > 1 else 0.0 for r in rhos]
            ax.errorbar(rhos, mean, yerr=std, marker="o", capsize=3, label=label)
        ax.set_title(_title(key), fontsize=9)
        ax.set_xlabel("ρ")
        ax.set_ylabel("L(s+ν) − L(s)")
        ax.legend(fontsize=8)
    _save(fig, path)
    return None


def best_gamma_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Orig. runs plus, per setting, the S2AP runs of the gamma Table 1 shows.

    The per-epoch figures compare Orig. with *the* S2AP result; averaging curves over a
    gamma search would mix settings the paper never compares.
    """
    if "gamma" not in df.columns:
        return df
    keep = ~df["s2ap"]
    for _, rows in df[df["s2ap"]].groupby(PANEL_KEY, sort=False):
        chosen, _ = _select_gamma(rows[rows["robust_acc"].notna()], "robust_acc")
        gammas = set(chosen["gamma"].dropna()) if not chosen.empty else set(rows["gamma"].dropna())
        keep |= df.index.isin(rows.index[rows["gamma"].isin(gammas) | rows["gamma"].isna()])
    return df[keep]


PLOTS = {
    "hamming_diff.png": plot_hamming_diff,
    "lambda_max.png": plot_lambda_max,
    "gamma.png": plot_gamma,
    "loss_diff.png": plot_loss_diff,
}


# --------------------------------------------------------------------------- entry points


def build_report(paths: Sequence[str | Path], out: str | Path | None = None) -> Report:
    """Read ``paths``, write the tables and plots to ``out`` (default: ``report/`` beside the
    first input) and say what was written and what was skipped. Raises ReportError on bad input."""
    if not paths:
        raise ReportError("no input paths given")
    raw, epochs = load_runs(paths)
    df = _prepare(raw, epochs)
    if out is None:
        first = Path(paths[0])
        out = (first if first.is_dir() else first.parent) / "report"
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report(out_dir)

    usable = df[df["clean_acc"].notna() & df["robust_acc"].notna()]
    if usable.empty:
        raise ReportError("no run has both clean_acc and robust_acc values")
    path = out_dir / "table1.md"
    path.write_text(table1(usable), encoding="utf-8")
    report.files.append(path)

    t5 = table5(df)
    if t5 is None:
        report.skipped.append("table5.md: no mask_robust_acc values")
    else:
        path = out_dir / "table5.md"
        path.write_text(t5, encoding="utf-8")
        report.files.append(path)

    selected = best_gamma_runs(df)
    for name, plot in PLOTS.items():
        why = plot(df if plot is plot_gamma else selected, out_dir / name)
        if why is None:
            report.files.append(out_dir / name)
        else:
            report.skipped.append(f"{name}: {why}")
    for msg in report.skipped:
        logger.info("report: skipped %s", msg)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: 0 on success, 2 on bad input (one ``error:`` line on stderr, no traceback)."""
    parser = argparse.ArgumentParser(
        prog="python -m s2ap.report",
        description="Paper-style tables (Table 1, Table 5) and figures from run/trial Parquet tables.",
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="final.parquet, trials.parquet, or a folder with one"
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default: report/ beside the first PATH)")
    args = parser.parse_args(argv)
    try:
        report = build_report(args.paths, args.out)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write the report: {exc}", file=sys.stderr)
        return 1
    for path in report.files:
        print(f"wrote {path}")
    for msg in report.skipped:
        print(f"skipped {msg}")
    print(f"report in {report.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
