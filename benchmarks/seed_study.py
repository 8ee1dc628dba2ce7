"""The README's seed study, generated: Orig. vs S2AP on the bundled digits, 5 seeds each.

    python benchmarks/seed_study.py --run            # search + report + README section (~16 min on 2 cores)
    python benchmarks/seed_study.py --search DIR      # the same from a finished search folder
    python benchmarks/seed_study.py --run --against DIR [--against-label TEXT]
                                                      # ... and how far it moved from an earlier run

Runs ``python -m s2ap.tune search_spaces/digits_ablation.yaml`` (unless ``--search`` names a
finished one), builds its report (``python -m s2ap.report``), copies the paired-Δ figure to
``docs/seed_study_delta.png`` and rewrites the README between the ``seed-study`` markers with
Table 1, the date, the commit and the machine the trials ran on (from the provenance columns
of ``trials.parquet``), and one verdict line per setting read from the Δ interval. With
``--against DIR`` (an earlier search of the same spec) it adds how far the same trials moved
between the two runs (same seeds, same settings): how many gave the same accuracies and the
largest per-trial difference. Nothing in the section is typed by hand.
"""

from __future__ import annotations

import argparse
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SPEC = "search_spaces/digits_ablation.yaml"
START, END = "<!-- seed-study:start -->", "<!-- seed-study:end -->"
FIGURE = "docs/seed_study_delta.png"
COMMAND = "python benchmarks/seed_study.py --run"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def machine(trials: pd.DataFrame) -> str:
    """Where the trials ran, from their provenance columns."""
    parts = []
    for col, label in (("device_name", ""), ("torch_version", "torch "), ("threads", "threads ")):
        if col in trials.columns:
            values = sorted({str(v) for v in trials[col].dropna()})
            parts.append(label + "/".join(values) if values else f"{label}unrecorded")
    if "deterministic" in trials.columns:
        parts.append(
            "deterministic algorithms " + ("on" if trials["deterministic"].fillna(False).all() else "off")
        )
    return ", ".join(parts) + f"; {platform.machine()} host with {_cpus()} CPU cores"


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def verdicts(table1: str) -> list[str]:
    """One line per table row, read from its Δ cell (never typed by hand)."""
    lines = []
    for row in table1.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 6 or not cells[2].endswith("%"):
            continue
        delta = cells[5]
        if delta.startswith("not comparable"):
            said = delta
        elif "not resolved" in delta:
            said = "not resolved: the 95% interval contains 0"
        elif delta.startswith(("+", "-")) and "[" in delta:
            said = "S2AP higher" if delta.startswith("+") else "S2AP lower"
        else:
            said = f"no verdict ({delta})"
        lines.append(
            f"- {cells[0]} / {cells[1]} at {cells[2]}: Δ robust {delta.split(' (')[0]} → **{said}**."
        )
    return lines


# The grid's columns that pair a trial of one run with the same trial of another.
PAIR_KEYS = ("s2ap", "ascent", "sparsity", "seed")


def moved(now: pd.DataFrame, before: pd.DataFrame, label: str) -> str:
    """How far the same trials (same settings and seed) moved between two runs of the spec."""
    keys = [k for k in PAIR_KEYS if k in now.columns and k in before.columns]
    ok = [t[t["status"] == "ok"] if "status" in t.columns else t for t in (now, before)]
    both = ok[0].merge(ok[1], on=keys, suffixes=("", "_before"))
    if both.empty:
        return f"No trial of this run matches one of the run at {label}."
    worst = {}
    same = None
    for col in ("robust_acc", "clean_acc"):
        diff = (both[col].astype(float) - both[f"{col}_before"].astype(float)).abs() * 100
        worst[col] = float(diff.max())
        same = diff < 1e-9 if same is None else same & (diff < 1e-9)
    points = int(both["robust_acc_n"].max()) if "robust_acc_n" in both.columns else None
    per = f" (one test point is {100 / points:.2f} points)" if points else ""
    return (
        f"Against the run at {label}, same spec and seeds: {int(same.sum())} of {len(both)} trials "
        f"gave the same clean and robust accuracy; the largest per-trial difference is "
        f"{worst['robust_acc']:.2f} points robust and {worst['clean_acc']:.2f} clean{per}."
    )


def section(
    table1: str,
    trials: pd.DataFrame,
    wall_s: float | None,
    when: str,
    commit: str,
    against: str | None = None,
) -> str:
    """The README section: how it was made, Table 1 as the report wrote it, the verdicts and,
    with ``against``, how far the trials moved from an earlier run."""
    body = table1.split("\n", 2)[2].strip() if table1.startswith("# ") else table1.strip()
    ran = f"{wall_s:.0f} s wall" if wall_s is not None else "wall time not measured here"
    return "\n".join(
        [
            START,
            f"Generated by `{COMMAND}{' --against DIR' if against else ''}` on {when} at commit {commit} ({len(trials)} trials, {ran}); "
            f"machine: {machine(trials)}. The same seeds give other numbers on other machines or "
            "kernels: compare runs only where these columns agree.",
            "",
            body,
            "",
            f"![Paired Δ robust accuracy per seed, S2AP − Orig., with its 95% interval]({FIGURE})",
            "",
            *verdicts(table1),
            *(["", against] if against else []),
            END,
        ]
    )


def replace_section(readme: str, new: str, start: str = START, end: str = END) -> str:
    """``readme`` with the text between the markers replaced (markers included in ``new``)."""
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"error: README.md: no {start} ... {end} markers")
    return pattern.sub(lambda _: new, readme, count=1)


def run_search(spec: str, search: Path) -> float:
    """``python -m s2ap.tune spec --out search``; its wall time in seconds."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "s2ap.tune", str(ROOT / spec), "--out", str(search), "-q"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--run", action="store_true", help=f"run the search ({SPEC}) first")
    p.add_argument("--search", default="runs/tune/digits_ablation", help="the search folder")
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--figure", default=str(ROOT / FIGURE), help="where the Δ figure goes")
    p.add_argument("--wall-s", type=float, help="with --search: the search's measured wall time")
    p.add_argument("--against", help="an earlier search folder of the same spec, to say how far it moved")
    p.add_argument("--against-label", help="how to name that run in the README (default: its folder)")
    args = p.parse_args(argv)
    search = Path(args.search).resolve()
    wall = args.wall_s
    if args.run:
        wall = run_search(SPEC, search)
    from s2ap.report import build_report

    report = build_report([str(search)], search / "report")
    table1 = (report.out_dir / "table1.md").read_text(encoding="utf-8")
    delta = report.out_dir / "delta.png"
    if delta.is_file():
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(delta, args.figure)
    trials = pd.read_parquet(search / "trials.parquet")
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    against = None
    if args.against:
        before = pd.read_parquet(Path(args.against) / "trials.parquet")
        against = moved(trials, before, args.against_label or Path(args.against).name)
    readme = Path(args.readme)
    new = section(table1, trials, wall, when, _commit(), against)
    readme.write_text(replace_section(readme.read_text(encoding="utf-8"), new))
    print(f"wrote {readme} and {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
