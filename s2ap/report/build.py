"""One report run: read the inputs, write the tables and figures, say what was skipped."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from s2ap import storage
from s2ap.report.controls import controls_section
from s2ap.report.load import ReportError, load_runs, prepare
from s2ap.report.plots import PLOTS, plot_gamma
from s2ap.report.selection import best_gamma_runs
from s2ap.report.tables import table1, table5
from s2ap.results import RUN

logger = logging.getLogger(__name__)


@dataclass
class Report:
    """What a report run produced: files written, and a reason per skipped output."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def build_report(paths: Sequence[str | Path], out: str | Path | None = None) -> Report:
    """Read ``paths`` (local paths or storage URIs), write the tables and plots to ``out``
    (default: ``report/`` beside the first input, or in the working directory when that is a
    URI) and say what was written and what was skipped. Raises ReportError on bad input."""
    if not paths:
        raise ReportError("no input paths given")
    raw, epochs = load_runs(paths)
    df = prepare(raw, epochs)
    if out is None and storage.is_remote(paths[0]):
        out = Path("report")  # figures are local files: beside an object-store input, here
    elif out is None:
        first = Path(paths[0])
        out = (first if first.is_dir() else first.parent) / "report"
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report(out_dir)

    usable = df[df[RUN.clean_acc].notna() & df[RUN.robust_acc].notna()]
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

    controls = controls_section(df, epochs)
    if controls is None:
        report.skipped.append("controls.md: no control arm (finetune.awp, s2ap.direction, s2ap.perturb)")
    else:
        path = out_dir / "controls.md"
        path.write_text(controls, encoding="utf-8")
        report.files.append(path)

    # The gamma figure spans every gamma; the per-epoch figures show the gamma Table 1 shows.
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
