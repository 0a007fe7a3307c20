"""A stacked daily spend chart of a usage report (`qlensctl usage --plot FILE.png`).

matplotlib is imported here, only when a chart is asked for (it takes a second to import), and
draws off-screen (Agg): no display is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any


def daily_series(rows: Sequence[dict[str, Any]], dim: str, start: str, end: str,
                 ) -> tuple[list[str], dict[str, list[float]]]:
    """Every day start..end, and per value of `dim` its spend (USD) on each day (0 when none)."""
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    days = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    index = {d: i for i, d in enumerate(days)}
    series: dict[str, list[float]] = {}
    for row in rows:
        values = series.setdefault(str(row[dim]), [0.0] * len(days))
        if row["day"] in index:
            values[index[row["day"]]] += row["cost_micros"] / 1_000_000
    return days, dict(sorted(series.items()))


def plot(rows: Sequence[dict[str, Any]], dim: str, start: str, end: str, path: Path, title: str) -> None:
    """Write the chart as PNG to `path` (rows from a report grouped by day and `dim`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days, series = daily_series(rows, dim, start, end)
    fig, ax = plt.subplots(figsize=(max(6.0, len(days) * 0.35), 4.0), dpi=100)
    bottom = [0.0] * len(days)
    for name, values in series.items():
        ax.bar(days, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title(title)
    ax.set_ylabel("spend (USD)")
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    if series:
        ax.legend(title=dim, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
