"""The evaluation plots (matplotlib, headless Agg): expansion, scores, per style, stage times.

Histograms are counted in one streaming pass over the manifest (bin edges come from the run's metrics),
so the plots cost bounded memory whatever the manifest's size.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from canvas_ray.quality.evaluation.metrics import (
    LOWER_IS_BETTER,
    SCORE_COLUMNS,
    Distribution,
    GroupStats,
    RunMetrics,
)
from canvas_ray.quality.evaluation.stream import Source, chunks, is_status, numbers
from canvas_ray.rows import ERROR, OK, REJECTED

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


SCORE_BINS = np.linspace(0, 1, 21)


def _expansion_bins(ratio: Distribution, threshold: float) -> np.ndarray | None:
    """The expansion histogram's edges (None without measurements): 30 bins up to 1.1 x the largest."""
    if not ratio.n or ratio.max is None:
        return None
    return np.linspace(0, max(ratio.max, threshold) * 1.1 or 1.0, 31)


def _histogram(axis: Any, counts: list[np.ndarray], bins: np.ndarray, **options: Any) -> None:
    """``axis.hist`` of values already counted into ``bins`` (the same bars as of the values)."""
    left = bins[:-1]
    if len(counts) == 1:
        axis.hist(left, bins=bins, weights=counts[0], **options)
    else:
        axis.hist([left] * len(counts), bins=bins, weights=counts, **options)


def _expansion_plot(counts: dict[str, np.ndarray], bins: np.ndarray | None, threshold: float) -> bytes:
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    figure = _figure(6, 3.2)
    axis = figure.add_subplot()
    if bins is None:
        _no_data(axis, "no expansion measurements in this manifest")
    else:
        _histogram(
            axis,
            [counts[OK], counts[REJECTED]],
            bins,
            stacked=True,
            color=[COLORS[OK], COLORS[REJECTED]],
            label=[f"ok ({int(counts[OK].sum())})", f"rejected ({int(counts[REJECTED].sum())})"],
        )
        axis.axvline(threshold, color=COLORS[ERROR], linestyle="--", label=f"threshold {threshold:.0%}")
        axis.xaxis.set_major_formatter(PercentFormatter(1.0))
        axis.set_xlabel("expansion ratio (grown area / product area; lower is better)")
        axis.set_ylabel("outputs")
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(frameon=False)
    axis.set_title("Object expansion")
    return _png(figure)


def _scores_plot(counts: dict[str, np.ndarray], scores: dict[str, Distribution]) -> bytes:
    from matplotlib.ticker import MaxNLocator

    figure = _figure(13, 2.8)
    for index, column in enumerate(SCORE_COLUMNS, start=1):
        axis = figure.add_subplot(1, len(SCORE_COLUMNS), index)
        better = "lower" if column in LOWER_IS_BETTER else "higher"
        axis.set_title(f"{column.replace('_', ' ')} ({better} is better)", fontsize=9)
        median = scores[column].p50
        if not scores[column].n or median is None:
            _no_data(axis, "no CLIP model configured" if column == "clip_score" else "no data")
            continue
        _histogram(axis, [counts[column]], SCORE_BINS, color=COLORS["accent"])
        axis.axvline(median, color="#222", linewidth=1, label="median")
        axis.set_xlim(0, 1)
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.tick_params(labelsize=8)
    return _png(figure)


def _count(manifest: Source, expansion_bins: np.ndarray | None) -> dict[str, np.ndarray]:
    """Histogram counts: expansion of ok and rejected rows, and each score over ok rows."""
    edges = expansion_bins if expansion_bins is not None else np.linspace(0, 1, 31)
    counts = {OK: np.zeros(len(edges) - 1), REJECTED: np.zeros(len(edges) - 1)}
    counts.update({column: np.zeros(len(SCORE_BINS) - 1) for column in SCORE_COLUMNS})
    for chunk in chunks(manifest, ["status", "expansion_ratio", *SCORE_COLUMNS]):
        for status in (OK, REJECTED):
            values = numbers(chunk.table, "expansion_ratio", is_status(chunk.table, status))
            counts[status] += np.histogram(values, edges)[0]
        ok = is_status(chunk.table, OK)
        for column in SCORE_COLUMNS:
            counts[column] += np.histogram(numbers(chunk.table, column, ok), SCORE_BINS)[0]
    return counts


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


def render_plots(manifest: Source, metrics: RunMetrics) -> dict[str, bytes]:
    """File name → PNG bytes for every plot in :data:`PLOTS` (a panel says so when it has no data).

    ``manifest``: a :class:`~canvas_ray.io.manifest.Manifest` (streamed) or a table; ``metrics`` its
    :func:`~canvas_ray.quality.evaluation.metrics.compute_metrics`."""
    bins = _expansion_bins(metrics.expansion.ratio, metrics.expansion.threshold)
    counts = _count(manifest, bins)
    return {
        "expansion.png": _expansion_plot(counts, bins, metrics.expansion.threshold),
        "scores.png": _scores_plot(counts, metrics.scores),
        "styles.png": _styles_plot(metrics.by_style),
        "stages.png": _stages_plot(metrics.throughput.stage_mean_s),
    }
