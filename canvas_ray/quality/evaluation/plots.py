"""The evaluation plots (matplotlib, headless Agg): expansion, scores, per style, stage times."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa

from canvas_ray.quality.evaluation.metrics import (
    GENERATED,
    LOWER_IS_BETTER,
    SCORE_COLUMNS,
    GroupStats,
    RunMetrics,
    manifest_rows,
    values_of,
)
from canvas_ray.stages.base import ERROR, OK, REJECTED

PLOTS = ("expansion.png", "scores.png", "styles.png", "stages.png")
COLORS = {OK: "#137333", REJECTED: "#b06000", ERROR: "#b3261e", "accent": "#1a73e8", "muted": "#9aa0a6"}


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def _no_data(axis: Any, text: str) -> None:
    axis.text(0.5, 0.5, text, ha="center", va="center", color=COLORS["muted"], transform=axis.transAxes)
    axis.set_xticks([])
    axis.set_yticks([])


def _expansion_plot(rows: list[dict[str, Any]], threshold: float) -> bytes:
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    figure = _figure(6, 3.2)
    axis = figure.add_subplot()
    series = {
        status: values_of((r for r in rows if r["status"] == status), "expansion_ratio")
        for status in GENERATED
    }
    if not any(series.values()):
        _no_data(axis, "no expansion measurements in this manifest")
    else:
        top = max(max(v for values in series.values() for v in values), threshold) * 1.1 or 1.0
        axis.hist(
            [series[OK], series[REJECTED]],
            bins=np.linspace(0, top, 31),
            stacked=True,
            color=[COLORS[OK], COLORS[REJECTED]],
            label=[f"ok ({len(series[OK])})", f"rejected ({len(series[REJECTED])})"],
        )
        axis.axvline(threshold, color=COLORS[ERROR], linestyle="--", label=f"threshold {threshold:.0%}")
        axis.xaxis.set_major_formatter(PercentFormatter(1.0))
        axis.set_xlabel("expansion ratio (grown area / product area; lower is better)")
        axis.set_ylabel("outputs")
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(frameon=False)
    axis.set_title("Object expansion")
    return _png(figure)


def _scores_plot(rows: list[dict[str, Any]]) -> bytes:
    from matplotlib.ticker import MaxNLocator

    ok = [r for r in rows if r["status"] == OK]
    figure = _figure(13, 2.8)
    for index, column in enumerate(SCORE_COLUMNS, start=1):
        axis = figure.add_subplot(1, len(SCORE_COLUMNS), index)
        values = values_of(ok, column)
        better = "lower" if column in LOWER_IS_BETTER else "higher"
        axis.set_title(f"{column.replace('_', ' ')} ({better} is better)", fontsize=9)
        if not values:
            _no_data(axis, "no CLIP model configured" if column == "clip_score" else "no data")
            continue
        axis.hist(values, bins=np.linspace(0, 1, 21), color=COLORS["accent"])
        axis.axvline(float(np.median(values)), color="#222", linewidth=1, label="median")
        axis.set_xlim(0, 1)
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.tick_params(labelsize=8)
    return _png(figure)


def _styles_plot(groups: list[GroupStats]) -> bytes:
    figure = _figure(6, 1.4 + 0.35 * max(len(groups), 2))
    axis = figure.add_subplot()
    if not groups:
        _no_data(axis, "no outputs")
        return _png(figure)
    positions = np.arange(len(groups))
    quality = [g.mean_quality or 0.0 for g in groups]
    axis.barh(positions - 0.2, [g.ok_rate for g in groups], height=0.4, color=COLORS[OK], label="ok rate")
    axis.barh(positions + 0.2, quality, height=0.4, color=COLORS["accent"], label="mean quality (ok)")
    axis.set_yticks(positions, [g.name[:32] for g in groups], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_title("Per style")
    figure.legend(frameon=False, loc="outside lower center", ncols=2, fontsize=8)
    return _png(figure)


def _stages_plot(stage_mean_s: dict[str, float | None]) -> bytes:
    stages = [(name, value) for name, value in stage_mean_s.items() if value is not None]
    figure = _figure(6, 1.2 + 0.3 * max(len(stages), 2))
    axis = figure.add_subplot()
    if not stages:
        _no_data(axis, "no stage timings in this manifest")
    else:
        total = sum(value for _, value in stages) or 1.0
        names = [name for name, _ in stages]
        seconds = [value for _, value in stages]
        bars = axis.barh(names, seconds, color=COLORS["accent"])
        axis.bar_label(bars, labels=[f"{s:.3g} s ({s / total:.0%})" for s in seconds], fontsize=8, padding=3)
        axis.invert_yaxis()
        axis.set_xlim(0, max(seconds) * 1.35 or 1.0)
        axis.set_xlabel("mean seconds per ok output")
    axis.set_title("Where the time goes")
    return _png(figure)


def render_plots(manifest: pa.Table, metrics: RunMetrics) -> dict[str, bytes]:
    """File name → PNG bytes for every plot in :data:`PLOTS` (a panel says so when it has no data)."""
    rows = manifest_rows(manifest)
    return {
        "expansion.png": _expansion_plot(rows, metrics.expansion.threshold),
        "scores.png": _scores_plot(rows),
        "styles.png": _styles_plot(metrics.by_style),
        "stages.png": _stages_plot(metrics.throughput.stage_mean_s),
    }
