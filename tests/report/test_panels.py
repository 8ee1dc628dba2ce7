"""The figure skeleton: one panel per setting, skipped with a reason when none has data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import pandas as pd  # noqa: E402

from s2ap.report.panels import draw_panels, per_setting, title  # noqa: E402


def _settings(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": ["resnet18"] * n,
            "dataset": ["cifar10"] * n,
            "method": [f"m{i}" for i in range(n)],
            "sparsity": [0.9] * n,
            "value": list(range(n)),
        }
    )


def test_per_setting_keeps_settings_with_data_in_key_order() -> None:
    df = _settings(4).iloc[::-1]
    panels = per_setting(df, lambda rows: None if rows["value"].iloc[0] == 2 else int(rows["value"].iloc[0]))
    assert [key[2] for key, _ in panels] == ["m0", "m1", "m3"]
    assert [data for _, data in panels] == [0, 1, 3]
    assert title(panels[0][0]) == "resnet18 / cifar10 / m0 / 90%"


def test_no_panels_is_a_reason_and_no_file(tmp_path: Path) -> None:
    path = tmp_path / "fig.png"
    why = draw_panels(path, [], lambda ax, data: None, xlabel="x", ylabel="y", absent="nothing to draw")
    assert why == "nothing to draw"
    assert not path.exists()


def test_panels_get_a_grid_titles_and_labels(tmp_path: Path, monkeypatch: Any) -> None:
    import matplotlib.figure

    drawn: list[int] = []
    labelled: dict[str, Any] = {}

    def draw(ax: Any, data: int) -> None:
        drawn.append(data)
        ax.plot([0, 1], [data, data], label="curve")

    saved = matplotlib.figure.Figure.savefig

    def spy(fig: Any, *args: Any, **kwargs: Any) -> None:
        visible = [ax for ax in fig.axes if ax.get_visible()]
        labelled["grid"] = (len(fig.axes), len(visible))
        labelled["titles"] = [ax.get_title() for ax in visible]
        labelled["labels"] = {(ax.get_xlabel(), ax.get_ylabel()) for ax in visible}
        labelled["legends"] = all(ax.get_legend() is not None for ax in visible)
        saved(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    path = tmp_path / "fig.png"
    panels = per_setting(_settings(5), lambda rows: int(rows["value"].iloc[0]))
    assert draw_panels(path, panels, draw, xlabel="epoch", ylabel="λ", absent="never") is None
    assert drawn == [0, 1, 2, 3, 4]
    assert labelled["grid"] == (8, 5)  # four a row, the three spare cells hidden
    assert labelled["titles"][4] == "resnet18 / cifar10 / m4 / 90%"
    assert labelled["labels"] == {("epoch", "λ")}
    assert labelled["legends"]
    assert mpimg.imread(path).ndim == 3
