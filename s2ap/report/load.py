"""Reading run tables and preparing them for the report.

A path is a ``final.parquet`` / ``trials.parquet`` file or a folder holding one; an
``epochs.parquet`` beside it fills per-epoch curves a run row lacks, and a
``predictions.parquet`` beside it gives each run row its robust outcome per test point
(:data:`s2ap.report.compare.POINTS`), which the paired Δ is computed from. Preparing keeps the
successful runs, one row per (config, seed), turns accuracies into percentages and labels
each method with the variant axes that make runs incomparable (and each control arm, such
as Orig. + AWP finetuning, with its own suffix, so Table 1 never pools it with Orig.).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from s2ap import results, storage
from s2ap.errors import ConfigError
from s2ap.report.compare import POINTS
from s2ap.results import EPOCH, PREDICTION, RUN

logger = logging.getLogger(__name__)

RUN_FILES = (results.FINAL_FILE, results.TRIALS_FILE)
REQUIRED = (
    RUN.model,
    RUN.dataset,
    RUN.method,
    RUN.sparsity,
    RUN.s2ap,
    RUN.seed,
    RUN.clean_acc,
    RUN.robust_acc,
)
CELL_KEY = [RUN.model, RUN.dataset, RUN.sparsity]  # one table row
PANEL_KEY = [RUN.model, RUN.dataset, RUN.method, RUN.sparsity]  # one figure panel
GROUP = "control_group"  # the method label without the control arm's suffix (s2ap.report.controls)
AWP = "awp_finetuning"  # finetune_awp resolved for tables written before it was a column
# Every accuracy and the ends of its interval: turned into percentages together.
ACCURACIES = tuple(f"{name}{end}" for name in results.ACCURACIES for end in ("", "_lo", "_hi"))
CURVES = (RUN.hamming, RUN.lambda_max, RUN.loss_diff_rho, RUN.loss_diff)  # lists per run
# Run curves the epochs table can fill: run column -> the epoch column it is made of.
EPOCH_CURVES = {RUN.hamming: EPOCH.hamming, RUN.lambda_max: EPOCH.lambda_max}


class ReportError(Exception):
    """Bad input: the message is one line that names what is missing."""


def _resolve(raw: str) -> tuple[str, str | None]:
    """The run table for a file or folder argument (a local path or a storage URI, read
    through ``pyarrow.fs``), and the epochs table beside it."""
    if storage.is_remote(raw):
        try:
            storage.probe(raw, "path")
        except ConfigError as exc:
            raise ReportError(exc.message) from None
        where = storage.check(raw, "path")
    else:
        where = str(Path(raw))
    shown = storage.redact(where)
    if storage.is_dir(where):
        for name in RUN_FILES:
            if storage.is_file(storage.join(where, name)):
                where = storage.join(where, name)
                break
        else:
            raise ReportError(f"{shown} contains neither {' nor '.join(RUN_FILES)}")
    elif not storage.exists(where):
        raise ReportError(f"{shown}: no such file or directory")
    epochs = storage.join(storage.parent(where), results.EPOCHS_FILE)
    return where, (epochs if epochs != where and storage.is_file(epochs) else None)


def _read(where: str) -> pd.DataFrame:
    try:
        table = storage.read_table(where)
    except Exception as exc:  # pyarrow raises several types for a broken or foreign file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReportError(f"{storage.redact(where)} is not a readable Parquet file ({reason})") from None
    try:  # a table written when config columns were dotted reads under today's names
        return results.with_column_names(table).to_pandas()
    except ValueError as exc:
        raise ReportError(f"{storage.redact(where)}: {exc}") from None


def load_runs(paths: Iterable[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Concatenate the run tables (and epoch tables) named by ``paths`` (local paths or
    storage URIs such as ``s3://bucket/searches/name``); ReportError if unusable."""
    runs: list[pd.DataFrame] = []
    epochs: list[pd.DataFrame] = []
    for raw in paths:
        file, epoch_file = _resolve(str(raw))
        table = _read(file)
        shown = storage.redact(file)
        missing = [c for c in REQUIRED if c not in table.columns]
        if missing:
            raise ReportError(f"{shown} lacks columns: {', '.join(missing)}")
        if table.empty:
            raise ReportError(f"{shown} has no rows")
        table[POINTS] = _points(table, storage.join(storage.parent(file), results.PREDICTIONS_FILE))
        runs.append(table)
        if epoch_file is not None:
            try:
                epochs.append(storage.read_table(epoch_file).to_pandas())
            except Exception as exc:  # the epochs table is optional: warn, do not fail
                logger.warning("ignoring unreadable %s: %s", storage.redact(epoch_file), exc)
    df = pd.concat(runs, ignore_index=True) if len(runs) > 1 else runs[0]
    ep = pd.concat(epochs, ignore_index=True) if epochs else None
    return df, ep


def _points(table: pd.DataFrame, where: str) -> list[dict[int, float] | None]:
    """Each run row's robust outcome per headline test point (AutoAttack where it ran, else
    PGD: what ``robust_acc`` counts), keyed by trial id in a search, else by (config, seed)."""
    if not storage.is_file(where):
        return [None] * len(table)
    try:
        points = storage.read_table(where).to_pandas()
    except Exception as exc:  # optional, like the epochs table: warn, do not fail
        logger.warning("ignoring unreadable %s: %s", storage.redact(where), exc)
        return [None] * len(table)
    key = (
        ["trial_id"]
        if "trial_id" in points.columns and "trial_id" in table.columns
        else [RUN.config_hash, RUN.seed]
    )
    if not set(key) <= set(table.columns):
        return [None] * len(table)
    robust = points[PREDICTION.aa].astype("boolean").fillna(points[PREDICTION.pgd].astype("boolean"))
    points = points.assign(robust=robust.astype(float))
    found = {
        k if len(key) > 1 else k[0]: dict(zip(grp[PREDICTION.index].astype(int), grp["robust"], strict=True))
        for k, grp in points.groupby(key, sort=False)
    }
    return [found.get(tuple(r) if len(key) > 1 else r[0]) for r in table[key].itertuples(index=False)]


def _method_label(row: pd.Series) -> str:
    """Method name plus the variant axes that make runs incomparable: channel granularity
    (and its FLOPs target)."""
    label = str(row[RUN.method])
    if row.get(RUN.granularity) == "channel":
        target = row.get(RUN.flops_reduction_target)
        label += f"-channel{'-' + format(target, 'g') + 'x' if pd.notna(target) else ''}"
    return label


def awp_finetuning(df: pd.DataFrame) -> pd.Series:
    """Whether each row finetuned with AWP: the ``finetune_awp`` column, or (a table written
    before it existed, or a null) what S2AP implied then: AWP exactly with S2AP."""
    s2ap = df[RUN.s2ap].astype(bool)
    if RUN.finetune_awp not in df.columns:
        return s2ap
    return df[RUN.finetune_awp].astype("boolean").fillna(s2ap).astype(bool)


def _arm_suffix(row: pd.Series) -> str:
    """What sets a control arm apart from the paper's two sides (Orig.; S2AP with AWP
    finetuning): AWP instead of S2AP during the mask search (Table 13), a random direction,
    AWP finetuning without S2AP, S2AP with plain finetuning. Empty for the two sides."""
    suffix = ""
    if row[RUN.s2ap] and row.get(RUN.perturb) == "weights":
        suffix += "+AWP-prune"
    if row[RUN.s2ap] and row.get(RUN.direction) == "random":
        suffix += "+random-dir"
    if row[AWP] != row[RUN.s2ap]:
        suffix += "+AWP-ft" if row[AWP] else "+plain-ft"
    return suffix


# Settings that make runs incomparable when a table holds several of their values: each value
# becomes its own method label, so no table row or panel pools them. The first ones apply to
# Orig. and S2AP runs alike; an S2AP-only knob (projection) is null on Orig. runs, which then
# serve as the baseline of every value (of every combination, with several such axes).
BOTH_SIDES = (RUN.best_mask, RUN.augment, RUN.adasap_prune_every)
S2AP_ONLY = (RUN.projection, RUN.ascent)


def _split_variants(df: pd.DataFrame) -> pd.DataFrame:
    """Append ``[axis=value]`` to the method label for every variant axis with several values."""
    for col in BOTH_SIDES:
        if col in df.columns and df[col].nunique(dropna=True) > 1:
            df[RUN.method] = df[RUN.method] + df[col].map(
                lambda v, c=col: f" [{c}={v}]" if pd.notna(v) else ""
            )
    for col in S2AP_ONLY:
        if col not in df.columns or df.loc[df[RUN.s2ap], col].nunique(dropna=True) <= 1:
            continue
        parts = [
            df[df[RUN.s2ap]].assign(
                **{RUN.method: df[RUN.method] + df[col].map(lambda v, c=col: f" [{c}={v}]")}
            )
        ]
        for value in sorted(df.loc[df[RUN.s2ap], col].dropna().unique(), key=str):
            parts.append(df[~df[RUN.s2ap]].assign(**{RUN.method: df[RUN.method] + f" [{col}={value}]"}))
        df = pd.concat(parts, ignore_index=True)
    return df


def prepare(df: pd.DataFrame, epochs: pd.DataFrame | None) -> pd.DataFrame:
    """Successful runs only, one row per (config, seed), percentages, per-epoch lists filled."""
    df = df.copy()
    if RUN.status in df.columns:
        df = df[df[RUN.status].isna() | (df[RUN.status] == "ok")]
    if df.empty:
        raise ReportError("no successful runs (status 'ok') in the input")
    if RUN.config_hash in df.columns:
        df = df.drop_duplicates(subset=[RUN.config_hash, RUN.seed], keep="last")
    df[RUN.s2ap] = df[RUN.s2ap].fillna(False).astype(bool)
    df[AWP] = awp_finetuning(df)
    df[RUN.method] = df.apply(_method_label, axis=1)
    df = _split_variants(df)
    # The controls section pairs every arm of a setting; the tables keep the arms apart.
    df[GROUP] = df[RUN.method]
    df[RUN.method] = df[RUN.method] + df.apply(_arm_suffix, axis=1)
    df[RUN.sparsity] = df[RUN.sparsity].astype(float).round(6)
    acc_cols = [c for c in ACCURACIES if c in df]
    for col in acc_cols:
        df[col] = df[col].astype(float)
    # Results are fractions; a table already in percent (values above 1) is left as is.
    peak = df[[c for c in (RUN.clean_acc, RUN.robust_acc) if c in df]].max().max()
    scale = 1.0 if pd.notna(peak) and peak > 1.0 + 1e-9 else 100.0
    for col in acc_cols:
        df[col] = df[col] * scale
    for col in CURVES:
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
    need = {EPOCH.config_hash, EPOCH.seed, EPOCH.phase, EPOCH.epoch}
    if not need <= set(epochs.columns) or RUN.config_hash not in df.columns:
        return
    prune = epochs[epochs[EPOCH.phase] == "prune"].sort_values(EPOCH.epoch)
    for col, epoch_col in EPOCH_CURVES.items():
        if epoch_col not in prune.columns:
            continue
        series = {
            key: [float(v) for v in grp[epoch_col] if pd.notna(v)]
            for key, grp in prune.groupby([EPOCH.config_hash, EPOCH.seed], sort=False)
        }
        for i in df.index:
            if not df.at[i, col]:
                df.at[i, col] = series.get((df.at[i, RUN.config_hash], df.at[i, RUN.seed]), [])
