"""Paper-style tables and figures from result tables.

``python -m s2ap.report PATH [PATH ...] [--out DIR]`` reads Parquet files with the
``RUN_SCHEMA`` columns (a run's ``final.parquet``, a search's ``trials.parquet``, or a
folder holding one of them, with ``epochs.parquet`` beside it) and writes:

* ``table1.md`` - clean / robust accuracy per (model, dataset, sparsity) and method, Orig.
  vs S2AP, with the paired per-seed difference Δ of the robust accuracy and its 95% interval
  (paper Table 1);
* ``table5.md`` - accuracy of the raw mask before finetuning (paper Table 5), if measured;
* ``hamming_diff.png`` (Fig. 1b/4b), ``lambda_max.png`` (Fig. 1c/2), ``gamma.png``
  (Fig. 5), ``loss_diff.png`` (Fig. 3), ``delta.png`` (per-seed Δ with its interval), each
  skipped with a reason when its data is absent.

Accuracies are stored as fractions and shown as percentages. Means are over seeds and
``±`` is the sample standard deviation (ddof=1) over seeds; a single-seed cell shows its 95%
Wilson interval instead. When an S2AP cell holds several gamma values (a gamma search), the
gamma with the highest mean final *validation* PGD accuracy is shown; test data never selects.

Modules, each one concept: :mod:`~s2ap.report.load` (reading and preparing run tables),
:mod:`~s2ap.report.selection` (which gamma is shown), :mod:`~s2ap.report.compare` (Orig. vs
S2AP paired by seed), :mod:`~s2ap.report.tables` (Table 1 and
5), :mod:`~s2ap.report.panels` (the figure skeleton), :mod:`~s2ap.report.plots` (the figures),
:mod:`~s2ap.report.build` (one report run) and :mod:`~s2ap.report.cli` (the command line).
"""

from s2ap.report.build import Report, build_report
from s2ap.report.cli import main
from s2ap.report.load import ReportError, load_runs, prepare
from s2ap.report.plots import (
    PLOTS,
    plot_delta,
    plot_gamma,
    plot_hamming_diff,
    plot_lambda_max,
    plot_loss_diff,
)
from s2ap.report.selection import best_gamma_runs, select_gamma
from s2ap.report.tables import table1, table5

_prepare = prepare  # the name the report's tests have always imported

__all__ = [
    "PLOTS",
    "Report",
    "ReportError",
    "best_gamma_runs",
    "build_report",
    "load_runs",
    "main",
    "plot_delta",
    "plot_gamma",
    "plot_hamming_diff",
    "plot_lambda_max",
    "plot_loss_diff",
    "prepare",
    "select_gamma",
    "table1",
    "table5",
]
