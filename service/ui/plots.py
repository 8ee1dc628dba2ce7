"""The job page's figures, drawn on the server with matplotlib as SVG.

Each function takes a job's tables and returns an :class:`Figure`: two SVGs as
``data:image/svg+xml;base64,...`` URLs for a ``<picture>`` (an image cannot run script,
whatever text a spec puts into a label, and needs no JavaScript or CDN), or the reason it is
absent. Each is drawn for the width it is shown at, one for a desktop column and one for a
phone, at the size the page shows it (never scaled up or down there), so every text is at
least :data:`MIN_TEXT_PT` points (over 10 CSS px) high (an SVG's points are 4/3 CSS px). Text
stays text (``svg.fonttype: none``), drawn in the browser's sans-serif font. Colours follow
the grid cell (matplotlib's ``tab10``), the same in every figure.

* learning curves: validation PGD accuracy per search epoch, one line per trial, each with
  its 95% Wilson interval (on the epoch's validation points) as a band; running trials'
  curves too, as far as they have come (a ``>`` marks their latest epoch); an ``x`` marks
  where ASHA stopped a trial, a ``v`` where a trial failed;
* mask stability: normalised Hamming distance (the % of mask entries that differ from the
  first mask) per pruning epoch, one line per trial;
* gamma against accuracy: each finished S2AP trial's validation PGD accuracy (what selects)
  and test robust accuracy (reported, never selects) against its gamma, with 95% intervals;
  the S2AP-off cells as a line with their interval band.
"""

from __future__ import annotations

import base64
import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from s2ap.stats import accuracy_interval
from service.ui.views import Tables, cell_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_lock = threading.Lock()  # pyplot's figure registry is not thread-safe
RASTER_TRIALS = 100  # past this many lines, they are drawn as one bitmap inside the SVG
MIN_TEXT_PT = 7.8  # the smallest text drawn: 7.8 pt = 10.4 CSS px at the size it is shown
# Per width: (figure width in inches of a column figure, of a wide one; base, small text in pt).
# Desktop columns are >= 600 CSS px wide at 1280 px, a phone's about 350 CSS px at 390 px.
DESKTOP = {"column": 6.0, "wide": 11.5, "text": 10.0, "small": 8.5}
PHONE = {"column": 3.55, "wide": 3.55, "text": 8.5, "small": MIN_TEXT_PT}
PHONE_MAX_CSS_PX = 640  # the page's phone layout (ui.css) starts below this width


@dataclass(frozen=True)
class Figure:
    title: str
    alt: str
    src: str | None = None  # data URL of the SVG drawn for a desktop column
    absent: str | None = None  # why there is none
    wide: bool = False  # spans the page's width
    phone_src: str | None = None  # the same figure drawn for a phone's width


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colour(cell: Any) -> Any:
    from matplotlib import colormaps

    return colormaps["tab10"](int(cell or 0) % 10)


def _svg(
    draw: Callable[[Any, dict[str, float]], None], width: float, height: float, size: dict[str, float]
) -> str:
    """One SVG drawn at ``width`` x ``height`` inches with ``size``'s text sizes."""
    plt = _pyplot()
    style = {
        "svg.fonttype": "none",  # text stays text: the browser draws it at the size given
        "font.family": "sans-serif",
        "font.size": size["text"],
        "axes.titlesize": size["text"],
        "axes.labelsize": size["text"],
        "xtick.labelsize": size["small"],
        "ytick.labelsize": size["small"],
        "legend.fontsize": size["small"],
        "axes.formatter.use_mathtext": False,  # no superscripts: they are drawn smaller
    }
    with _lock, plt.rc_context(style):
        fig = plt.figure(figsize=(width, height), layout="constrained")
        try:
            draw(fig, size)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="svg", metadata={"Date": None})
        finally:
            plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _both(
    title: str, alt: str, draw: Callable[[Any, dict[str, float]], None], height: float, wide: bool = False
) -> Figure:
    """The figure for a desktop column (or the page's width) and for a phone."""
    key = "wide" if wide else "column"
    desktop = _svg(draw, DESKTOP[key], height, DESKTOP)
    phone = _svg(draw, PHONE[key], height * (1.8 if wide else 1.15), PHONE)
    return Figure(title, alt, src=desktop, wide=wide, phone_src=phone)


def _cells(trials: pd.DataFrame | None) -> dict[str, str]:
    """Trial id -> its grid cell's label, and the cell number per trial for colours."""
    if trials is None or trials.empty:
        return {}
    return {str(r["trial_id"]): cell_label(r) for r in trials.to_dict("records")}


def _legend_by_cell(fig: Any, seen: dict[str, Any], extra: list[Any] | None = None) -> None:
    """The legend below the axes, where it hides no curve at any width."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, lw=2, label=label) for label, c in seen.items()]
    handles += extra or []
    fig.legend(handles=handles, loc="outside lower center", ncols=min(2, len(handles)), frameon=False)


def _lines(
    ax: Axes, rows: pd.DataFrame, x: str, y: str, labels: dict[str, str], scale: float = 1.0
) -> tuple[dict[str, Any], dict[str, tuple[float, float]]]:
    """One line per trial, one collection per grid cell (fast and small with thousands of
    trials; past RASTER_TRIALS drawn as a bitmap inside the SVG). Returns the legend's
    cells and each trial's last point."""
    import numpy as np
    from matplotlib.collections import LineCollection

    raster = rows["trial_id"].nunique() > RASTER_TRIALS
    segments: dict[int, list[Any]] = {}
    seen: dict[str, Any] = {}
    last: dict[str, tuple[float, float]] = {}
    ordered = rows.sort_values(["trial_id", x])
    # A running trial has no label of its own yet: its cell's, as a finished trial names it.
    by_cell = {
        int(c): labels[str(t)]
        for t, c in zip(rows["trial_id"], rows["grid_cell"], strict=True)
        if str(t) in labels
    }
    for tid, grp in ordered.groupby("trial_id", sort=True):
        cell = int(grp["grid_cell"].iloc[0])
        points = np.column_stack([grp[x].to_numpy(dtype=float), scale * grp[y].to_numpy(dtype=float)])
        segments.setdefault(cell, []).append(points)
        seen.setdefault(labels.get(str(tid)) or by_cell.get(cell, f"[{cell}]"), _colour(cell))
        last[str(tid)] = (float(points[-1, 0]), float(points[-1, 1]))
    for cell, segs in sorted(segments.items()):
        colour = _colour(cell)
        ax.add_collection(
            LineCollection(segs, colors=[colour], linewidths=1.2, alpha=0.85, rasterized=raster)
        )
        every = np.concatenate(segs)
        ax.plot(every[:, 0], every[:, 1], ls="", marker=".", ms=3, color=colour, rasterized=raster)
    ax.autoscale_view()
    return seen, last


def _bands(ax: Axes, rows: pd.DataFrame, x: str, y: str) -> str:
    """Each trial's 95% Wilson interval around its curve (from ``y`` and ``y_n``, in %);
    returns the point counts for the axis label ("" when the table has none)."""
    if f"{y}_n" not in rows or rows[f"{y}_n"].isna().all():
        return ""
    for _, grp in rows.dropna(subset=[f"{y}_n"]).sort_values(x).groupby("trial_id", sort=True):
        ends = [accuracy_interval(float(v), int(n)) for v, n in zip(grp[y], grp[f"{y}_n"], strict=True)]
        colour = _colour(int(grp["grid_cell"].iloc[0]))
        lo, hi = [100 * i.lo for i in ends], [100 * i.hi for i in ends]
        ax.fill_between(grp[x].to_numpy(dtype=float), lo, hi, color=colour, alpha=0.08, lw=0)
    counts = sorted({int(n) for n in rows[f"{y}_n"].dropna()})
    return f", n={'/'.join(map(str, counts))}"


def learning_curves(
    trials: pd.DataFrame | None, epochs: pd.DataFrame | None, running: pd.DataFrame | None = None
) -> Figure:
    """``running``: the epochs of trials still running (:meth:`service.ui.live.Live.epochs`)."""
    title = "Learning curves: validation PGD accuracy per search epoch (bands: 95% Wilson intervals)"
    alt = (
        "validation PGD accuracy per search epoch, one line per trial (running trials as far as "
        "they have come), coloured by grid cell, each with its 95% interval on the validation "
        "points as a band"
    )
    parts = [e for e in (epochs, running) if e is not None and not e.empty and "val_pgd_acc" in e]
    if not parts:
        return Figure(title, alt, absent="no epoch has been recorded yet")
    every = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    rows = every[(every["search_epoch"] > 0) & every["val_pgd_acc"].notna()]
    if rows.empty:
        return Figure(title, alt, absent="no epoch after pretraining has a validation PGD accuracy yet")
    status = (
        {} if trials is None else dict(zip(trials["trial_id"].astype(str), trials["status"], strict=True))
    )
    live = set() if running is None or running.empty else set(running["trial_id"].astype(str))
    status.update(dict.fromkeys(live, "running"))
    labels = _cells(trials)
    pruned = rows.loc[rows["phase"] == "prune", "search_epoch"] if "phase" in rows else pd.Series(dtype=int)
    marks = (("stopped", "x", "black", "stopped by ASHA"), ("error", "v", "crimson", "failed"))
    marks += (("running", ">", "dimgrey", "running: latest epoch"),)

    def draw(fig: Any, size: dict[str, float]) -> None:
        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator

        ax = fig.add_subplot()
        seen, last = _lines(ax, rows, "search_epoch", "val_pgd_acc", labels, scale=100.0)
        points = _bands(ax, rows, "search_epoch", "val_pgd_acc")
        extra = []
        for state, marker, colour, label in marks:
            ends = [point for tid, point in last.items() if status.get(tid) == state]
            if ends or state == "stopped":
                style = {"ls": "", "marker": marker, "color": colour, "mew": 2, "ms": 7}
                if ends:
                    ax.plot(*zip(*ends, strict=True), zorder=3, **style)
                extra.append(Line2D([], [], label=label, **style))
        if not pruned.empty and rows["search_epoch"].max() > pruned.max():
            ax.axvline(pruned.max() + 0.5, color="grey", ls=":", lw=1)
            ax.annotate(
                "finetuning →",
                (pruned.max() + 0.5, 1),
                xycoords=("data", "axes fraction"),
                xytext=(3, -2 * size["small"]),
                textcoords="offset points",
                fontsize=size["small"],
                color="dimgrey",
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("search epoch (pruning, then finetuning)")
        ax.set_ylabel(f"val. PGD accuracy (%{points})")
        ax.grid(alpha=0.3)
        _legend_by_cell(fig, seen, extra)

    return _both(title, alt, draw, 4.2)


def hamming_curves(trials: pd.DataFrame | None, epochs: pd.DataFrame | None) -> Figure:
    title = "Mask stability: normalised Hamming distance to the first mask per pruning epoch"
    alt = (
        "normalised Hamming distance (percent of mask entries that differ from the first mask) "
        "per pruning epoch, one line per trial, coloured by grid cell"
    )
    if epochs is None or epochs.empty or "hamming" not in epochs:
        return Figure(title, alt, absent="no epoch has been recorded yet")
    rows = epochs[(epochs["phase"] == "prune") & epochs["hamming"].notna()]
    if rows.empty:
        return Figure(title, alt, absent="no pruning epoch has a Hamming distance yet")
    rows = rows.assign(pruning_epoch=rows["epoch"] + 1)
    labels = _cells(trials)

    def draw(fig: Any, size: dict[str, float]) -> None:
        from matplotlib.ticker import MaxNLocator

        ax = fig.add_subplot()
        seen, _ = _lines(ax, rows, "pruning_epoch", "hamming", labels, scale=100.0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("pruning epoch")
        ax.set_ylabel("mask entries changed since\nthe first mask (% of all)")
        ax.grid(alpha=0.3)
        _legend_by_cell(fig, seen)

    return _both(title, alt, draw, 3.8)


def _errorbars(ax: Axes, rows: pd.DataFrame, col: str, colour: Any, label: str) -> None:
    y = 100 * rows[col].astype(float)
    lo = 100 * rows.get(f"{col}_lo", pd.Series(index=rows.index, dtype=float)).astype(float)
    hi = 100 * rows.get(f"{col}_hi", pd.Series(index=rows.index, dtype=float)).astype(float)
    err = [(y - lo).clip(lower=0).fillna(0).to_numpy(), (hi - y).clip(lower=0).fillna(0).to_numpy()]
    many = len(rows) > RASTER_TRIALS
    drawn = ax.errorbar(
        rows["gamma"].astype(float),
        y,
        yerr=err,
        ls="",
        marker="o",
        ms=2 if many else 4,
        capsize=0 if many else 3,
        elinewidth=0.6 if many else 1.0,
        color=colour,
        label=label,
    )
    if many:  # thousands of bars: one bitmap inside the SVG
        for artist in drawn.get_children():
            artist.set_rasterized(True)


def _baseline(ax: Axes, rows: pd.DataFrame, col: str, colour: Any, label: str) -> None:
    """An S2AP-off cell's (best) accuracy as a dashed line, its interval as a band."""
    value = float(rows[col].iloc[0])
    ax.axhline(100 * value, color=colour, ls="--", lw=1.2, label=label)
    lo, hi = rows.get(f"{col}_lo"), rows.get(f"{col}_hi")
    if lo is not None and hi is not None and pd.notna(lo.iloc[0]) and pd.notna(hi.iloc[0]):
        ax.axhspan(100 * float(lo.iloc[0]), 100 * float(hi.iloc[0]), color=colour, alpha=0.12)


def gamma_accuracy(trials: pd.DataFrame | None) -> Figure:
    title = "γ against accuracy (95% intervals)"
    alt = "validation PGD and test robust accuracy of each finished trial against its gamma"
    if trials is None or trials.empty or "gamma" not in trials:
        return Figure(title, alt, absent="no trial has finished yet")
    ok = trials[trials["status"] == "ok"]
    s2ap = ok[ok["s2ap"].fillna(False).astype(bool) & ok["gamma"].notna() & (ok["gamma"] > 0)]
    if s2ap.empty:
        return Figure(title, alt, absent="no finished S2AP trial with a positive γ yet")
    off = ok[~ok["s2ap"].fillna(False).astype(bool)]
    from s2ap.selection import best_row

    def draw(fig: Any, size: dict[str, float]) -> None:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        panels = (
            ("final_val_pgd_acc", "validation PGD: what selects"),
            ("robust_acc", "test robust: reported, never selects"),
        )
        phone = size is PHONE
        axes = fig.subplots(2, 1) if phone else fig.subplots(1, 2)
        for ax, (col, what) in zip(axes, panels, strict=True):
            for cell, grp in s2ap.groupby("grid_cell", sort=True):
                rows = grp[grp[col].notna()]
                if not rows.empty:
                    _errorbars(ax, rows, col, _colour(cell), cell_label(grp.iloc[0]))
            for cell, grp in off.groupby("grid_cell", sort=True):
                # The cell's best trial by the search's own rule (validation only).
                best = best_row(grp.to_dict("records"))
                rows = pd.DataFrame([best])
                if pd.notna(rows[col].iloc[0]):
                    _baseline(ax, rows, col, _colour(cell), f"{cell_label(best)} (its best; band: 95%)")
            ax.set_xscale("log")
            # Plain numbers (0.001, not 10 with a smaller superscript -3).
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=6))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("γ (log scale)")
            ax.set_ylabel("accuracy (%)")
            ax.set_title(what)
            ax.grid(alpha=0.3)
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncols=1 if phone else 2, frameon=False)

    return _both(title, alt, draw, 4.2, wide=True)


def figures(
    trials: pd.DataFrame | None, epochs: pd.DataFrame | None, running: pd.DataFrame | None = None
) -> list[Figure]:
    return [
        learning_curves(trials, epochs, running),
        hamming_curves(trials, epochs),
        gamma_accuracy(trials),
    ]


_CACHE_SIZE = 16
_cache: OrderedDict[tuple[str, str | None, str | None, str], list[Figure]] = OrderedDict()


def cached_figures(read: Tables) -> list[Figure]:
    """:func:`figures`, drawn once per version of the two tables (a page that refreshes
    every few seconds redraws only when a trial or an epoch was added). Keyed on the
    versions the tables were read at, so a table replaced meanwhile is never cached under
    the newer version."""
    key, trials, epochs = read.key, read.trials, read.epochs
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    drawn = figures(trials, epochs, read.live.epochs())
    with _lock:
        _cache[key] = drawn
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return drawn
